"""Distances between a distribution and a reference shipped with a model (its training data's
percentiles, or class shares): what the monitor's drift tests and the trainer's dataset profiles
measure."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from driftloop.contracts import FeatureStats

_MID = (np.arange(100) + 0.5) / 100  # probabilities of a 100-point reference sample


class Reference:
    """One feature's training distribution, rebuilt from its shipped quantiles, and the distances of a
    recent window from it: PSI over the reference deciles, KS (largest CDF gap) and Wasserstein-1 in
    reference standard deviations. Works for continuous and for discrete (e.g. one-hot) columns.

    >>> from driftloop.contracts import FeatureStats
    >>> deciles = [float(q) for q in range(1, 10)]
    >>> ref = Reference(FeatureStats(mean=5, std=2.89, min=0, max=10, quantiles=deciles))
    >>> {k: round(v, 2) for k, v in ref.distances(np.linspace(0, 10, 10_001)).items()}
    {'psi': 0.0, 'ks': 0.01, 'wasserstein': 0.0}
    >>> round(ref.distances(np.linspace(5, 10, 10_001))["ks"], 2)
    0.5
    """

    def __init__(self, stats: FeatureStats) -> None:
        if len(stats.percentiles) >= 2:
            grid_p, grid_q = np.linspace(0, 1, len(stats.percentiles)), np.asarray(stats.percentiles)
        else:  # older models ship deciles only
            grid_p = np.linspace(0, 1, 11)
            grid_q = np.asarray([stats.min, *stats.quantiles, stats.max], dtype=np.float64)
        self.sample = np.interp(_MID, grid_p, grid_q)  # the reference as 100 equally likely points
        self.scale = stats.std if stats.std > 0 else 1.0
        self.edges = np.unique(np.interp(np.linspace(0.1, 0.9, 9), grid_p, grid_q))
        self.shares = self._binned(self.sample)

    def _binned(self, values: np.ndarray) -> np.ndarray:
        counts = np.bincount(np.searchsorted(self.edges, values, side="right"), minlength=len(self.edges) + 1)
        return np.clip(counts / max(1, len(values)), 1e-4, None)

    def psi(self, values: np.ndarray) -> float:
        """The population stability index of `values` over the reference's deciles."""
        observed = self._binned(values)
        return float(np.sum((observed - self.shares) * np.log(observed / self.shares)))

    def distances(self, values: np.ndarray) -> dict[str, float]:
        """psi, ks and wasserstein of `values` against the reference."""
        points = np.union1d(self.sample, values)
        cdf_ref = np.searchsorted(self.sample, points, side="right") / len(self.sample)
        cdf_obs = np.searchsorted(np.sort(values), points, side="right") / max(1, len(values))
        return {
            "psi": self.psi(values),
            "ks": float(np.abs(cdf_obs - cdf_ref).max()),
            "wasserstein": float(np.abs(np.quantile(values, _MID) - self.sample).mean() / self.scale),
        }


def class_psi(reference: Mapping[str, float], observed: Mapping[str, int]) -> float:
    """PSI of observed class counts against reference class shares (unseen classes count too).

    >>> round(class_psi({"0": 0.5, "1": 0.5}, {"0": 500, "1": 500}), 3)
    0.0
    """
    total = max(1, sum(observed.values()))
    keys = set(reference) | set(observed)
    ref = np.clip([reference.get(k, 0.0) for k in keys], 1e-4, None)
    obs = np.clip([observed.get(k, 0) / total for k in keys], 1e-4, None)
    return float(np.sum((obs - ref) * np.log(obs / ref)))
