"""Drift and quality logic on a champion's labelled stream: pure, River-style classes."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from river import drift

from driftloop.spec import DriftSpec

_DETECTORS: dict[str, Any] = {
    "adwin": drift.ADWIN,
    "page_hinkley": drift.PageHinkley,
    "kswin": drift.KSWIN,
}


def estimate_change_point(errors: Sequence[float]) -> int:
    """Index of the first sample after the most likely single shift in mean (CUSUM statistic).

    >>> estimate_change_point([0] * 50 + [1] * 50)
    50
    """
    x = np.asarray(errors, dtype=np.float64)
    n = len(x)
    if n < 2:
        return 0
    k = np.arange(1, n)
    left = np.cumsum(x)[:-1] / k
    right = (x.sum() - np.cumsum(x)[:-1]) / (n - k)
    statistic = np.abs(left - right) * np.sqrt(k * (n - k) / n)
    return int(k[int(statistic.argmax())])


@dataclass(frozen=True)
class Detection:
    samples_seen: int
    change_point_sample: int
    change_point_time: datetime
    error_rate_before: float
    error_rate_after: float


class ConceptDriftMonitor:
    """A streaming detector on one champion's 0/1 error stream, with warm-up and cooldown.

    >>> from datetime import UTC, datetime
    >>> monitor = ConceptDriftMonitor(DriftSpec(warmup_samples=0))
    >>> now = datetime(2026, 1, 1, tzinfo=UTC)
    >>> fired = [monitor.update(int(i >= 2000 and i % 2 == 0), now, clock=0.0) for i in range(3000)]
    >>> next(i for i, d in enumerate(fired) if d) > 2000
    True
    """

    def __init__(self, spec: DriftSpec, buffer: int = 20_000) -> None:
        self.spec = spec
        self.detector = _DETECTORS[spec.detector](**spec.params)
        self.errors: deque[int] = deque(maxlen=buffer)
        self.times: deque[datetime] = deque(maxlen=buffer)
        self.samples_seen = 0
        self.last_fired: float | None = None

    @property
    def warming_up(self) -> bool:
        return self.samples_seen < self.spec.warmup_samples

    def cooling_down(self, clock: float) -> bool:
        return self.last_fired is not None and clock - self.last_fired < self.spec.cooldown_s

    def update(self, error: int, event_time: datetime, clock: float) -> Detection | None:
        """Learn one outcome (1 = wrong); a `Detection` when the detector fires outside cooldown."""
        self.samples_seen += 1
        self.errors.append(error)
        self.times.append(event_time)
        if self.warming_up:
            return None
        self.detector.update(error)
        if not self.detector.drift_detected or self.cooling_down(clock):
            return None
        self.last_fired = clock
        errors = list(self.errors)[-min(len(self.errors), self.samples_seen - self.spec.warmup_samples) :]
        split = estimate_change_point(errors)
        offset = len(self.errors) - len(errors)
        before, after = errors[:split], errors[split:]
        return Detection(
            samples_seen=self.samples_seen,
            change_point_sample=self.samples_seen - len(errors) + split,
            change_point_time=self.times[offset + split],
            error_rate_before=sum(before) / max(1, len(before)),
            error_rate_after=sum(after) / max(1, len(after)),
        )


class RollingQuality:
    """Accuracy and log loss over the last `window` labelled predictions."""

    def __init__(self, window: int) -> None:
        self.correct: deque[int] = deque(maxlen=window)
        self.losses: deque[float] = deque(maxlen=window)

    def update(self, correct: bool, p_true: float | None) -> None:
        self.correct.append(int(correct))
        if p_true is not None:
            self.losses.append(-math.log(min(max(p_true, 1e-7), 1.0)))

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct) if self.correct else math.nan

    @property
    def log_loss(self) -> float:
        return sum(self.losses) / len(self.losses) if self.losses else math.nan


def psi(deciles: Sequence[float], values: np.ndarray) -> float | None:
    """Population stability index of `values` against a reference given by its nine deciles (each of
    the ten bins holds 10% of the reference); None when the deciles do not separate ten bins.

    >>> reference = [float(q) for q in range(1, 10)]
    >>> round(psi(reference, np.linspace(0, 10, 10_000)), 3)
    0.0
    """
    edges = np.asarray(deciles, dtype=np.float64)
    if len(edges) != 9 or np.any(np.diff(edges) <= 0):
        return None
    observed = np.bincount(np.searchsorted(edges, values, side="right"), minlength=10) / max(1, len(values))
    observed = np.clip(observed, 1e-4, None)
    return float(np.sum((observed - 0.1) * np.log(observed / 0.1)))


@dataclass(frozen=True)
class CovariateShift:
    feature: str
    statistic: float
    samples_seen: int


class CovariateMonitor:
    """PSI of each feature's recent window against the champion's training deciles, with hysteresis:
    a feature is flagged when its PSI reaches `threshold` on `confirmations` checks in a row, and
    cleared once it falls below `clear`.

    >>> from driftloop.contracts import FeatureStats
    >>> stats = FeatureStats(mean=5, std=2.9, min=0, max=10, quantiles=[float(q) for q in range(1, 10)])
    >>> monitor = CovariateMonitor(["x"], {"x": stats}, window=500, every=100)
    >>> rng = np.random.default_rng(0)
    >>> [monitor.update(rng.uniform(0, 10, (100, 1))) for _ in range(10)][-1]
    []
    >>> [s.feature for s in monitor.update(rng.uniform(8, 10, (500, 1)))]
    []
    >>> [s.feature for s in monitor.update(rng.uniform(8, 10, (100, 1)))]
    ['x']
    """

    def __init__(self, names: Sequence[str], reference: Mapping[str, Any], window: int = 1000,
                 every: int = 250, threshold: float = 0.25, clear: float = 0.1,
                 confirmations: int = 2) -> None:  # fmt: skip
        self.columns = [(j, name) for j, name in enumerate(names) if name in reference]
        self.deciles = {name: reference[name].quantiles for _, name in self.columns}
        self.window: deque[np.ndarray] = deque(maxlen=window)
        self.every, self.threshold, self.clear, self.confirmations = every, threshold, clear, confirmations
        self.samples_seen = 0
        self.since_check = 0
        self.streak: dict[str, int] = {}
        self.flagged: set[str] = set()
        self.last: dict[str, float] = {}

    def update(self, X: np.ndarray) -> list[CovariateShift]:
        """Learn encoded rows; the features that newly drifted (empty most of the time)."""
        for row in X:
            self.window.append(row)
        self.samples_seen += len(X)
        self.since_check += len(X)
        if self.since_check < self.every or len(self.window) < self.window.maxlen:  # type: ignore[operator]
            return []
        self.since_check = 0
        recent = np.asarray(self.window)
        shifted = []
        for j, name in self.columns:
            value = psi(self.deciles[name], recent[:, j])
            if value is None:
                continue
            self.last[name] = value
            if name in self.flagged:
                if value < self.clear:
                    self.flagged.discard(name)
                continue
            self.streak[name] = self.streak.get(name, 0) + 1 if value >= self.threshold else 0
            if self.streak[name] >= self.confirmations:
                self.flagged.add(name)
                self.streak[name] = 0
                shifted.append(CovariateShift(name, value, self.samples_seen))
        return shifted
