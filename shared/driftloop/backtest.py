"""Backtests of retraining policies: a labelled history replayed in event-time order, in simulated
time, with labels arriving late, through the code the running loop uses: the monitor's policy
(`driftloop.policy`: detector, warm-up, change point, windows, cooldowns in rows), the trainer's
fitting (`driftloop.fitting`: the spec's algorithm, recency weights, the holdout, the comparison
with the champion) and the registry's gate (`driftloop.gate`). No broker, no Redis, no files.

One simplification, on purpose: a candidate is scored with scikit-learn, not its ONNX conversion
(the trainer checks that both agree to `training.parity_tolerance`), and a blessed candidate serves
from the next row (the live loop takes the training time; `deploy_rows` models that lag).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from driftloop import fitting
from driftloop.contracts import Label
from driftloop.estimation import Calibration, FloorAlarm, chance_of, estimate_floor
from driftloop.gate import Evidence, gate
from driftloop.policy import Detection, Retrain, RetrainPolicy
from driftloop.spec import ModelSpec

PREDICT_CHUNK = 2_048  # rows a champion predicts at once


@dataclass(frozen=True)
class History:
    """Encoded rows in event-time order, their labels and times, and known drift onsets (rows)."""

    X: np.ndarray
    y: Sequence[Label]
    times: Sequence[datetime]
    drifts: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Delay:
    """When a row's label arrives: after `rows` more rows were served, or once the stream's event
    time is `seconds` past the row's (always after the row itself was served)."""

    rows: int = 0
    seconds: float | None = None

    def due(self, history: History) -> np.ndarray:
        """For each row, the first row served after its label is known (len(history): never)."""
        n = len(history)
        after = np.arange(1, n + 1)
        if self.seconds is None:
            return np.minimum(after + self.rows, n)
        stamps = np.array([t.timestamp() for t in history.times])
        return np.maximum(after, np.searchsorted(stamps, stamps + self.seconds, side="left")).clip(max=n)

    def __str__(self) -> str:
        return f"{self.rows} rows" if self.seconds is None else f"{timedelta(seconds=self.seconds)}"


@dataclass(frozen=True)
class Training:
    """One retrain: when (the stream row), why, on which rows, what the gate said."""

    row: int
    reason: str
    rows: int
    blessed: bool
    decision: str
    cpu_s: float


@dataclass(frozen=True)
class Detected:
    """A detection: the stream row being served when it fired, and what the detector said."""

    row: int
    detection: Detection


@dataclass
class Result:
    """What one policy did over a history."""

    name: str
    spec: ModelSpec
    start: int  # first served (evaluated) row
    correct: np.ndarray  # per served row
    p_true: np.ndarray  # probability the serving model gave the true class
    versions: np.ndarray  # serving version per row
    trained_until: np.ndarray  # per row: newest row the serving model was trained on
    trainings: list[Training] = field(default_factory=list)
    detections: list[Detected] = field(default_factory=list)  # every detection, in stream order
    requests: list[Retrain] = field(default_factory=list)  # every retrain the policy asked for
    train_cpu_s: float = 0.0
    replay_cpu_s: float = 0.0
    chance: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per served row, before its label
    calibrations: dict[int, Calibration] = field(default_factory=dict)  # by version, from its holdout

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if len(self.correct) else float("nan")

    @property
    def log_loss(self) -> float:
        return float(-np.log(np.clip(self.p_true, 1e-7, 1)).mean()) if len(self.p_true) else float("nan")

    @property
    def retrains(self) -> int:
        return len(self.trainings)

    @property
    def promotions(self) -> int:
        return sum(t.blessed for t in self.trainings)

    def windows(self, size: int) -> list[float]:
        """Accuracy over consecutive windows of `size` served rows."""
        return [float(self.correct[i : i + size].mean()) for i in range(0, len(self.correct), size)]

    def rolling(self, size: int) -> np.ndarray:
        """Accuracy over the last `size` served rows, at every row."""
        sums = np.cumsum(np.concatenate([[0.0], self.correct.astype(np.float64)]))
        ends = np.arange(1, len(self.correct) + 1)
        return (sums[ends] - sums[np.maximum(0, ends - size)]) / np.minimum(ends, size)

    def drift_figures(self, drifts: Sequence[int]) -> dict[str, Any]:
        """Where drift onsets are known: the delay (rows) of the first detection after each onset,
        the detections that were not such a first one (false alarms), and the rows served after
        an onset by a model trained on rows before it (stale)."""
        rows = [d.row for d in self.detections]
        delays: list[int | None] = []
        firsts: set[int] = set()
        for k, onset in enumerate(drifts):
            end = drifts[k + 1] if k + 1 < len(drifts) else None
            after = [d for d in rows if d >= onset and (end is None or d < end)]
            delays.append(after[0] - onset if after else None)
            firsts.update(after[:1])
        stale = 0
        for k, onset in enumerate(drifts):
            end = drifts[k + 1] if k + 1 < len(drifts) else self.start + len(self.correct)
            served = slice(max(0, onset - self.start), max(0, end - self.start))
            stale += int((self.trained_until[served] < onset).sum())
        return {
            "detection_delays": delays,
            "false_alarms": len([d for d in rows if d not in firsts]),
            "stale_rows": stale,
        }

    def estimate_figures(self, window: int, max_drop: float | None, floor: float | None) -> dict[str, Any]:
        """How the accuracy estimated before labels (each version's holdout calibration applied to
        its served probabilities, over its newest `window` rows, as the monitor does) compares with
        the accuracy the labels then showed on the same rows: the error, and the estimate's alarms
        (below the version's floor: `estimation.estimate_floor`) against the labels' falls below
        the same floor. An alarm is confirmed when the labels fell within `window` rows of it; a
        fall is caught when an alarm came within `window` rows of it."""
        n = len(self.correct)
        if n < window or len(self.chance) != n:
            return {"window": window, "max_drop": max_drop, "rows": 0}
        estimated, realised = _rolling(self.chance, window), _rolling(self.correct, window)
        versions = self.versions[window - 1 :]
        whole = versions == self.versions[: n - window + 1]  # one version served the whole window
        errors = (estimated - realised)[whole]
        alarms: list[int] = []
        falls: list[int] = []
        current, by_estimate, by_labels = -1, FloorAlarm(), FloorAlarm()
        est, real, served = estimated.tolist(), realised.tolist(), versions.tolist()
        for i in np.flatnonzero(whole).tolist():
            if served[i] != current:  # a new champion: the monitor starts its alarm afresh
                current, by_estimate, by_labels = served[i], FloorAlarm(), FloorAlarm()
                limit = estimate_floor(floor, self.calibrations.get(current), max_drop)
            if limit is None:
                continue
            if by_estimate.fell(est[i], limit):
                alarms.append(i)
            if by_labels.fell(real[i], limit):
                falls.append(i)

        def near(i: int, others: list[int]) -> bool:  # within a window, and by the same version
            return any(abs(i - j) <= window and served[i] == served[j] for j in others)

        confirmed = sum(near(a, falls) for a in alarms)
        caught = sum(near(f, alarms) for f in falls)
        return {
            "window": window,
            "max_drop": max_drop,
            "rows": int(whole.sum()),
            "mean_abs_error": float(np.abs(errors).mean()) if len(errors) else None,
            "bias": float(errors.mean()) if len(errors) else None,
            "alarms": len(alarms),
            "confirmed": confirmed,
            "falls": len(falls),
            "caught": caught,
        }


def _rolling(values: np.ndarray, window: int) -> np.ndarray:
    """Means of every run of `window` consecutive values (the k-th ends at value k + window - 1)."""
    sums = np.cumsum(np.concatenate([[0.0], np.asarray(values, dtype=np.float64)]))
    return (sums[window:] - sums[:-window]) / window


class _Champion:
    """The serving model and its predictions, computed a chunk of rows at a time."""

    def __init__(
        self, estimator: Any, version: int, trained_until: int, X: np.ndarray, calibration: Calibration
    ) -> None:
        self.estimator, self.version, self.trained_until, self.X = estimator, version, trained_until, X
        self.calibration = calibration  # of its top-class probability, on its holdout
        self.start, self.proba = 0, np.empty((0, 0))

    def probabilities(self, rows: slice) -> np.ndarray:
        return self.estimator.predict_proba(self.X[rows])

    def at(self, row: int) -> np.ndarray:
        if not self.start <= row < self.start + len(self.proba):
            self.start = row
            self.proba = self.probabilities(slice(row, row + PREDICT_CHUNK))
        return self.proba[row - self.start]


@dataclass
class Backtest:
    """Replays one history under one spec's policy; `run` gives its `Result`."""

    spec: ModelSpec
    history: History
    delay: Delay = field(default_factory=Delay)
    initial: int = 5_000  # rows the first champion is trained on (not evaluated)
    deploy_rows: int = 0  # rows between a retrain's request and its candidate serving
    name: str = "spec"

    def run(self, progress: Callable[[int], None] | None = None) -> Result:
        """Replay the history (on one thread: OpenMP threads spinning on a busy machine cost more
        than they give to the small fits of a retraining window)."""
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):
            return self._run(progress)

    def _run(self, progress: Callable[[int], None] | None) -> Result:
        started = time.process_time()
        spec, history, n = self.spec, self.history, len(self.history)
        start = min(self.initial, n)
        due = self.delay.due(history)
        arrivals = np.argsort(due, kind="stable")  # rows in the order their labels arrive
        policy = RetrainPolicy(spec)
        estimator, cpu, calibration = self._fit(0, start)
        champion = _Champion(estimator, 1, start, history.X, calibration)
        policy.promoted(1)
        result = Result(
            self.name,
            spec,
            start,
            correct=np.zeros(n - start, dtype=bool),
            p_true=np.zeros(n - start),
            versions=np.zeros(n - start, dtype=np.int32),
            trained_until=np.zeros(n - start, dtype=np.int64),
            train_cpu_s=cpu,
            chance=np.zeros(n - start),
            calibrations={1: calibration},
        )
        labelled = start  # rows [0, labelled) in arrival order have their label (history: at once)
        served_by = np.zeros(n, dtype=np.int32)
        waiting: list[tuple[int, Any, int, Calibration, str]] = []  # (serves from row, its model, command)
        next_version = 2
        for row in range(start, n):
            while labelled < n and due[arrivals[labelled]] <= row:
                j = int(arrivals[labelled])
                labelled += 1
                if j < start:
                    continue
                step = policy.observe(int(served_by[j]), bool(result.correct[j - start]), history.times[j])
                if step.detection is not None:
                    result.detections.append(Detected(row, step.detection))
                result.requests += step.retrains
                for retrain in step.retrains:
                    outcome = self._retrain(retrain, arrivals[:labelled], champion, row, result)
                    if outcome is None:
                        policy.rejected(retrain.command_id)
                    else:
                        waiting.append((row + self.deploy_rows, *outcome, retrain.command_id))
            while waiting and waiting[0][0] <= row:
                _, estimator, until, calibration, command_id = waiting.pop(0)
                champion = _Champion(estimator, next_version, until, history.X, calibration)
                result.calibrations[next_version] = calibration
                policy.promoted(next_version, command_id)
                next_version += 1
            proba = champion.at(row)
            classes = fitting.classes_of(champion.estimator)
            truth = str(history.y[row])
            picked = int(np.argmax(proba))
            result.correct[row - start] = str(classes[picked]) == truth
            result.p_true[row - start] = next(
                (p for c, p in zip(classes, proba, strict=True) if str(c) == truth), 0.0
            )
            result.chance[row - start] = chance_of(float(proba[picked]), champion.calibration)
            result.versions[row - start] = champion.version
            result.trained_until[row - start] = champion.trained_until
            served_by[row] = champion.version
            if progress is not None and row % 1_000 == 0:
                progress(row)
        result.replay_cpu_s = time.process_time() - started - result.train_cpu_s
        return result

    def _window(
        self, labelled: np.ndarray, since: datetime | None, until: datetime, last_n: int
    ) -> np.ndarray:
        """The rows a `TrainModel` window reads from the training store: labelled rows with event time
        in [since, until), the newest `last_n`, in event-time order (as `RowStore.window`)."""
        rows = np.sort(labelled)
        times = self.history.times
        first = 0 if since is None else bisect.bisect_left(times, since)
        rows = rows[(rows >= first) & (rows < bisect.bisect_left(times, until))]
        return rows[-last_n:]

    def _retrain(
        self, retrain: Any, labelled: np.ndarray, champion: _Champion, row: int, result: Result
    ) -> tuple[Any, int, Calibration] | None:
        """Train and gate a candidate; the estimator, its newest row and its calibration when
        blessed and promoted."""
        spec = self.spec
        rows = self._window(labelled, retrain.since, retrain.until, retrain.last_n)
        t0 = time.process_time()
        outcome = self._candidate(rows, champion)
        cpu = time.process_time() - t0
        result.train_cpu_s += cpu
        if isinstance(outcome, str):
            result.trainings.append(Training(row, retrain.reason, len(rows), False, outcome, cpu))
            return None
        estimator, evidence, calibration = outcome
        decision = gate(spec, evidence)
        promoted = decision.blessed and spec.gate.auto_promote
        result.trainings.append(Training(row, retrain.reason, len(rows), promoted, decision.reason, cpu))
        return (estimator, int(rows[-1]) + 1, calibration) if promoted else None

    def _candidate(self, rows: np.ndarray, champion: _Champion) -> tuple[Any, Evidence, Calibration] | str:
        """As the trainer: fit on the window's older rows, score it and the champion on the newest."""
        spec, history = self.spec, self.history
        if len(rows) < spec.training.min_rows:
            return f"insufficient_data: {len(rows)} rows"
        X, y = history.X[rows], [history.y[i] for i in rows]
        cut = fitting.holdout_start(len(rows), spec.training.holdout_fraction, spec.gate.min_holdout_rows)
        if len({str(v) for v in y[:cut]}) < 2:
            return "insufficient_data: fewer than two classes in the training rows"
        candidate = fitting.train_candidate(spec, X, y)
        incumbent = fitting.align_columns(
            champion.estimator.predict_proba(X[cut:]),
            fitting.classes_of(champion.estimator),
            candidate.classes,
        )
        unseen = rows[cut:] >= champion.trained_until
        scores, champion_scores, comparison = fitting.evaluate(
            spec.gate.metric, y[cut:], candidate.proba, incumbent, candidate.classes, unseen
        )
        evidence = Evidence(scores, champion_scores, champion.version, len(rows) - cut, comparison)
        calibration = fitting.holdout_calibration(candidate.proba, candidate.classes, y[cut:])
        if spec.training.refit_with_holdout:
            return fitting.refit(spec, candidate, X, y), evidence, calibration
        return candidate.estimator, evidence, calibration

    def _fit(self, first: int, end: int) -> tuple[Any, float, Calibration]:
        """The first champion, as the trainer makes it from the same rows, and its calibration."""
        t0 = time.process_time()
        X, y = self.history.X[first:end], list(self.history.y[first:end])
        candidate = fitting.train_candidate(self.spec, X, y)
        estimator = (
            fitting.refit(self.spec, candidate, X, y) if self.spec.training.refit_with_holdout else None
        )
        calibration = fitting.holdout_calibration(candidate.proba, candidate.classes, y[candidate.cut :])
        return estimator or candidate.estimator, time.process_time() - t0, calibration


def variant(spec: ModelSpec, **sections: dict[str, Any]) -> ModelSpec:
    """The spec with some fields of some sections changed (validated like a spec file)."""
    data = spec.model_dump()
    for section, fields in sections.items():
        data[section] = {**data[section], **fields}
    return ModelSpec.model_validate(data, context={"build": frozenset()})


def grid(spec: ModelSpec, served: int) -> dict[str, ModelSpec]:
    """The policies a backtest compares by default, over `served` rows:

    - `spec`: the spec's own policy; `never`: no retraining;
    - `periodic/N/plain`: every N labelled rows on the newest W, all rows weighted alike, without
      refitting on the holdout (the plain schedule), and `periodic/N`: the same with the spec's
      training and weighting, for schedules of
      about 5, 10 and 20 retrains;
    - `drift`, `drift/last`: on detections only, reading rows since the change point or the newest W;
    - `both/N...`: periodic and drift (about 20 scheduled retrains), with the window `last`,
      recency weighting on or off (whichever the spec does not do), window choices, a window four
      times as wide (also periodic only), the bare-margin gate, no refit, and other detectors.
    """
    rules = spec.retrain
    out = {"spec": spec, "never": variant(spec, retrain={"trigger": "none"})}
    for retrains in (5, 10, 20):
        every = max(100, served // retrains)
        periodic = {"trigger": "periodic", "every_rows": every, "every_s": None, "window": "last"}
        plain = {**periodic, "recency_half_life_rows": None, "window_choices": None}
        out[f"periodic/{every}/plain"] = variant(spec, retrain=plain, training={"refit_with_holdout": False})
        out[f"periodic/{every}"] = variant(spec, retrain=periodic)
    out["drift"] = variant(spec, retrain={"trigger": "drift", "window": "since_change"})
    out["drift/last"] = variant(spec, retrain={"trigger": "drift", "window": "last"})
    every = max(100, served // 20)
    both = {"trigger": "both", "every_rows": every, "every_s": None, "window": "since_change"}
    out[f"both/{every}"] = variant(spec, retrain=both)
    out[f"both/{every}/last"] = variant(spec, retrain={**both, "window": "last"})
    if rules.recency_half_life_rows is None:
        half_life = max(1, rules.window_rows // 2)
        out[f"both/{every}/recency"] = variant(spec, retrain={**both, "recency_half_life_rows": half_life})
    else:
        out[f"both/{every}/no-recency"] = variant(spec, retrain={**both, "recency_half_life_rows": None})
    w = rules.window_rows
    choices = sorted({max(spec.training.min_rows, w // k) for k in (8, 4, 2, 1)})
    out[f"both/{every}/window-choices"] = variant(spec, retrain={**both, "window_choices": choices})
    wide = min(4 * w, spec.training.window_rows)
    if wide > w:  # on a stream that barely drifts, more rows beat newer ones
        wide_half_life = (
            None if rules.recency_half_life_rows is None else rules.recency_half_life_rows * wide // w
        )
        widened = {**both, "window_rows": wide, "recency_half_life_rows": wide_half_life}
        out[f"periodic/{every}/window-{wide}"] = variant(
            spec, retrain={**widened, "trigger": "periodic", "window": "last"}
        )
        out[f"both/{every}/window-{wide}"] = variant(spec, retrain=widened)
    out[f"both/{every}/margin-gate"] = variant(spec, retrain=both, gate={"confidence": None})
    out[f"both/{every}/no-refit"] = variant(spec, retrain=both, training={"refit_with_holdout": False})
    out[f"both/{every}/adwin-0.02"] = variant(
        spec, retrain=both, drift={"detector": "adwin", "params": {"delta": 0.02}, "warning_params": None}
    )
    out[f"both/{every}/page_hinkley"] = variant(
        spec, retrain=both, drift={"detector": "page_hinkley", "params": {}, "warning_params": None}
    )
    return out


def run_grid(
    spec: ModelSpec,
    history: History,
    delay: Delay,
    initial: int,
    policies: dict[str, ModelSpec] | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> list[Result]:
    """Every policy of the grid (or `policies`) over the same history."""
    chosen = policies or grid(spec, len(history) - initial)
    results = []
    for name, policy_spec in chosen.items():
        tick = None if progress is None else (lambda row, name=name: progress(name, row))
        results.append(Backtest(policy_spec, history, delay, initial, name=name).run(tick))
    return results


def recommend(results: Sequence[Result], max_retrains: int | None = None, tie: float = 0.0025) -> Result:
    """The best policy by prequential accuracy within the retrain budget; among policies within
    `tie` of the best, the one that trains least."""
    allowed = [r for r in results if max_retrains is None or r.retrains <= max_retrains] or list(results)
    best = max(r.accuracy for r in allowed)
    return min((r for r in allowed if r.accuracy >= best - tie), key=lambda r: (r.retrains, -r.accuracy))


POLICY_SECTIONS = ("retrain", "drift", "gate", "training")


def policy_changes(chosen: ModelSpec, base: ModelSpec) -> dict[str, dict[str, Any]]:
    """The fields of the policy's sections (retrain, drift, gate, training) where `chosen` differs
    from `base`: what to change in the spec to run the chosen policy."""
    changes = {}
    for section in POLICY_SECTIONS:
        new, old = getattr(chosen, section).model_dump(), getattr(base, section).model_dump()
        changed = {k: v for k, v in new.items() if v != old[k]}
        if changed:
            changes[section] = changed
    return changes


def spec_sections(chosen: ModelSpec, base: ModelSpec) -> str:
    """`policy_changes` as YAML, ready to paste into the spec file."""
    import yaml

    changes = policy_changes(chosen, base)
    if not changes:
        return "# the spec's own policy: nothing to change\n"
    return yaml.safe_dump(changes, sort_keys=False, default_flow_style=False)
