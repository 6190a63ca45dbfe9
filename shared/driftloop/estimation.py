"""Quality before the labels come: confidence-based performance estimation (CBPE).

A classifier's served probabilities say how often it should be right: if it is calibrated, a
prediction made with top-class probability 0.8 is right 8 times in 10, whatever the inputs. The
expected accuracy of a window of predictions is then the mean of their (calibrated) top-class
probabilities, and the accuracy the labels will show varies around it as a sum of independent
Bernoulli draws (a Poisson binomial), which gives the band. This holds under covariate shift (the
inputs move, the concept P(label | inputs) does not): that is the shift it detects before any
label, when the inputs move where the model is unsure. It cannot see a concept drift: the labels
do (`driftloop.drift`).

Models are rarely calibrated as they come, so each version carries a `Calibration` fitted on its
own holdout at training time: the accuracy observed for each range of top-class probability,
made monotone. Pure numpy: training fits it, the monitor applies it.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from driftloop.rolling import RollingMean

BINS = 20  # equal-count bins of the holdout: a version's map has at most this many knots
CLEAR_MARGIN = 0.01  # an estimate that fell below its floor counts as back this far above it


@dataclass(frozen=True)
class Calibration:
    """A monotone step map from a served top-class probability to the chance the prediction is
    right: the holdout cut into bins of equal rows, each bin's observed accuracy, bins merged
    until accuracy never falls as probability rises. `edges` separate the bins (one fewer than
    `accuracy`). A step, not a line between bins: on data like the holdout's, the estimate is then
    unbiased whatever the shape of the true curve."""

    edges: tuple[float, ...]
    accuracy: tuple[float, ...]
    rows: int  # holdout rows it was fitted on
    overall: float | None = None  # accuracy on the whole holdout (None: not recorded)

    @classmethod
    def fit(cls, confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> Calibration:
        """Fit on a holdout: each row's top-class probability and whether its prediction was right.

        >>> c = Calibration.fit(np.array([0.6, 0.6, 0.9, 0.9]), np.array([1, 0, 1, 1]), bins=2)
        >>> c.edges, c.accuracy, c.overall
        ((0.75,), (0.5, 1.0), 0.75)
        """
        confidence = np.asarray(confidence, dtype=np.float64)
        correct = np.asarray(correct, dtype=np.float64)
        if len(confidence) == 0:
            raise ValueError("a calibration needs at least one holdout row")
        order = np.argsort(confidence, kind="stable")
        ranked = confidence[order]
        # equal-count bins, never splitting equal probabilities (a step needs a gap to sit in)
        wanted = np.linspace(0, len(ranked), min(bins, len(ranked)) + 1, dtype=int)[1:-1]
        cuts = sorted({int(np.searchsorted(ranked, ranked[i], side="left")) for i in wanted} - {0})
        bounds = [0, *cuts, len(ranked)]
        blocks = [
            [float(correct[order[lo:hi]].sum()), hi - lo, float(ranked[lo]), float(ranked[hi - 1])]
            for lo, hi in itertools.pairwise(bounds)
            if hi > lo
        ]
        merged: list[list[float]] = []  # [hits, rows, lowest probability, highest probability]
        for block in blocks:
            merged.append(block)
            while len(merged) > 1 and merged[-2][0] / merged[-2][1] > merged[-1][0] / merged[-1][1]:
                last = merged.pop()
                merged[-1] = [merged[-1][0] + last[0], merged[-1][1] + last[1], merged[-1][2], last[3]]
        edges = tuple((a[3] + b[2]) / 2 for a, b in itertools.pairwise(merged))
        accuracy = tuple(hits / rows for hits, rows, _, _ in merged)
        return cls(edges, accuracy, len(confidence), float(correct.mean()))

    def __call__(self, confidence: np.ndarray) -> np.ndarray:
        """The chance each prediction is right."""
        at = np.searchsorted(np.asarray(self.edges), np.asarray(confidence, dtype=np.float64), side="right")
        return np.asarray(self.accuracy)[at]

    def as_dict(self) -> dict[str, Any]:
        return {
            "edges": list(self.edges),
            "accuracy": list(self.accuracy),
            "rows": self.rows,
            "overall": self.overall,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        overall = data.get("overall")
        return cls(
            tuple(data["edges"]),
            tuple(data["accuracy"]),
            int(data["rows"]),
            None if overall is None else float(overall),
        )


@dataclass(frozen=True)
class Estimate:
    """The accuracy a window of predictions should show, with the band the realised accuracy
    falls in at `level` if the calibration holds."""

    accuracy: float
    low: float
    high: float
    rows: int
    level: float

    def covers(self, realised: float) -> bool:
        return self.low <= realised <= self.high


def estimate_accuracy(
    confidence: np.ndarray, calibration: Calibration | None = None, level: float = 0.95
) -> Estimate | None:
    """The expected accuracy of predictions made with these top-class probabilities (through the
    version's calibration when it has one), and its band; None for no predictions.

    >>> e = estimate_accuracy(np.full(100, 0.9))
    >>> round(e.accuracy, 3), round(e.low, 3), round(e.high, 3)
    (0.9, 0.841, 0.959)
    """
    p = chance_right(confidence, calibration)
    if len(p) == 0:
        return None
    return _band(float(p.mean()), float((p * (1.0 - p)).mean()), len(p), level)


def chance_of(confidence: float, calibration: Calibration | None) -> float:
    """`chance_right` of one prediction, without numpy (the monitor's per-record path).

    >>> c = Calibration((0.75,), (0.5, 1.0), 4)
    >>> chance_of(0.8, c), chance_of(0.75, c), chance_of(0.6, None), chance_of(1.2, None)
    (1.0, 1.0, 0.6, 1.0)
    """
    if calibration is None:
        return min(max(confidence, 0.0), 1.0)
    return calibration.accuracy[bisect.bisect_right(calibration.edges, confidence)]


def chance_right(confidence: np.ndarray, calibration: Calibration | None) -> np.ndarray:
    """The chance each prediction is right: its calibrated top-class probability (the probability
    as served for a version without a calibration)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    return calibration(confidence) if calibration is not None else np.clip(confidence, 0.0, 1.0)


def _band(expected: float, variance: float, n: int, level: float) -> Estimate:
    """`expected` with the band of a Poisson binomial of `n` draws whose mean variance is `variance`."""
    spread = math.sqrt(max(variance, 0.0) * n) / n
    z = NormalDist().inv_cdf(0.5 + level / 2)
    return Estimate(expected, max(0.0, expected - z * spread), min(1.0, expected + z * spread), n, level)


class RollingEstimate:
    """The estimate over the newest `window` predictions of one version, updated as they are served
    (the monitor keeps one per version in service).

    >>> rolling = RollingEstimate(None, window=100)
    >>> rolling.add(np.full(300, 0.6)); rolling.add(np.full(100, 0.9))
    >>> round(rolling.estimate().accuracy, 3), rolling.estimate().rows, rolling.seen
    (0.9, 100, 400)
    """

    def __init__(self, calibration: Calibration | None, window: int, level: float = 0.95) -> None:
        self.calibration = calibration
        self.level = level
        self.right = RollingMean(window)
        self.variance = RollingMean(window)
        self.seen = 0

    def add(self, confidence: np.ndarray) -> None:
        """Served predictions' top-class probabilities, oldest first."""
        for p in chance_right(confidence, self.calibration).tolist():
            self.right.append(p)
            self.variance.append(p * (1.0 - p))
        self.seen += len(confidence)

    @property
    def full(self) -> bool:
        return self.right.full

    def estimate(self) -> Estimate | None:
        """The estimate over the window; None before the first prediction."""
        if not len(self.right):
            return None
        return _band(self.right.mean, self.variance.mean, len(self.right), self.level)


def estimate_floor(
    floor: float | None, calibration: Calibration | None, max_drop: float | None
) -> float | None:
    """The estimated accuracy a version is held to: `floor` (the spec's), or the version's holdout
    accuracy less `max_drop`, whichever is higher (None: neither applies).

    >>> estimate_floor(0.6, Calibration((0.75,), (0.5, 1.0), 4, overall=0.9), 0.05)
    0.85
    """
    limits = [] if floor is None else [floor]
    if max_drop is not None and calibration is not None and calibration.overall is not None:
        limits.append(calibration.overall - max_drop)
    return max(limits) if limits else None


class FloorAlarm:
    """Says when an estimate has just fallen below its floor: once per fall, cleared when the
    estimate is back `CLEAR_MARGIN` above the floor (the monitor's alarm, and the backtest's).

    >>> alarm = FloorAlarm()
    >>> [alarm.fell(a, 0.8) for a in (0.85, 0.79, 0.75, 0.805, 0.78, 0.82, 0.7)]
    [False, True, False, False, False, False, True]
    """

    def __init__(self) -> None:
        self.below = False  # fell and not back yet

    def fell(self, accuracy: float, floor: float) -> bool:
        if self.below:
            self.below = accuracy < floor + CLEAR_MARGIN
            return False
        self.below = accuracy < floor
        return self.below


def window_errors(
    confidence: np.ndarray, correct: np.ndarray, calibration: Calibration | None, window: int
) -> list[float]:
    """The estimate's error (estimated minus realised accuracy) on each run of `window` consecutive
    predictions (a last, shorter run is left out): how far the estimate was from what the labels
    then showed.

    >>> window_errors(np.array([0.9] * 4), np.array([1, 1, 0, 1]), None, 2)
    [-0.09999999999999998, 0.4]
    """
    p = chance_right(confidence, calibration)
    correct = np.asarray(correct, dtype=np.float64)
    return [
        float(p[i : i + window].mean() - correct[i : i + window].mean())
        for i in range(0, len(p) - window + 1, window)
    ]
