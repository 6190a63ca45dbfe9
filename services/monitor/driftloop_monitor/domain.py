"""What the monitor knows of each model, pure: a `Watch` per model (champion, drift state,
quality per version) over River-style classes for quality and distribution drift (concept drift
and the retraining policy are `driftloop.policy`, shared with the backtest)."""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import numpy as np

from driftloop.contracts import FeatureStats
from driftloop.distributions import Reference, class_psi
from driftloop.estimation import (
    Calibration,
    Estimate,
    FloorAlarm,
    RollingEstimate,
    chance_of,
    estimate_floor,
)
from driftloop.features import FeatureSet
from driftloop.policy import RetrainPolicy, Step
from driftloop.rolling import RollingMean
from driftloop.slices import SliceBook, Slicer
from driftloop.spec import DistributionDriftSpec, ModelSpec


class RollingQuality:
    """Accuracy and log loss over the last `window` labelled predictions, and the accuracy the
    estimate gave the same predictions before their labels came (its error, to know when to trust
    it)."""

    def __init__(self, window: int) -> None:
        self.correct = RollingMean(window)
        self.losses = RollingMean(window)
        self.expected = RollingMean(window)

    def update(self, correct: bool, p_true: float | None, expected: float | None = None) -> None:
        self.correct.append(int(correct))
        if p_true is not None:
            self.losses.append(-math.log(min(max(p_true, 1e-7), 1.0)))
        if expected is not None:
            self.expected.append(expected)

    @property
    def estimate_error(self) -> float | None:
        """Estimated minus realised accuracy over the window (None without estimates).

        >>> quality = RollingQuality(10)
        >>> for correct, chance in [(True, 0.9), (False, 0.7), (True, 0.8)]:
        ...     quality.update(correct, None, chance)
        >>> round(quality.estimate_error, 3)
        0.133
        """
        return self.expected.mean - self.accuracy if len(self.expected) else None

    @property
    def accuracy(self) -> float:
        return self.correct.mean

    @property
    def log_loss(self) -> float:
        return self.losses.mean


def labelled_row_id(request_id: str) -> str:
    """The event id of the labelled row a join sends to ingest: stable for the request, and within
    an event id's 256 characters however long the request id (up to its own 256).

    >>> labelled_row_id("r-1")
    'feedback:r-1'
    >>> long = labelled_row_id("x" * 256)
    >>> long.startswith("feedback:sha256:"), len(long) <= 256, long == labelled_row_id("x" * 256)
    (True, True, True)
    """
    row_id = f"feedback:{request_id}"
    if len(row_id) <= 256:
        return row_id
    return "feedback:sha256:" + hashlib.sha256(request_id.encode()).hexdigest()


class Hysteresis:
    """Raises a key's flag when its score reaches `threshold` on `confirmations` tests in a row, and
    lowers it once the score falls below `clear`.

    >>> h = Hysteresis(threshold=0.25, clear=0.1, confirmations=2)
    >>> [h.update("x", s) for s in (0.3, 0.3, 0.3, 0.2, 0.05, 0.3, 0.3)]
    [False, True, False, False, False, False, True]
    """

    def __init__(self, threshold: float, clear: float, confirmations: int) -> None:
        self.threshold, self.clear, self.confirmations = threshold, clear, confirmations
        self.streak: dict[str, int] = {}
        self.flagged: set[str] = set()

    def update(self, key: str, score: float) -> bool:
        """Learn one test's score; True when the flag is newly raised."""
        if key in self.flagged:
            if score < self.clear:
                self.flagged.discard(key)
            return False
        self.streak[key] = self.streak.get(key, 0) + 1 if score >= self.threshold else 0
        if self.streak[key] >= self.confirmations:
            self.flagged.add(key)
            self.streak[key] = 0
            return True
        return False


@dataclass(frozen=True)
class Shift:
    name: str  # a feature, or "prediction"
    statistic: float
    samples_seen: int


class _Windowed:
    """A window of recent samples, tested every `spec.every` samples once it is full."""

    def __init__(self, spec: DistributionDriftSpec) -> None:
        self.spec = spec
        self.window: deque[Any] = deque(maxlen=spec.window)
        self.samples_seen = 0
        self.since_check = 0
        threshold, clear = spec.limits
        self.hysteresis = Hysteresis(threshold, clear, spec.confirmations)

    def _checks(self, samples: Sequence[Any]) -> Iterator[None]:
        """Take samples in; yield whenever a test is due: every `every` samples once the window is
        full, however the samples were batched (a big batch gets several tests, not one)."""
        i = 0
        while i < len(samples):
            k = min(len(samples) - i, self.spec.every - self.since_check)
            self.window.extend(samples[i : i + k])
            i += k
            self.samples_seen += k
            self.since_check += k
            if self.since_check >= self.spec.every:
                self.since_check = 0
                if len(self.window) == self.spec.window:
                    yield

    @property
    def flagged(self) -> set[str]:
        return self.hysteresis.flagged


class CovariateMonitor(_Windowed):
    """Per-feature distances of recent requests from the champion's training distribution; a feature
    is flagged by the spec's statistic, with hysteresis. All distances stay readable in `last`.

    >>> from driftloop.contracts import FeatureStats
    >>> stats = FeatureStats(mean=5, std=2.9, min=0, max=10, quantiles=[float(q) for q in range(1, 10)])
    >>> monitor = CovariateMonitor(["x"], {"x": stats}, DistributionDriftSpec(window=500, every=100))
    >>> rng = np.random.default_rng(0)
    >>> [monitor.update(rng.uniform(0, 10, (100, 1))) for _ in range(10)][-1]
    []
    >>> [s.name for s in monitor.update(rng.uniform(8, 10, (500, 1)))]  # one batch, several tests
    ['x']
    """

    def __init__(
        self, names: Sequence[str], reference: Mapping[str, FeatureStats], spec: DistributionDriftSpec
    ) -> None:
        super().__init__(spec)
        self.columns = [(j, name) for j, name in enumerate(names) if name in reference]
        self.references = {name: Reference(reference[name]) for _, name in self.columns}
        self.last: dict[str, dict[str, float]] = {}

    def update(self, X: np.ndarray) -> list[Shift]:
        """Learn encoded rows; the features that newly drifted (empty most of the time)."""
        shifted = []
        for _ in self._checks(list(X)):
            recent = np.asarray(self.window)
            for j, name in self.columns:
                self.last[name] = self.references[name].distances(recent[:, j])
                score = self.last[name][self.spec.statistic]
                if self.hysteresis.update(name, score):
                    shifted.append(Shift(name, score, self.samples_seen))
        return shifted


class PredictionMonitor(_Windowed):
    """PSI of the champion's recent predicted-class shares against its shares on the training holdout.

    >>> monitor = PredictionMonitor({"0": 0.5, "1": 0.5}, DistributionDriftSpec(window=100, every=50))
    >>> monitor.update(["0", "1"] * 100)
    []
    >>> [s.name for s in monitor.update(["1"] * 100)]
    ['prediction']
    """

    def __init__(self, shares: Mapping[str, float], spec: DistributionDriftSpec) -> None:
        super().__init__(spec)
        self.shares = dict(shares)
        self.last: float | None = None

    def update(self, predicted: Sequence[str]) -> list[Shift]:
        """Learn predicted classes; a one-item list when the prediction mix newly drifted."""
        if not self.shares:
            return []
        shifted = []
        for _ in self._checks(predicted):
            counts: dict[str, int] = {}
            for label in self.window:
                counts[label] = counts.get(label, 0) + 1
            self.last = class_psi(self.shares, counts)
            if self.hysteresis.update("prediction", self.last):
                shifted.append(Shift("prediction", self.last, self.samples_seen))
        return shifted


WATCHING, WARMING_UP, WARNING, DRIFT = 0, 1, 2, 3  # a watch's drift state (the metric's values)


class Watch:
    """Everything the monitor knows of one model: the champion it watches, the retraining policy
    and its drift state (watching, warming up on a new champion, warning, drift), the covariate and
    prediction monitors built on the champion's training distribution, and the rolling quality of
    every version that served (a replaced champion's is dropped)."""

    def __init__(
        self,
        spec: ModelSpec,
        quality_window: int,
        calibrations: dict[int, Calibration | None] | None = None,
    ) -> None:
        self.spec = spec
        self.features = FeatureSet(spec)
        self.policy = RetrainPolicy(spec)
        self.quality_window = quality_window
        self.champion: int | None = None
        self.state = WATCHING
        self.covariate: CovariateMonitor | None = None
        self.predictions: PredictionMonitor | None = None
        self.quality: dict[int, RollingQuality] = {}
        self.retired: set[int] = set()  # versions replaced as champion: their quality is not exported
        self.calibrations = {} if calibrations is None else calibrations  # by version, from its events
        self.estimates: dict[int, RollingEstimate] = {}
        self.floor_alarm = FloorAlarm()  # the champion's estimate against its floor
        self.slicer = Slicer(spec) if spec.slices.by else None  # a request's slice values
        self.slices: SliceBook | None = None  # the champion's, when the spec slices
        self.slice_values: OrderedDict[str, dict[str, str]] = OrderedDict()  # by request id, awaiting results
        self.unsliced: OrderedDict[str, tuple[str, float | None]] = OrderedDict()  # results awaiting requests

    def promoted(
        self,
        version: int,
        reference_stats: Mapping[str, FeatureStats],
        prediction_shares: Mapping[str, float],
        command_id: str | None,
    ) -> int | None:
        """Watch a new champion; the champion it replaced, if any. The monitors are built before
        anything changes: a failure leaves the watch as it was."""
        # aggregates and time parts are computed by the platform, not sent with requests: not watched
        reference = {k: v for k, v in reference_stats.items() if k not in self.spec.computed}
        drift = self.spec.drift
        covariate = CovariateMonitor(self.features.names, reference, drift.covariate)
        predictions = PredictionMonitor(prediction_shares, drift.prediction)
        retired, self.champion = self.champion, version
        self.policy.promoted(version, command_id)
        self.covariate, self.predictions = covariate, predictions
        self.state = WARMING_UP
        self.floor_alarm = FloorAlarm()
        self.slices = SliceBook(self.spec) if self.spec.slices.by else None
        self.retired.discard(version)
        if retired is not None:
            self.retired.add(retired)
            self.quality.pop(retired, None)
            self.estimates.pop(retired, None)
        return retired

    def requested(self, request_id: str, values: dict[str, str]) -> tuple[str, float | None] | None:
        """A request's slice values (kept until its result comes); its champion's answer if it came
        first."""
        answer = self.unsliced.pop(request_id, None)
        if answer is None:
            _bounded_put(self.slice_values, request_id, values)
        return answer

    def answered(self, request_id: str, predicted: str, confidence: float | None) -> dict[str, str] | None:
        """The champion answered a request: its slice values if its request came first (else the
        answer waits for it)."""
        values = self.slice_values.pop(request_id, None)
        if values is None:
            _bounded_put(self.unsliced, request_id, (predicted, confidence))
        return values

    def slice_served(
        self, values: dict[str, str], predicted: str, confidence: float | None
    ) -> list[tuple[str, str]]:
        """A champion's answer in its slices (the chance it is right through the champion's calibration)."""
        if self.slices is None or self.champion is None:
            return []
        chance = None
        if confidence is not None:
            chance = chance_of(confidence, self.calibrations.get(self.champion))
        return self.slices.served(values, predicted, chance)

    def calibrated(self, version: int, calibration: Calibration | None) -> None:
        """The calibration a version's serving event carries (an estimate begun without it, from
        predictions that came before the event, starts again)."""
        if version in self.calibrations and self.calibrations[version] == calibration:
            return
        self.calibrations[version] = calibration
        self.estimates.pop(version, None)

    def served(self, version: int, confidence: Sequence[float]) -> Estimate | None:
        """Top-class probabilities `version` served: its estimated accuracy over the recent window."""
        estimate = self.estimates.get(version)
        if estimate is None:
            settings = self.spec.drift.estimate
            calibration = self.calibrations.get(version)
            estimate = self.estimates[version] = RollingEstimate(calibration, settings.window, settings.level)
        estimate.add(np.asarray(confidence, dtype=np.float64))
        return estimate.estimate()

    def exported_estimate(self, version: int) -> Estimate | None:
        """The estimate to export for `version`: None for a retired champion or a version unseen."""
        estimate = None if version in self.retired else self.estimates.get(version)
        return None if estimate is None else estimate.estimate()

    def estimate_floor(self, version: int) -> float | None:
        """The estimated accuracy `version` is held to (`driftloop.estimation.estimate_floor`)."""
        estimate = self.spec.drift.estimate
        return estimate_floor(self.spec.estimate_floor, self.calibrations.get(version), estimate.max_drop)

    def estimate_fell(self) -> Estimate | None:
        """The champion's estimate, when it has just fallen below its floor (once per fall: cleared
        when it is back a point above); None otherwise. Judged on a full window only. The expected
        accuracy of a window of 500 moves by well under a point on steady traffic; the band is
        where the labels' accuracy will fall around it, not how sure the expectation is."""
        if self.champion is None:
            return None
        floor = self.estimate_floor(self.champion)
        rolling = self.estimates.get(self.champion)
        if floor is None or rolling is None or not rolling.full:
            return None
        estimate = rolling.estimate()
        assert estimate is not None  # a full window
        return estimate if self.floor_alarm.fell(estimate.accuracy, floor) else None

    def outcome(
        self, version: int, correct: bool, p_true: float | None, confidence: float | None = None
    ) -> None:
        """A labelled prediction of `version` (`confidence`: its top-class probability): its rolling
        quality moves, and the estimate's error with it."""
        quality = self.quality.get(version)
        if quality is None:
            quality = self.quality[version] = RollingQuality(self.quality_window)
        expected = None
        if confidence is not None:
            expected = chance_of(confidence, self.calibrations.get(version))
        quality.update(correct, p_true, expected)

    def exported_quality(self, version: int) -> RollingQuality | None:
        """The quality to export for `version`: None for a retired champion or a version unseen."""
        return None if version in self.retired else self.quality.get(version)

    def step(self, version: int, correct: bool, at: datetime) -> Step:
        """Feed a labelled outcome to the retraining policy and move the drift state: a detection
        holds the state at drift until the next champion."""
        step = self.policy.observe(version, correct, at)
        if self.state != DRIFT and not self.policy.warming_up:
            self.state = WARNING if self.policy.in_warning else WATCHING
        if step.detection is not None:
            self.state = DRIFT
        return step


PAIRING = 100_000  # requests (or answers) kept per model while the other half is on its way


def _bounded_put(held: OrderedDict[str, Any], key: str, value: Any) -> None:
    held[key] = value
    if len(held) > PAIRING:
        held.popitem(last=False)


class Joins(Protocol):
    """Where a request's features, its result and its label meet (`JoinStore` on Redis in the
    service, `InMemoryJoinStore` in unit tests): each part is written as it arrives, in any order."""

    async def put(
        self, parts: Sequence[tuple[str, str, bytes, str]], now_ms: int
    ) -> dict[str, dict[str, bytes]]:
        """Write (request_id, part, body, model) parts; the complete, unprocessed joins touched."""
        ...

    async def mark_done(self, request_ids: Sequence[str]) -> None:
        """Record that these joins were processed: a redelivery does not complete them again."""
        ...

    async def sweep(self, models: Sequence[str], now_ms: int) -> dict[str, tuple[int, int]]:
        """Per model: (requests never labelled within the window, labels that came too late)."""
        ...
