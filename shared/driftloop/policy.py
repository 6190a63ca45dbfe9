"""The retraining policy, pure: what a model's labelled stream makes the loop do. The monitor feeds
it every labelled outcome as it joins; `driftloop backtest` feeds it a replayed history. Both get
the same answers, because nothing here reads a clock: counts are labelled rows, durations are the
stream's event time.

- `ConceptDriftMonitor`: a River detector on the champion's 0/1 error stream, with warm-up,
  cooldown (in rows), a warning twin and the estimated change point.
- `RetrainPolicy`: the spec's `retrain` section. It asks for a `Retrain` (a drift retrain once
  enough rows followed the change point, a periodic one, a retry of a rejected candidate with more
  rows, a retrain while the champion stays below the gate floor) and says which rows to train on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from driftloop.rolling import RollingMean
from driftloop.spec import DriftSpec, ModelSpec, warning_params


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
    """A streaming detector on one champion's 0/1 error stream, with warm-up, a cooldown of
    `cooldown_rows` samples between detections and a warning state (a more sensitive twin fired;
    lasts `warning_hold_samples`). With `only_degradation`, a detection whose error rate went down
    is dropped: the model got better, there is nothing to fix.

    >>> from datetime import UTC, datetime
    >>> monitor = ConceptDriftMonitor(DriftSpec(warmup_samples=0))
    >>> now = datetime(2026, 1, 1, tzinfo=UTC)
    >>> fired = [monitor.update(int(i >= 2000 and i % 2 == 0), now) for i in range(3000)]
    >>> next(i for i, d in enumerate(fired) if d) > 2000
    True
    """

    def __init__(self, spec: DriftSpec, buffer: int = 20_000) -> None:
        from driftloop.algorithms import DETECTORS  # River: only where detectors run

        self.spec = spec
        self.detector = DETECTORS[spec.detector](**spec.params)
        self.warning_detector = DETECTORS[spec.detector](**warning_params(spec))
        self.errors: deque[int] = deque(maxlen=buffer)
        self.times: deque[datetime] = deque(maxlen=buffer)
        self.samples_seen = 0
        self.last_fired: int | None = None  # samples_seen at the last detection
        self.warning_until = 0
        self.warnings = 0  # warnings raised so far
        self.ignored = 0  # detections dropped because the error rate went down

    @property
    def warming_up(self) -> bool:
        return self.samples_seen < self.spec.warmup_samples

    @property
    def cooling_down(self) -> bool:
        return self.last_fired is not None and self.samples_seen - self.last_fired < self.spec.cooldown_rows

    @property
    def in_warning(self) -> bool:
        return self.samples_seen < self.warning_until

    def update(self, error: int, event_time: datetime) -> Detection | None:
        """Learn one outcome (1 = wrong); a `Detection` when the detector fires outside cooldown."""
        self.samples_seen += 1
        self.errors.append(error)
        self.times.append(event_time)
        if self.warming_up:
            return None
        self.detector.update(error)
        self.warning_detector.update(error)
        if self.warning_detector.drift_detected and self._degraded() is not None:
            if not self.in_warning:
                self.warnings += 1
            self.warning_until = self.samples_seen + self.spec.warning_hold_samples
        if not self.detector.drift_detected or self.cooling_down:
            return None
        detection = self._degraded()
        if detection is None:
            self.ignored += 1
            return None
        self.last_fired = self.samples_seen
        self.warning_until = 0
        return detection

    def _degraded(self) -> Detection | None:
        """The change point and error rates around it; None if errors went down (and that matters)."""
        errors = list(self.errors)[-min(len(self.errors), self.samples_seen - self.spec.warmup_samples) :]
        split = estimate_change_point(errors)
        offset = len(self.errors) - len(errors)
        before, after = errors[:split], errors[split:]
        rate_before, rate_after = sum(before) / max(1, len(before)), sum(after) / max(1, len(after))
        if self.spec.only_degradation and rate_after <= rate_before:
            return None
        return Detection(
            samples_seen=self.samples_seen,
            change_point_sample=self.samples_seen - len(errors) + split,
            change_point_time=self.times[offset + split],
            error_rate_before=rate_before,
            error_rate_after=rate_after,
        )


@dataclass(frozen=True)
class Retrain:
    """An automatic retrain the policy asks for: rows with event time in [since, until), the newest
    `last_n` of them; `rows` is how many the policy counted there, by event time as the trainer
    counts them (the trainer waits for them: a count it can never reach would hold it up)."""

    command_id: str
    reason: str  # drift, periodic, retry, below_floor
    since: datetime | None
    until: datetime
    last_n: int
    rows: int


@dataclass
class _Pending:
    """A retrain waiting until `counted` labelled rows reach `needed` (a drift retrain counts the
    rows with event time from the change point on, a retry every row after the rejection)."""

    reason: str
    counted: int
    needed: int
    since: datetime | None = None  # a drift retrain: the change point
    last_n: int = 0  # a retry: its rows


@dataclass(frozen=True)
class Step:
    """What one labelled outcome did: a detection, a warning raised, retrains asked for."""

    detection: Detection | None = None
    warned: bool = False
    retrains: tuple[Retrain, ...] = ()


@dataclass
class RetrainPolicy:
    """The spec's retraining policy over one model's labelled stream (every version's outcomes
    count as rows; the champion's also feed the detector). One routine retrain (periodic, below the
    floor) at a time: none is asked while the last request is unanswered (promoted, rejected or
    failed), for a training window of rows at most; a drift retrain is asked regardless.

    >>> from datetime import UTC, datetime, timedelta
    >>> from driftloop.spec import ModelSpec
    >>> spec = ModelSpec.model_validate({"name": "m", "features": [{"name": "x", "type": "numeric"}],
    ...     "label": {"name": "y", "classes": [0, 1]}, "algorithm": {"name": "logistic_regression"},
    ...     "retrain": {"trigger": "periodic", "every_rows": 1000}})
    >>> policy = RetrainPolicy(spec)
    >>> policy.promoted(1)
    >>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
    >>> asked = []
    >>> for i in range(2500):
    ...     for retrain in policy.observe(1, True, t0 + timedelta(seconds=i)).retrains:
    ...         asked.append(retrain)
    ...         policy.promoted(len(asked) + 1, retrain.command_id)  # no new request until answered
    >>> [(r.reason, r.last_n, r.rows) for r in asked]  # the newest 5,000 rows: 1,000 and 2,000 so far
    [('periodic', 5000, 1000), ('periodic', 5000, 2000)]
    """

    spec: ModelSpec
    champion: int | None = None
    detector: ConceptDriftMonitor | None = None
    labelled: int = 0  # labelled rows seen
    latest: datetime | None = None  # newest event time seen
    last_asked: int = 0  # `labelled` at the last automatic request
    last_asked_at: datetime | None = None
    pending: list[_Pending] = field(default_factory=list)
    asked: dict[str, Retrain] = field(default_factory=dict)  # recent requests, for retries
    floor: datetime | None = None  # window since_change: no retrain reads rows before this change point
    champion_outcomes: RollingMean = field(default_factory=lambda: RollingMean(1))  # for the floor
    times: deque[datetime] = field(default_factory=deque)  # event times of the newest rows, for counts
    awaiting: tuple[str, int] | None = None  # the last request not yet answered, `labelled` when asked

    def __post_init__(self) -> None:
        self.times = deque(maxlen=self.spec.training.window_rows)  # no retrain reads more rows

    @property
    def warming_up(self) -> bool:
        return self.detector is None or self.detector.warming_up

    @property
    def in_warning(self) -> bool:
        return self.detector is not None and self.detector.in_warning

    @property
    def detector_samples(self) -> int:
        """The champion's labelled outcomes its detector has seen."""
        return 0 if self.detector is None else self.detector.samples_seen

    def promoted(self, version: int, command_id: str | None = None) -> None:
        """A new champion (promoted or rolled back to). A routine one, from a periodic retrain the
        policy asked for, keeps watching with the same detector: the concept has not been declared
        over, and resetting it after every refresh would leave it too few rows to ever fire. Any
        other champion (after a drift, a retry, a rollback, a person's command) starts a fresh
        detector, warming up, and a fresh count of outcomes for the floor."""
        self._answered(command_id)
        if version == self.champion:
            return
        self.champion = version
        request = self.asked.get(command_id or "")
        if self.detector is None or request is None or request.reason != "periodic":
            self.detector = ConceptDriftMonitor(self.spec.drift)
            self.champion_outcomes = RollingMean(self.spec.retrain.below_floor_rows or 1)

    def observe(self, version: int, correct: bool, event_time: datetime) -> Step:
        """Learn one labelled outcome of `version`'s prediction made at `event_time`."""
        rules = self.spec.retrain
        self.labelled += 1
        self.times.append(event_time)
        self.latest = event_time if self.latest is None else max(self.latest, event_time)
        if self.last_asked_at is None:
            self.last_asked_at = event_time
        for pending in self.pending:  # this row counts for the retrains already waiting
            if pending.since is None or event_time >= pending.since:
                pending.counted += 1
        detection, warned = None, False
        if version == self.champion and self.detector is not None:
            warnings = self.detector.warnings
            detection = self.detector.update(0 if correct else 1, event_time)
            warned = self.detector.warnings > warnings
            self.champion_outcomes.append(int(correct))
            if detection is not None and rules.trigger in ("drift", "both"):
                change = detection.change_point_time
                self.pending = [p for p in self.pending if p.reason != "drift"]  # the newest change wins
                self.pending.append(_Pending("drift", self._rows_since(change), rules.min_rows, change))
        retrains = self._due(event_time)
        return Step(detection, warned, tuple(retrains))

    def rejected(self, command_id: str) -> None:
        """The candidate of a request was rejected, or no candidate came of it: retry once with
        twice the rows, when half as many new rows again have arrived."""
        self._answered(command_id)
        request = self.asked.pop(command_id, None)
        if request is None or not self.spec.retrain.retry_rejected or request.reason == "retry":
            return
        wait = max(self.spec.drift.cooldown_rows, request.rows // 2)
        self.pending.append(
            _Pending("retry", 0, wait, last_n=min(self.spec.training.window_rows, 2 * request.rows))
        )

    def _due(self, now: datetime) -> list[Retrain]:
        rules = self.spec.retrain
        if rules.trigger == "none":  # no automatic retraining at all, not even below the floor
            return []
        wanted: list[Retrain] = []
        still: list[_Pending] = []
        for pending in self.pending:
            if pending.counted < pending.needed:
                still.append(pending)
            elif pending.reason == "drift":
                wanted.append(self._drift_window(pending.since, pending.counted))
            else:
                wanted.append(self._request("retry", self.floor, pending.last_n))
        self.pending = still
        since_asked = self.labelled - self.last_asked
        waiting_for_drift = any(p.reason == "drift" for p in self.pending)  # it retrains soon, on newer rows
        if self.awaiting is not None and self.labelled - self.awaiting[1] >= self.spec.training.window_rows:
            self.awaiting = None  # no answer while a whole training window went by: not waited for
        routine = not wanted and not waiting_for_drift and self.awaiting is None  # one at a time
        if routine and rules.trigger in ("periodic", "both"):
            by_rows = rules.every_rows is not None and since_asked >= rules.every_rows
            by_time = (
                rules.every_s is not None
                and self.last_asked_at is not None
                and now - self.last_asked_at >= timedelta(seconds=rules.every_s)
            )
            if by_rows or by_time:
                wanted.append(self._request("periodic", self.floor, rules.window_rows))
        below = self._below_floor() and since_asked >= len(self.champion_outcomes)
        if routine and not wanted and below:  # a detected change is retrained after it
            wanted.append(self._request("below_floor", self.floor, rules.window_rows))
        for request in wanted[-1:]:  # several due at once: the last asked covers them
            self.last_asked, self.last_asked_at = self.labelled, now
            self.awaiting = (request.command_id, self.labelled)
            self.asked[request.command_id] = request
            while len(self.asked) > 64:
                del self.asked[next(iter(self.asked))]
        return wanted[-1:]

    def _below_floor(self) -> bool:
        gate = self.spec.gate
        outcomes = self.champion_outcomes
        if self.spec.retrain.below_floor_rows is None or gate.metric == "log_loss":
            return False
        return outcomes.full and outcomes.mean < gate.floor

    def _answered(self, command_id: str | None) -> None:
        """A request came to an end: routine retrains may be asked again."""
        if self.awaiting is not None and self.awaiting[0] == command_id:
            self.awaiting = None

    def _rows_since(self, since: datetime | None) -> int:
        """Labelled rows seen with event time at or after `since` (all of them without it), as the
        trainer's store counts them; at most a training window's."""
        if since is None:
            return self.labelled
        return sum(1 for t in self.times if t >= since)

    def _drift_window(self, change: datetime | None, since_change: int) -> Retrain:
        rules, cap = self.spec.retrain, self.spec.training.window_rows
        if rules.window == "since_change":
            self.floor = change  # the rows before the change are another concept: no retrain reads them
            return self._request(
                "drift", change, rules.window_rows, rows=min(rules.window_rows, since_change)
            )
        if rules.window == "last":
            return self._request("drift", None, rules.window_rows)
        return self._request("drift", None, min(cap, max(rules.window_rows, since_change)))

    def _request(self, reason: str, since: datetime | None, last_n: int, rows: int | None = None) -> Retrain:
        until = (self.latest or datetime.min) + timedelta(microseconds=1)
        version = self.champion or 0
        return Retrain(
            command_id=f"{reason}-{self.spec.name}-v{version}-{until:%Y%m%dT%H%M%S%f}",
            reason=reason,
            since=since,
            until=until,
            last_n=last_n,
            rows=min(last_n, self._rows_since(since)) if rows is None else rows,
        )
