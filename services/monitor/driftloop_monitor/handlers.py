"""Monitor use cases: join feedback with predictions, track quality, detect drift, ask for retraining."""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, TypeVar

import orjson
from aiokafka import ConsumerRecord
from prometheus_client import Counter, Gauge, Histogram
from pydantic import BaseModel

from driftloop.checkpoint import Checkpoint, Memo
from driftloop.contracts import (
    AccuracyEstimate,
    DriftDetected,
    Feedback,
    InvalidInput,
    LifecycleEvent,
    ModelAwaitingApproval,
    ModelPromoted,
    ModelRejected,
    ModelRolledBack,
    ModelTrainingFailed,
    Observation,
    PredictionRequest,
    PredictionResult,
    TrainModel,
    plain_feedback,
    plain_request,
    plain_result,
    read,
    read_exact,
)
from driftloop.estimation import Calibration, Estimate
from driftloop.fastpath import Handled, Outbox
from driftloop.kafka import triage
from driftloop.metrics import MODEL_VERSION, Tally
from driftloop.policy import Detection, Retrain
from driftloop.settings import Topics
from driftloop.slices import Gap, SliceBook
from driftloop.spec import ModelSpec
from driftloop.specbook import SpecBook
from driftloop_monitor.domain import Joins, Shift, Watch, labelled_row_id

SERVICE = "monitor"
OTHER = "_other"  # joins of models without a spec are booked here (bounded label sets)
_M = TypeVar("_M", PredictionRequest, PredictionResult)
log = logging.getLogger(__name__)

LABELLED = Counter(
    "driftloop_monitor_labelled_total",
    "Predictions joined with ground truth, by model, version and outcome (correct, wrong).",
    ["model", "version", "outcome"],
)
ACCURACY = Gauge("driftloop_monitor_accuracy", "Rolling accuracy by model and version.", ["model", "version"])
LOG_LOSS = Gauge("driftloop_monitor_log_loss", "Rolling log loss by model and version.", ["model", "version"])
PREDICTED = Counter(
    "driftloop_monitor_predictions_total",
    "Results seen, by model, version and predicted class.",
    ["model", "version", "predicted"],
)
LABEL_DELAY = Histogram(
    "driftloop_monitor_label_delay_seconds",
    "Seconds from request to its feedback, by model.",
    ["model"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
)
DETECTIONS = Counter(
    "driftloop_monitor_drift_detections_total",
    "Drift detections, by model, detector and kind.",
    ["model", "detector", "kind"],
)
RETRAINS = Counter(
    "driftloop_monitor_retrain_requests_total",
    "TrainModel commands sent, by model and reason (drift, periodic, retry, below_floor).",
    ["model", "reason"],
)
FEATURE_DRIFT = Gauge(
    "driftloop_monitor_feature_drift",
    "Distance of each feature's recent requests from the champion's training distribution, by "
    "statistic (psi, ks, wasserstein in reference standard deviations).",
    ["model", "feature", "statistic"],
)
PREDICTION_DRIFT = Gauge(
    "driftloop_monitor_prediction_psi",
    "PSI of the champion's recent predicted-class shares against its shares on the training holdout.",
    ["model"],
)
WARNINGS = Counter(
    "driftloop_monitor_drift_warnings_total",
    "Concept-drift warnings (the sensitive twin detector fired; no retrain), by model and detector.",
    ["model", "detector"],
)
DRIFT_STATE = Gauge(
    "driftloop_monitor_drift_state",
    "Per model: 0 watching, 1 warming up on a new champion, 2 warning, 3 drift detected and retrain "
    "requested.",
    ["model"],
)
ACCURACY_FLOOR = Gauge(
    "driftloop_monitor_accuracy_floor",
    "The spec's gate floor for accuracy-like metrics, for the accuracy-below-floor alert.",
    ["model"],
)
ESTIMATED = Gauge(
    "driftloop_monitor_estimated_accuracy",
    "Accuracy estimated from the recent predictions' probabilities (through the version's holdout "
    "calibration), before labels, by model and version.",
    ["model", "version"],
)
ESTIMATED_LOW = Gauge(
    "driftloop_monitor_estimated_accuracy_low",
    "Low end of the band the realised accuracy of those predictions should fall in.",
    ["model", "version"],
)
ESTIMATED_HIGH = Gauge(
    "driftloop_monitor_estimated_accuracy_high",
    "High end of that band.",
    ["model", "version"],
)
ESTIMATE_ERROR = Gauge(
    "driftloop_monitor_estimate_error",
    "Estimated minus realised accuracy over the last labelled predictions (how far to trust the "
    "estimate), by model and version.",
    ["model", "version"],
)
ESTIMATE_FLOOR = Gauge(
    "driftloop_monitor_estimate_floor",
    "The estimated accuracy a version is held to (the spec's drift.estimate.floor or accuracy gate "
    "floor, or the version's holdout accuracy less drift.estimate.max_drop, whichever is higher), "
    "for the estimate-below-floor alert.",
    ["model", "version"],
)
VERSIONED_GAUGES = (
    ACCURACY,
    LOG_LOSS,
    ESTIMATED,
    ESTIMATED_LOW,
    ESTIMATED_HIGH,
    ESTIMATE_ERROR,
    ESTIMATE_FLOOR,
)
SLICE_PREDICTIONS = Counter(
    "driftloop_monitor_slice_predictions_total",
    "Champion answers by slice (spec `slices`: an input and one of its top values, `other`, `missing` "
    "or `unknown`).",
    ["model", "input", "slice"],
)
SLICE_ACCURACY = Gauge(
    "driftloop_monitor_slice_accuracy",
    "Realised accuracy of the champion's recent labelled answers, by slice.",
    ["model", "input", "slice"],
)
SLICE_ESTIMATED = Gauge(
    "driftloop_monitor_slice_estimated_accuracy",
    "Accuracy of the champion's recent answers estimated before labels, by slice.",
    ["model", "input", "slice"],
)
SLICE_POSITIVE_RATE = Gauge(
    "driftloop_monitor_slice_positive_rate",
    "Share of the champion's recent answers that are the positive class, by slice.",
    ["model", "input", "slice"],
)
SLICE_DROP = Gauge(
    "driftloop_monitor_slice_accuracy_drop",
    "Accuracy a slice lost since its first full window under this champion (its drift score).",
    ["model", "input", "slice"],
)
SLICE_GAP = Gauge(
    "driftloop_monitor_slice_gap",
    "Across the slices of an input with enough rows: highest minus lowest accuracy (measure=accuracy) "
    "or positive rate (positive_rate), and lowest over highest positive rate (positive_rate_ratio).",
    ["model", "input", "measure"],
)
SLICE_GAP_LIMIT = Gauge(
    "driftloop_monitor_slice_gap_limit",
    "The spec's largest allowed gap between slices (slices.max_accuracy_gap, max_positive_rate_gap).",
    ["model", "measure"],
)
SLICE_GAUGES = (SLICE_ACCURACY, SLICE_ESTIMATED, SLICE_POSITIVE_RATE, SLICE_DROP)
ESTIMATOR = "cbpe"  # confidence-based performance estimation: the detector named by estimate events
UNLABELLED = Counter(
    "driftloop_monitor_unlabelled_total",
    "Requests whose label did not arrive within the label window (join TTL), by model.",
    ["model"],
)
EXPIRED = Counter(
    "driftloop_monitor_labels_expired_total",
    "Labels that found no request to join within the grace period (too late, or unknown), by model.",
    ["model"],
)


MEMORY = 200_000  # outcomes kept for records that may come again (bounded: revoked partitions)


class Part(NamedTuple):
    request_id: str
    name: str  # request, result or feedback
    body: bytes
    model: str
    message: PredictionRequest | PredictionResult | None


Sends = list[tuple[str, BaseModel]]  # (topic, message)


def moment(ms: int | float) -> datetime:
    """A record timestamp (ms since the epoch) as a UTC time; `InvalidInput` when no date holds it.

    >>> moment(0).isoformat()
    '1970-01-01T00:00:00+00:00'
    """
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise InvalidInput("timestamp_out_of_range", f"record timestamp {ms!r:.30} ms is not a date") from exc


class Watches(Mapping[str, Watch]):
    """A `Watch` per model in force, made when a model is first looked at and made again, on the
    event that placed its champion, when the spec it watches with changes (its detectors start
    afresh): the spec the champion was trained with, as inference reads its requests, else the one
    in force."""

    def __init__(self, specs: Mapping[str, ModelSpec], quality_window: int) -> None:
        self.specs = specs
        self.quality_window = quality_window
        self.placed: dict[str, ModelPromoted | ModelRolledBack] = {}  # the champion's event, by model
        self.calibrations: dict[str, dict[int, Calibration | None]] = {}  # by model and version
        self._held: dict[str, Watch] = {}

    def _spec(self, model: str) -> ModelSpec:
        current = self.specs[model]  # KeyError once retired: no longer watched
        placed = self.placed.get(model)
        if placed is not None and placed.spec_version and isinstance(self.specs, SpecBook):
            return self.specs.at(model, placed.spec_version) or current
        return current

    def __getitem__(self, model: str) -> Watch:
        spec = self._spec(model)
        watch = self._held.get(model)
        if watch is None or watch.spec is not spec:
            calibrations = self.calibrations.setdefault(model, {})
            watch = self._held[model] = Watch(spec, self.quality_window, calibrations)
            _declare(model, spec)
            if (event := self.placed.get(model)) is not None:
                watch.promoted(
                    event.version, event.reference_stats, event.prediction_shares, event.command_id
                )
        return watch

    def __iter__(self) -> Iterator[str]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)


def _declare(model: str, spec: ModelSpec) -> None:
    """A model's series, so rates and alerts see its first event (counters exist at 0)."""
    if spec.gate.metric != "log_loss":
        ACCURACY_FLOOR.labels(model).set(spec.gate.floor)
    DETECTIONS.labels(model, ESTIMATOR, "estimate")
    if spec.slices.by:
        DETECTIONS.labels(model, "slice_gap", "slice")
        for measure, limit in (
            ("accuracy", spec.slices.max_accuracy_gap),
            ("positive_rate", spec.slices.max_positive_rate_gap),
        ):
            if limit is not None:
                SLICE_GAP_LIMIT.labels(model, measure).set(limit)
    DETECTIONS.labels(model, spec.drift.detector, "concept")
    DETECTIONS.labels(model, spec.drift.covariate.statistic, "covariate")
    DETECTIONS.labels(model, "psi", "prediction")
    WARNINGS.labels(model, spec.drift.detector)
    for reason in ("drift", "periodic", "retry", "below_floor"):
        RETRAINS.labels(model, reason)
    UNLABELLED.labels(model)
    EXPIRED.labels(model)


class Monitor:
    """Joins, quality and drift of every model's champion. What it learned from a record is kept
    until that record's batch is committed (a memo of its loop's `checkpoint`, by part and
    request): a batch handled again (a retry, a rewind, the search for a bad record) sends the same
    outputs again, teaches the detectors once, and its counts are applied once, when a batch
    holding it commits."""

    def __init__(
        self,
        specs: Mapping[str, ModelSpec],
        joins: Joins,
        topics: Topics,
        quality_window: int,
    ) -> None:
        self.specs = specs
        self.joins = joins
        self.topics = topics
        self.watches = Watches(specs, quality_window)  # made again when a spec changes
        self.scored: set[tuple[str, int]] = set()  # (model, version) whose quality moved this batch
        self.sliced: dict[str, str] = {}  # models whose slices moved this batch: the last request
        self.batch_slices: dict[str, dict[str, str]] = {}  # this batch's requests' slice values
        self.checkpoint = Checkpoint(memo_limit=MEMORY)  # what each record taught, until committed
        for name in specs:
            self.watches.get(name)

    async def on_lifecycle(self, event: LifecycleEvent) -> None:
        watch = self.watches.get(event.model)
        if watch is None:
            return
        if isinstance(event, ModelRejected | ModelTrainingFailed) and event.command_id is not None:
            watch.policy.rejected(event.command_id)  # a retrain it asked for came to nothing
        if isinstance(event, ModelPromoted | ModelRolledBack | ModelAwaitingApproval):
            table = event.calibration
            watch.calibrated(
                event.version, None if table is None else Calibration.from_dict(table.model_dump())
            )
        if not isinstance(event, ModelPromoted | ModelRolledBack) or watch.champion == event.version:
            return
        self.watches.placed[event.model] = event
        for name, value in watch.slices.stats if watch.slices is not None else ():  # the old champion's
            for gauge in SLICE_GAUGES:
                with contextlib.suppress(KeyError):
                    gauge.remove(event.model, name, value)
        retired = watch.promoted(
            event.version, event.reference_stats, event.prediction_shares, event.command_id
        )
        MODEL_VERSION.labels(SERVICE, event.model).set(event.version)
        DRIFT_STATE.labels(event.model).set(watch.state)
        if retired is not None:  # its history stays in Prometheus; stop exporting stale values
            for gauge in VERSIONED_GAUGES:
                with contextlib.suppress(KeyError):
                    gauge.remove(event.model, str(retired))

    def _part(self, record: ConsumerRecord) -> Part:
        """A request, result or feedback as a join part (with the parsed request or result)."""
        topic = record.topic
        if topic == self.topics.predictions_requests:
            request = read(PredictionRequest, record.value, plain_request)
            at = moment(record.timestamp)  # its time becomes the labelled row's event time
            stored = {"features": request.features, "entity_id": request.entity_id, "ts": record.timestamp}
            watch = self.watches.get(request.model)
            if watch is not None and watch.slicer is not None:  # kept with the join for its label
                stored["slices"] = self.batch_slices[request.request_id] = watch.slicer(request.features, at)
            body = orjson.dumps(stored)
            return Part(request.request_id, "request", body, self._book(request.model), request)
        if topic == self.topics.predictions_results:
            result, exact = read_exact(PredictionResult, record.value, plain_result)  # `_learn` trusts it
            return Part(result.request_id, "result", exact, self._book(result.model), result)
        feedback = read(Feedback, record.value, plain_feedback)
        if feedback.model not in self.specs:
            raise InvalidInput("unknown_model", f"no spec for model {feedback.model!r:.80}")
        if self.watches[feedback.model].spec.label_of(feedback.label) is None:
            classes = self.watches[feedback.model].spec.label.classes
            raise InvalidInput("unknown_label", f"label {feedback.label!r:.40} is not one of {classes}")
        body = orjson.dumps({"label": feedback.label, "ts": record.timestamp})
        return Part(feedback.request_id, "feedback", body, self._book(feedback.model), None)

    def _book(self, model: str) -> str:
        """The model a join is booked under: a spec's name, or one bucket for anything else."""
        return model if model in self.specs else OTHER

    async def sweep(self) -> None:
        """Count requests that were never labelled and labels that came too late (on a timer)."""
        swept = await self.joins.sweep([*self.specs, OTHER], int(time.time() * 1000))
        for model, (unlabelled, expired) in swept.items():
            UNLABELLED.labels(model).inc(unlabelled)
            EXPIRED.labels(model).inc(expired)
            if expired:
                log.warning("%s labels for %s came after their request's label window", expired, model)

    async def handle(self, records: Sequence[ConsumerRecord]) -> Handled:
        """Join the batch's parts; learn from new requests, results and complete joins (in the
        order the predictions were made); send labelled rows, drift events and retrain commands,
        then mark the joins done (a crash in between re-sends them: consumers are idempotent by
        event and command id)."""
        self.scored.clear()  # this batch's, not those of one that failed half-way
        self.sliced.clear()
        self.batch_slices.clear()
        parts, dead = triage(SERVICE, records, self._part)
        out = Outbox(self.topics.events_dlq)
        out.dead_letters(dead)
        complete = await self.joins.put(
            [(p.request_id, p.name, p.body, p.model) for p in parts], int(time.time() * 1000)
        )
        requests = [p.message for p in parts if isinstance(p.message, PredictionRequest)]
        results = [p.message for p in parts if isinstance(p.message, PredictionResult)]
        memos = self._learn_once("request", requests, self._covariate_shifts)
        memos += self._learn_once("result", results, self._prediction_shifts)
        # Outcomes reach the detectors in the order the predictions were made, not in the order
        # the partitions of three topics happened to complete the joins.
        requested = {request_id: orjson.loads(fields["request"]) for request_id, fields in complete.items()}
        recall, keep = self.checkpoint.recall, self.checkpoint.keep
        for request_id in sorted(complete, key=lambda rid: requested[rid]["ts"]):
            key = ("join", request_id)
            memo = recall(key)
            if memo is None:
                tally = Tally()
                memo = keep(
                    [key], self._learn(request_id, complete[request_id], requested[request_id], tally), tally
                )
            memos.append(memo)
        self._export_quality()
        gaps, flags = self._slice_gaps(out.tally)
        # what a memo sends goes out with every batch holding it until one of them commits
        sends = [
            sent for memo in {id(m): m for m in memos}.values() if not memo.committed for sent in memo.value
        ]
        sends += gaps
        for topic in (self.topics.events_raw, self.topics.monitor_drift, self.topics.training_requests):
            out.publish(topic, [message for to, message in sends if to == topic])
        done = list(complete)

        async def then() -> None:
            for book, flagged in flags:  # judged once what they said is sent
                book.flagged = flagged
            await self.joins.mark_done(done)

        return out.handled(then=then)

    def _export_quality(self) -> None:
        """The rolling quality of every version that got outcomes in this batch, retired ones aside."""
        for model, version in self.scored:
            quality = self.watches[model].exported_quality(version)
            if quality is None:
                continue
            ACCURACY.labels(model, str(version)).set(quality.accuracy)
            if len(quality.losses):
                LOG_LOSS.labels(model, str(version)).set(quality.log_loss)
            if (error := quality.estimate_error) is not None:
                ESTIMATE_ERROR.labels(model, str(version)).set(error)

    def _sliced(self, watch: Watch, keys: Sequence[tuple[str, str]], request_id: str, tally: Tally) -> None:
        """Count a champion answer in its slices."""
        for name, value in keys:
            tally.inc(SLICE_PREDICTIONS.labels(watch.spec.name, name, value))
        if keys:
            self.sliced[watch.spec.name] = request_id

    def _slice_gaps(self, tally: Tally) -> tuple[Sends, list[tuple[SliceBook, set[str]]]]:
        """Export the slices that moved this batch and their gaps; a `DriftDetected(kind="slice")`
        per input whose gaps just went past the spec's limits, and the flags to keep once sent."""
        sends: Sends = []
        flags = []
        for model, request_id in self.sliced.items():
            watch = self.watches[model]
            book = watch.slices
            if book is None:
                continue
            for name, value in book.pruned:  # slices that left their input's top
                for gauge in SLICE_GAUGES:
                    with contextlib.suppress(KeyError):
                        gauge.remove(model, name, value)
            book.pruned.clear()
            for (name, value), stats in book.stats.items():
                labels = (model, name, value)
                for gauge, figure in (
                    (SLICE_ACCURACY, stats.accuracy),
                    (SLICE_ESTIMATED, stats.estimated),
                    (SLICE_POSITIVE_RATE, stats.positive_rate),
                    (SLICE_DROP, stats.drop),
                ):
                    if figure is not None:
                        gauge.labels(*labels).set(figure)
            for name in book.tops:
                gap = book.gap(name)
                for measure, figure in (
                    ("accuracy", gap.accuracy_gap),
                    ("positive_rate", gap.positive_rate_gap),
                    ("positive_rate_ratio", gap.positive_rate_ratio),
                ):
                    if figure is not None:
                        SLICE_GAP.labels(model, name, measure).set(figure)
            flagged, new = book.flags(book.tops)
            flags.append((book, flagged))
            for name, gap in new:
                event = self._slice_event(watch, name, gap, request_id, tally)
                sends.append((self.topics.monitor_drift, event))
        return sends, flags

    def _slice_event(self, watch: Watch, name: str, gap: Gap, request_id: str, tally: Tally) -> DriftDetected:
        model = watch.spec.name
        tally.inc(DETECTIONS.labels(model, "slice_gap", "slice"))
        behind = gap.worst if gap.worst is not None else gap.lowest_positive
        statistic = gap.accuracy_gap if gap.worst is not None else gap.positive_rate_gap
        log.warning("slice gap on %s: %s=%s behind by %.3f", model, name, behind, statistic or 0.0)
        stats = watch.slices.stats.get((name, behind or "")) if watch.slices is not None else None
        return DriftDetected(
            model=model,
            version=watch.champion or 0,
            detector="slice_gap",
            kind="slice",
            samples_seen=0 if stats is None else stats.volume,
            change_point_sample=0,
            change_point_time=datetime.now(UTC),
            detected_request_id=request_id,
            feature=name,
            segment=behind,
            statistic=statistic,
            estimate=_estimate(watch),
        )

    def _learn_once(self, part: str, messages: Sequence[_M], learn: Any) -> list[Memo]:
        """Learn from the requests (or results) not learned from before, together (one memo for
        them all); the memos of every one."""
        memos, new = [], {}
        for key, message in {(part, m.request_id): m for m in messages}.items():  # a repeat learns once
            memo = self.checkpoint.recall(key)
            if memo is None:
                new[key] = message
            else:
                memos.append(memo)
        if new:
            tally = Tally()
            memos.append(self.checkpoint.keep(new, learn(list(new.values()), tally), tally))
        return memos

    def _shift_event(
        self,
        model: str,
        detector: str,
        kind: Literal["covariate", "prediction", "estimate"],
        shift: Shift,
        request_id: str,
        window: int,
        tally: Tally,
    ) -> tuple[str, DriftDetected]:
        tally.inc(DETECTIONS.labels(model, detector, kind))
        log.warning("%s drift on %s: %s %s %.3f", kind, model, shift.name, detector, shift.statistic)
        return self.topics.monitor_drift, DriftDetected(
            model=model,
            version=self.watches[model].champion or 0,
            detector=detector,
            kind=kind,
            samples_seen=shift.samples_seen,
            change_point_sample=max(0, shift.samples_seen - window),
            change_point_time=datetime.now(UTC),
            detected_request_id=request_id,
            feature=shift.name if kind == "covariate" else None,
            statistic=shift.statistic,
            estimate=_estimate(self.watches[model]),
        )

    def _covariate_shifts(self, requests: Sequence[PredictionRequest], tally: Tally) -> Sends:
        """Feed the champions' covariate monitors with the batch's request features."""
        events: Sends = []
        for model, batch in _by_model(requests, self.watches).items():
            watch = self.watches[model]
            for request in batch:  # an answer that came before its request is counted now
                values = self.batch_slices.get(request.request_id)
                if values is not None and (answer := watch.requested(request.request_id, values)) is not None:
                    self._sliced(watch, watch.slice_served(values, *answer), request.request_id, tally)
            monitor = watch.covariate
            if monitor is None:  # no champion yet
                continue
            X, valid, _ = watch.features.encode_many([r.features for r in batch])
            statistic = monitor.spec.statistic
            last_id = batch[valid[-1]].request_id if valid else batch[-1].request_id
            for shift in monitor.update(X):  # the encoded rows of the valid requests only
                events.append(
                    self._shift_event(
                        model, statistic, "covariate", shift, last_id, monitor.spec.window, tally
                    )
                )
            for feature, distances in monitor.last.items():
                for name, value in distances.items():
                    FEATURE_DRIFT.labels(model, feature, name).set(value)
        return events

    def _prediction_shifts(self, results: Sequence[PredictionResult], tally: Tally) -> Sends:
        """Count the results; estimate each version's accuracy from the probabilities it served;
        feed the champions' prediction monitors with the classes they predicted in the batch."""
        predicted = collections.Counter(
            (r.model, r.model_version, r.prediction) for r in results if r.error is None
        )
        for (model, version, prediction), n in predicted.items():
            tally.inc(PREDICTED.labels(model, str(version), str(prediction)), n)
        events: Sends = []
        for model, batch in _by_model(results, self.watches).items():
            watch = self.watches[model]
            events += self._estimates(watch, batch, tally)
            monitor = watch.predictions
            served = [r for r in batch if r.error is None and r.model_version == watch.champion]
            if monitor is None or not served:
                continue
            for shift in monitor.update([str(r.prediction) for r in served]):
                events.append(
                    self._shift_event(
                        model, "psi", "prediction", shift, served[-1].request_id, monitor.spec.window, tally
                    )
                )
            if monitor.last is not None:
                PREDICTION_DRIFT.labels(model).set(monitor.last)
        return events

    def _estimates(self, watch: Watch, results: Sequence[PredictionResult], tally: Tally) -> Sends:
        """Feed each version's estimate with its answers' top-class probabilities and export it; a
        `DriftDetected(kind="estimate")` when the champion's band has just fallen below the floor."""
        model = watch.spec.name
        confidence: dict[int, list[float]] = {}
        last: dict[int, str] = {}
        slicing = watch.slices is not None
        for result in results:
            if result.error is not None:
                continue
            top = max(result.probabilities.values()) if result.probabilities else None
            if top is not None:
                confidence.setdefault(result.model_version, []).append(top)
                last[result.model_version] = result.request_id
            if not slicing or result.model_version != watch.champion:
                continue
            predicted = str(result.prediction)
            if (found := watch.answered(result.request_id, predicted, top)) is not None:
                self._sliced(watch, watch.slice_served(found, predicted, top), result.request_id, tally)
        for version, values in confidence.items():
            watch.served(version, values)
            if (estimate := watch.exported_estimate(version)) is not None:
                labels = (model, str(version))
                ESTIMATED.labels(*labels).set(estimate.accuracy)
                ESTIMATED_LOW.labels(*labels).set(estimate.low)
                ESTIMATED_HIGH.labels(*labels).set(estimate.high)
                if (floor := watch.estimate_floor(version)) is not None:
                    ESTIMATE_FLOOR.labels(*labels).set(floor)
        fell = watch.estimate_fell() if watch.champion in confidence else None
        if fell is None:
            return []
        assert watch.champion is not None
        shift = Shift("estimate", fell.accuracy, watch.estimates[watch.champion].seen)
        window = watch.spec.drift.estimate.window
        return [self._shift_event(model, ESTIMATOR, "estimate", shift, last[watch.champion], window, tally)]

    def _learn(
        self, request_id: str, fields: dict[str, bytes], request: dict[str, Any], tally: Tally
    ) -> Sends:
        """What a complete join teaches: a labelled row for training (unless the model has no spec
        or the request got an error), quality, and the retraining policy's verdict."""
        result = orjson.loads(fields["result"])  # a `PredictionResult`, validated as it came
        model = result["model"]
        watch = self.watches.get(model)
        if watch is None or result.get("error") is not None:
            return []
        feedback = orjson.loads(fields["feedback"])
        label = watch.spec.label_of(feedback["label"])
        if label is None:  # refused when it arrived; a join stored before that check
            return []
        requested_at = moment(request["ts"])
        version = result["model_version"]
        correct = str(result.get("prediction")) == str(label)
        probabilities = result.get("probabilities") or {}
        confidence = max(probabilities.values()) if probabilities else None
        watch.outcome(version, correct, probabilities.get(str(label)), confidence)
        self.scored.add((model, version))
        if watch.slices is not None and watch.slicer is not None and version == watch.champion:
            values = request.get("slices") or watch.slicer(request["features"], requested_at)
            watch.slices.labelled(values, correct)
            self.sliced[model] = request_id
        tally.observe(LABEL_DELAY.labels(model), max(0.0, (feedback["ts"] - request["ts"]) / 1000))
        tally.inc(LABELLED.labels(model, str(version), "correct" if correct else "wrong"))
        observation = Observation.model_construct(  # its parts were validated as they came
            event_id=labelled_row_id(request_id),
            model=model,
            entity_id=request.get("entity_id"),
            features=result.get("features") or request["features"],  # what was served, stored values too
            label=label,
            event_time=requested_at,
        )
        sends: Sends = [(self.topics.events_raw, observation)]
        if watch.champion is not None:  # the policy starts with the first champion
            sends += self._policy_step(watch, version, request_id, correct, requested_at, tally)
        return sends

    def _policy_step(
        self,
        watch: Watch,
        version: int,
        request_id: str,
        correct: bool,
        requested_at: datetime,
        tally: Tally,
    ) -> Sends:
        """Feed one labelled outcome to the model's retraining policy: its detection becomes a
        `DriftDetected`, its retrains `TrainModel` commands."""
        spec, policy = watch.spec, watch.policy
        model = spec.name
        step = watch.step(version, correct, requested_at)
        DRIFT_STATE.labels(model).set(watch.state)
        if step.warned:
            tally.inc(WARNINGS.labels(model, spec.drift.detector))
            log.info("drift warning on %s v%s after %s samples", model, version, policy.detector_samples)
        sends: Sends = []
        if step.detection is not None:
            sends.append(
                (
                    self.topics.monitor_drift,
                    self._drift_event(spec, version, request_id, step.detection, tally),
                )
            )
        for retrain in step.retrains:
            tally.inc(RETRAINS.labels(model, retrain.reason))
            log.info("%s retrain of %s v%s on %s rows", retrain.reason, model, version, retrain.rows)
            sends.append((self.topics.training_requests, _command(model, retrain)))
        return sends

    def _drift_event(
        self, spec: ModelSpec, version: int, request_id: str, detection: Detection, tally: Tally
    ) -> DriftDetected:
        model = spec.name
        tally.inc(DETECTIONS.labels(model, spec.drift.detector, "concept"))
        log.warning(
            "drift on %s v%s after %s samples; change point ~%s (error %.3f -> %.3f)",
            model,
            version,
            detection.samples_seen,
            detection.change_point_sample,
            detection.error_rate_before,
            detection.error_rate_after,
        )
        return DriftDetected(
            model=model,
            version=version,
            detector=spec.drift.detector,
            kind="concept",
            samples_seen=detection.samples_seen,
            change_point_sample=detection.change_point_sample,
            change_point_time=detection.change_point_time,
            detected_request_id=request_id,
            error_rate_before=detection.error_rate_before,
            error_rate_after=detection.error_rate_after,
        )


def _estimate(watch: Watch) -> AccuracyEstimate | None:
    """The champion's estimated accuracy, as events carry it."""
    estimate: Estimate | None = None if watch.champion is None else watch.exported_estimate(watch.champion)
    if estimate is None:
        return None
    return AccuracyEstimate(
        accuracy=estimate.accuracy,
        low=estimate.low,
        high=estimate.high,
        level=estimate.level,
        rows=estimate.rows,
    )


def _command(model: str, retrain: Retrain) -> TrainModel:
    """The `TrainModel` command for a retrain the policy asked for."""
    return TrainModel(
        command_id=retrain.command_id,
        model=model,
        reason=retrain.reason,
        since=retrain.since,
        until=retrain.until,
        last_n=retrain.last_n,
        min_rows=retrain.rows,
    )


def _by_model(messages: Sequence[_M], wanted: Mapping[str, object]) -> dict[str, list[_M]]:
    """Messages of the models in `wanted`, grouped by model, in order."""
    grouped: dict[str, list[_M]] = {}
    for message in messages:
        if message.model in wanted:
            grouped.setdefault(message.model, []).append(message)
    return grouped
