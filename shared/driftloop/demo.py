"""The closed-loop demo, played as an application would: it replays history, asks for predictions,
sends ground truth back late, and watches the platform detect drift, retrain, gate and swap models.

Everything it learns about the platform comes from topics (`predictions.results`,
`models.lifecycle`, `monitor.drift`); it never calls a service directly.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from driftloop import datasets
from driftloop.client import make_producer, send_all
from driftloop.contracts import (
    LIFECYCLE,
    DriftDetected,
    Feedback,
    ModelPromoted,
    Observation,
    PredictionRequest,
    PredictionResult,
    TrainModel,
)
from driftloop.kafka import GapGuard, tail_from_end
from driftloop.settings import Topics
from driftloop.spec import ModelSpec, load_specs

log = logging.getLogger("driftloop.demo")


@dataclass(frozen=True)
class Scenario:
    """An abrupt drift of a synthetic stream (`datasets.SYNTHETIC`) served to the model of the same
    name: `history` labelled rows of the first concept, `before` requests of it, then the second."""

    dataset: str = "sea"
    concept_before: int = 0
    concept_after: int = 3
    model: str = ""  # the dataset's name unless given
    history: int = 5_000
    before: int = 5_000
    max_after: int = 30_000
    after: int | None = None  # send exactly this many requests after the onset (else: stop once recovered)
    recovery_window: int = 2_000
    rate_per_s: float = 1_000.0
    stationary_rate_per_s: float | None = None  # faster replay of the requests before ...
    steady_requests: int = 2_000  # ... the last ones before the onset, sent at rate_per_s
    feedback_delay_s: float = 0.5
    seed: int = 42
    timeout_s: float = 300.0
    shift: str = ""  # "uncertain": from the onset, only inputs a model of the history is least sure of

    @property
    def model_name(self) -> str:
        return self.model or self.dataset

    @property
    def label(self) -> str:
        shifted = f" {self.shift}" if self.shift else ""
        return f"{self.dataset} {self.concept_before}->{self.concept_after}{shifted}"

    def rate_at(self, index: int) -> float:
        """Requests per second when sending request `index`."""
        if self.stationary_rate_per_s and index < self.before - self.steady_requests:
            return self.stationary_rate_per_s
        return self.rate_per_s


@dataclass
class Served:
    index: int
    version: int
    correct: bool
    confidence: float | None = None  # the top-class probability served


@dataclass
class Timeline:
    started: float = field(default_factory=time.monotonic)
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, time.monotonic() - self.started)


class Answer(NamedTuple):
    """A result as the watcher keeps it."""

    request_id: str
    version: int
    prediction: str
    error: str  # "" when answered
    confidence: float | None  # the top-class probability served


class Watcher:
    """Reads what the platform says: results, lifecycle events, drift events."""

    def __init__(self, consumers: dict[str, AIOKafkaConsumer], topics: Topics) -> None:
        self.consumers = consumers
        self.topics = topics
        self.results: deque[Answer] = deque()
        self.promotions: list[ModelPromoted] = []
        self.drifts: list[DriftDetected] = []
        self.drift_arrivals: list[float] = []  # monotonic time each concept drift event was read
        self.distribution: list[DriftDetected] = []  # covariate, prediction and estimate events
        self.distribution_arrivals: list[float] = []
        self.tasks = [asyncio.create_task(self._read(name)) for name in consumers]

    async def _read(self, name: str) -> None:
        gaps = GapGuard(self.consumers[name], name=f"watcher-{name}")
        await gaps.from_positions()
        while True:
            for records in (await gaps.getmany(timeout_ms=500)).values():
                for record in records:
                    self._take(name, record)

    def _take(self, name: str, record: ConsumerRecord) -> None:
        raw = record.value or b""
        if name == "results":
            result = PredictionResult.model_validate_json(raw)
            probabilities = result.probabilities
            confidence = max(probabilities.values()) if probabilities else None
            self.results.append(
                Answer(
                    result.request_id,
                    result.model_version,
                    str(result.prediction),
                    result.error or "",
                    confidence,
                )
            )
        elif name == "lifecycle":
            event = LIFECYCLE.validate_json(raw)
            if isinstance(event, ModelPromoted):
                self.promotions.append(event)
        else:
            drift = DriftDetected.model_validate_json(raw)
            if drift.kind == "concept":  # the scenario drifts the concept, not the inputs
                self.drifts.append(drift)
                self.drift_arrivals.append(time.monotonic())
            else:
                self.distribution.append(drift)
                self.distribution_arrivals.append(time.monotonic())

    @classmethod
    async def tail(cls, bootstrap: str, topics: Topics) -> Watcher:
        """A watcher of results, lifecycle and drift events from now on."""
        return cls(
            {
                "results": await tail_from_end(bootstrap, topics.predictions_results),
                "lifecycle": await tail_from_end(bootstrap, topics.models_lifecycle),
                "drift": await tail_from_end(bootstrap, topics.monitor_drift),
            },
            topics,
        )

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for consumer in self.consumers.values():
            await consumer.stop()


async def wait_until(condition: Any, timeout: float, what: str) -> None:
    """Poll `condition` every 50 ms; `TimeoutError` naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)


def _progress(text: str) -> None:
    print(f"  {text}", flush=True)


async def run(
    bootstrap: str,
    scenario: Scenario,
    out_dir: Path,
    topics: Topics | None = None,
    models_dir: Path = Path("models"),
    timeline: Timeline | None = None,
) -> dict[str, Any]:
    """Play the scenario against a running stack; return the summary (also written to out_dir).
    `timeline`, when given, is marked as the scenario unfolds (`drift_onset`, ...)."""
    topics = topics or Topics()
    spec = load_specs(models_dir)[scenario.model_name]
    out_dir.mkdir(parents=True, exist_ok=True)
    timeline = timeline or Timeline()
    watcher = await Watcher.tail(bootstrap, topics)
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        return await _play(spec, scenario, out_dir, topics, timeline, watcher, producer)
    finally:
        await producer.stop()
        await watcher.close()


async def _play(
    spec: ModelSpec,
    s: Scenario,
    out_dir: Path,
    topics: Topics,
    timeline: Timeline,
    watcher: Watcher,
    producer: Any,
) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    history = datasets.conform(spec, datasets.synthetic(s.dataset, s.concept_before, s.seed))
    print(
        f"[1/4] replaying {s.history} labelled observations of {s.dataset} concept {s.concept_before} "
        f"to {topics.events_raw}",
        flush=True,
    )
    observations = (
        Observation(event_id=f"{run_id}-h{i}", model=spec.name, features=x, label=y)
        for i, (x, y) in enumerate(itertools.islice(history, s.history))
    )
    sent = 0
    for chunk in iter(lambda: list(itertools.islice(observations, 1000)), []):
        sent += await send_all(producer, topics.events_raw, chunk, key_of=lambda o: o.event_id)
        _progress(f"history {sent}/{s.history}")

    print("[2/4] asking for the first model (TrainModel on training.requests)", flush=True)
    await send_all(
        producer,
        topics.training_requests,
        [
            TrainModel(
                command_id=f"{run_id}-bootstrap",
                model=spec.name,
                reason="bootstrap",
                min_rows=s.history,
            )
        ],
    )
    await wait_until(
        lambda: any(p.model == spec.name for p in watcher.promotions),
        s.timeout_s,
        "the first promotion",
    )
    first = next(p for p in watcher.promotions if p.model == spec.name)
    timeline.mark("first_promotion")
    _progress(f"v{first.version} promoted: {first.reason}")

    print(
        f"[3/4] serving {s.before} requests of concept {s.concept_before}, then concept "
        f"{s.concept_after} until the loop closes (at {s.rate_per_s:.0f} req/s, feedback after "
        f"{s.feedback_delay_s}s)",
        flush=True,
    )
    after = datasets.conform(spec, datasets.synthetic(s.dataset, s.concept_after, s.seed + 2))
    if s.shift == "uncertain":
        history = datasets.conform(spec, datasets.synthetic(s.dataset, s.concept_before, s.seed))
        after = uncertain(spec, list(itertools.islice(history, s.history)), after)
    elif s.shift:
        raise ValueError(f"unknown shift {s.shift!r}; known: uncertain")
    stream = datasets.abrupt(
        datasets.conform(spec, datasets.synthetic(s.dataset, s.concept_before, s.seed + 1)), after, s.before
    )
    served, onset_version = await _traffic(
        s, topics, timeline, watcher, producer, stream, run_id, first.version
    )

    print("[4/4] summary", flush=True)
    summary = _summarise(s, spec, timeline, watcher, served, onset_version, run_id)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    with (out_dir / "answers.csv").open("w", encoding="utf-8") as fh:
        fh.write("request,version,correct,confidence\n")
        fh.writelines(
            f"{r.index},{r.version},{int(r.correct)},{'' if r.confidence is None else r.confidence}\n"
            for r in served
        )
    _plot(s, served, summary, out_dir / "demo.png")
    return summary


UNCERTAIN_SHARE = 0.1  # the "uncertain" shift's inputs: like this share of the history, the least sure


def uncertain(
    spec: ModelSpec,
    history: list[tuple[dict[str, Any], Any]],
    rows: Iterator[tuple[dict[str, Any], Any]],
    share: float = UNCERTAIN_SHARE,
) -> Iterator[tuple[dict[str, Any], Any]]:
    """A covariate shift that hurts, for any dataset: of `rows` (the same concept), only those a
    model of the history (the spec's candidate) is least sure of: a top-class probability at most
    that of the `share` least sure history rows. The concept does not change; the inputs move to
    where it is hardest."""
    from driftloop.features import FeatureSet
    from driftloop.fitting import train_candidate

    features = FeatureSet(spec)

    def encoded(chunk: list[tuple[dict[str, Any], Any]]) -> np.ndarray:
        X, valid, _ = features.encode_many([x for x, _ in chunk])
        assert len(valid) == len(chunk), "the dataset's rows fit its spec"
        return X

    model = train_candidate(spec, encoded(history), [y for _, y in history]).estimator
    cut = float(np.quantile(model.predict_proba(encoded(history)).max(axis=1), share))
    while chunk := list(itertools.islice(rows, 2_000)):
        sure = model.predict_proba(encoded(chunk)).max(axis=1)
        yield from (row for row, p in zip(chunk, sure, strict=True) if p <= cut)


async def _traffic(
    s: Scenario,
    topics: Topics,
    timeline: Timeline,
    watcher: Watcher,
    producer: Any,
    stream: Iterator[tuple[dict[str, Any], Any]],
    run_id: str,
    first_version: int,
) -> tuple[list[Served], int]:
    model = s.model_name
    truth: dict[str, tuple[int, Any]] = {}
    feedback_due: deque[tuple[float, str, Any]] = deque()  # (when, request_id, label)
    served: list[Served] = []
    recovered = 0  # requests after the onset answered by a newer version
    onset_version = first_version  # the version serving when the drift begins
    index = 0
    budget = 0.0
    tick = 0.05
    started = last = last_report = time.monotonic()

    while True:
        now = time.monotonic()
        if index >= s.before:
            timeline.mark("drift_onset")
        stop_sending = (s.after is None and recovered >= s.recovery_window) or index >= s.before + (
            s.after or s.max_after
        )
        budget = 0.0 if stop_sending else min(budget + (now - last) * s.rate_at(index), s.rate_at(index))
        last = now
        if budget >= 1:
            requests = []
            for x, y in itertools.islice(stream, int(budget)):
                request_id = f"{run_id}-r{index}"
                truth[request_id] = (index, y)
                requests.append(PredictionRequest(request_id=request_id, model=model, features=x))
                feedback_due.append((now + s.feedback_delay_s, request_id, y))
                index += 1
            budget -= len(requests)
            await send_all(producer, topics.predictions_requests, requests, key_of=lambda r: r.request_id)
        feedback = []
        while feedback_due and feedback_due[0][0] <= now:
            _, request_id, label = feedback_due.popleft()
            feedback.append(Feedback(request_id=request_id, model=model, label=label))
        await send_all(producer, topics.predictions_feedback, feedback, key_of=lambda f: f.request_id)
        while watcher.results:
            answer = watcher.results.popleft()
            if answer.request_id not in truth:
                continue  # not ours, or a redelivered answer already counted
            i, y = truth.pop(answer.request_id)
            version = answer.version
            served.append(Served(i, version, answer.prediction == str(y), answer.confidence))
            if i < s.before:  # a false alarm may have retrained the model before the drift
                onset_version = max(onset_version, version)
            elif version > onset_version:
                recovered += 1
                timeline.mark("new_version_serving")
        if watcher.drifts:
            timeline.mark("drift_detected")
        if now - last_report >= 2.0:
            last_report = now
            window = served[-500:]
            accuracy = sum(r.correct for r in window) / max(1, len(window))
            versions = sorted({r.version for r in window})
            _progress(
                f"sent {index:>6}  answered {len(served):>6}  rolling accuracy "
                f"{accuracy:.3f}  serving v{versions}  drift events {len(watcher.drifts)}"
            )
        if stop_sending and not feedback_due and not truth:
            break
        if now - started > s.timeout_s:
            raise TimeoutError(f"the loop did not close within {s.timeout_s:.0f}s")
        await asyncio.sleep(tick)
    served.sort(key=lambda r: r.index)
    return served, onset_version


def _accuracy(rows: list[Served]) -> float | None:
    return round(sum(r.correct for r in rows) / len(rows), 4) if rows else None


def _request_index(drift: DriftDetected, run_id: str) -> int | None:
    prefix = f"{run_id}-r"
    if drift.detected_request_id.startswith(prefix):
        return int(drift.detected_request_id[len(prefix) :])
    return None


def _summarise(
    s: Scenario,
    spec: ModelSpec,
    timeline: Timeline,
    watcher: Watcher,
    served: list[Served],
    first_version: int,
    run_id: str,
) -> dict[str, Any]:
    """Figures of one run; `first_version` is the version serving when the drift began."""
    # A detection read before the first drifted request was even sent is a false alarm; the first
    # one read after it is the detection. (Its request index can fall just before the onset when
    # the labels of the last stationary requests complete their joins after some drifted ones.)
    onset = timeline.started + timeline.marks.get("drift_onset", float("inf"))
    concept = [
        (arrived, _request_index(d, run_id), d)
        for arrived, d in zip(watcher.drift_arrivals, watcher.drifts, strict=True)
        if d.model == spec.name
    ]
    false_alarms = [d for arrived, i, d in concept if i is not None and arrived < onset]
    detection, detected_at = next(
        ((d, i) for arrived, i, d in concept if i is not None and arrived >= onset), (None, None)
    )
    estimates = [
        (arrived, d)
        for arrived, d in zip(watcher.distribution_arrivals, watcher.distribution, strict=True)
        if d.model == spec.name and d.kind == "estimate"
    ]
    estimate_alarm = next((arrived for arrived, _ in estimates if arrived >= onset), None)
    after_promotions = [p for p in watcher.promotions if p.version > first_version]
    new_version = after_promotions[0].version if after_promotions else None
    first_new = next((r.index for r in served if new_version and r.version >= new_version), None)
    before = [r for r in served if s.before - s.recovery_window <= r.index < s.before]
    drifted = [r for r in served if r.index >= s.before and r.version == first_version]
    # the newest answers from versions promoted after the onset (a refresh retrain may be among them)
    recovered = [r for r in served if r.index >= s.before and r.version > first_version][-s.recovery_window :]
    marks = timeline.marks
    seconds = {
        "to_first_promotion": marks.get("first_promotion"),
        "onset_to_detection": _diff(marks, "drift_detected", "drift_onset"),
        "onset_to_new_version_serving": _diff(marks, "new_version_serving", "drift_onset"),
        "onset_to_estimate_alarm": None if estimate_alarm is None else estimate_alarm - onset,
        "total": round(time.monotonic() - timeline.started, 2),
    }
    accuracy_before, accuracy_recovered = _accuracy(before), _accuracy(recovered)
    summary: dict[str, Any] = {
        "model": spec.name,
        "drift": s.label,
        "scenario": asdict(s),
        "drift_onset_request": s.before,
        "detection_request": detected_at,
        "detection_delay_samples": None if detected_at is None else detected_at - s.before,
        "estimated_change_point_sample": detection.change_point_sample if detection else None,
        "versions": {
            "initial": first_version,
            "after_drift": new_version,
            "final": max((r.version for r in served), default=None),
            "promotions": [{"version": p.version, "reason": p.reason} for p in watcher.promotions],
        },
        "first_request_served_by_new_version": first_new,
        "accuracy": {
            "before_drift": accuracy_before,
            "after_drift_old_model": _accuracy(drifted),
            "after_recovery": accuracy_recovered,
        },
        "requests": len(served),
        "false_alarms": len(false_alarms),
        "distribution_alarms": {
            kind: sum(d.kind == kind and d.model == spec.name for d in watcher.distribution)
            for kind in ("covariate", "prediction", "estimate")
        },
        "estimate_alarms_before_onset": sum(arrived < onset for arrived, _ in estimates),
        "calibrations": {
            str(p.version): p.calibration.model_dump(mode="json")
            for p in watcher.promotions
            if p.model == spec.name and p.calibration is not None
        },
        "wall_seconds": {k: None if v is None else round(v, 2) for k, v in seconds.items()},
    }
    summary["loop_closed"] = (
        detection is not None
        and new_version is not None
        and accuracy_before is not None
        and accuracy_recovered is not None
        and accuracy_recovered >= accuracy_before - 0.05
    )
    return summary


def _diff(marks: dict[str, float], later: str, earlier: str) -> float | None:
    if later in marks and earlier in marks:
        return marks[later] - marks[earlier]
    return None


def _plot(s: Scenario, served: list[Served], summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = 250
    xs, ys = [], []
    recent: deque[int] = deque(maxlen=window)
    for r in served:
        recent.append(int(r.correct))
        if len(recent) == window:
            xs.append(r.index)
            ys.append(sum(recent) / window)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    ax.plot(xs, ys, color="#1f77b4", lw=1.4, label=f"rolling accuracy ({window} requests)")
    ax.axvline(s.before, color="#d62728", ls="--", label="drift onset")
    if summary["detection_request"] is not None:
        ax.axvline(
            summary["detection_request"],
            color="#ff7f0e",
            ls=":",
            lw=2,
            label="drift detected (monitor)",
        )
    if summary["first_request_served_by_new_version"] is not None:
        ax.axvline(
            summary["first_request_served_by_new_version"],
            color="#2ca02c",
            ls="-.",
            lw=2,
            label=f"v{summary['versions']['after_drift']} serving (retrained, promoted)",
        )
    acc = summary["accuracy"]
    ax.set_title(
        f"driftloop demo: {s.dataset} {s.concept_before}→{s.concept_after}; accuracy "
        f"{acc['before_drift']} before, {acc['after_drift_old_model']} drifted, "
        f"{acc['after_recovery']} recovered"
    )
    ax.set_xlabel("request index")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0.5, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
