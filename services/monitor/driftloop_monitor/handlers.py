"""Monitor use cases: join feedback with predictions, track quality, detect drift, ask for retraining."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import orjson
from aiokafka import ConsumerRecord
from prometheus_client import Counter, Gauge, Histogram

from driftloop.contracts import (
    DriftDetected,
    Feedback,
    LifecycleEvent,
    ModelPromoted,
    ModelRolledBack,
    Observation,
    PredictionRequest,
    PredictionResult,
    TrainModel,
    parse,
)
from driftloop.features import FeatureSet
from driftloop.kafka import Bus, encode, triage
from driftloop.metrics import MODEL_VERSION, count
from driftloop.settings import Topics
from driftloop.spec import ModelSpec
from driftloop_monitor.adapters import JoinStore
from driftloop_monitor.domain import ConceptDriftMonitor, CovariateMonitor, RollingQuality

SERVICE = "monitor"
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
    "driftloop_monitor_retrain_requests_total", "TrainModel commands sent, by model.", ["model"]
)
FEATURE_PSI = Gauge(
    "driftloop_monitor_feature_psi",
    "PSI of each feature's recent requests against the champion's training deciles.",
    ["model", "feature"],
)
DRIFT_STATE = Gauge(
    "driftloop_monitor_drift_state",
    "Per model: 0 watching, 1 warming up on a new champion, 2 drift detected and retrain requested.",
    ["model"],
)


class Monitor:
    def __init__(
        self,
        specs: Mapping[str, ModelSpec],
        joins: JoinStore,
        bus: Bus,
        topics: Topics,
        quality_window: int,
    ) -> None:
        self.specs = specs
        self.joins = joins
        self.bus = bus
        self.topics = topics
        self.quality_window = quality_window
        self.champion: dict[str, int] = {}
        self.drift: dict[str, ConceptDriftMonitor] = {}
        self.quality: dict[tuple[str, int], RollingQuality] = {}
        self.state: dict[str, int] = {}
        self.covariate: dict[str, CovariateMonitor] = {}
        self.feature_sets = {name: FeatureSet(spec) for name, spec in specs.items()}

    def _set_state(self, model: str, state: int) -> None:
        self.state[model] = state
        DRIFT_STATE.labels(model).set(state)

    async def on_lifecycle(self, event: LifecycleEvent) -> None:
        if not isinstance(event, ModelPromoted | ModelRolledBack) or event.model not in self.specs:
            return
        if self.champion.get(event.model) != event.version:
            self.champion[event.model] = event.version
            self.drift[event.model] = ConceptDriftMonitor(self.specs[event.model].drift)
            self.covariate[event.model] = CovariateMonitor(
                self.feature_sets[event.model].names, event.reference_stats
            )
            MODEL_VERSION.labels(SERVICE, event.model).set(event.version)
            self._set_state(event.model, 1)

    def _part(self, record: ConsumerRecord) -> tuple[str, str, bytes, PredictionRequest | None]:
        """(request_id, part name, body, the request if it is one) of a request, result or feedback."""
        topic = record.topic
        if topic == self.topics.predictions_requests:
            request = parse(PredictionRequest, record.value)
            body = orjson.dumps({"features": request.features, "ts": record.timestamp})
            return request.request_id, "request", body, request
        if topic == self.topics.predictions_results:
            result = parse(PredictionResult, record.value)
            if result.error is None:
                PREDICTED.labels(result.model, str(result.model_version), str(result.prediction)).inc()
            return result.request_id, "result", encode(result), None
        feedback = parse(Feedback, record.value, self.specs)
        body = orjson.dumps({"label": feedback.label, "ts": record.timestamp})
        return feedback.request_id, "feedback", body, None

    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        parts, dead = triage(SERVICE, records, self._part)
        complete = await self.joins.put([(rid, part, body) for rid, part, body, _ in parts])
        observations: list[Observation] = []
        drift_events = self._covariate_shifts([request for *_, request in parts if request is not None])
        commands: list[TrainModel] = []
        for request_id, fields in complete.items():
            outcome = self._learn(request_id, fields)
            if outcome is None:
                continue
            observation, detected = outcome
            observations.append(observation)
            if detected is not None:
                drift_events.append(detected)
                commands.append(self._retrain(detected))
        # Labelled rows and commands go out before the joins are marked done: a crash in between
        # re-sends them (consumers are idempotent by event/command id) rather than losing them.
        await self.bus.publish(self.topics.events_raw, observations)
        await self.bus.publish(self.topics.monitor_drift, drift_events)
        await self.bus.publish(self.topics.training_requests, commands)
        await self.bus.dead_letters(dead)
        await self.joins.mark_done(list(complete))
        count(SERVICE, "predictions", "ok", len(parts))
        count(SERVICE, "predictions", "rejected", len(dead))

    def _covariate_shifts(self, requests: Sequence[PredictionRequest]) -> list[DriftDetected]:
        """Feed the champions' covariate monitors with the batch's request features."""
        by_model: dict[str, list[PredictionRequest]] = {}
        for request in requests:
            if request.model in self.covariate:
                by_model.setdefault(request.model, []).append(request)
        events = []
        for model, batch in by_model.items():
            monitor = self.covariate[model]
            X, valid, _ = self.feature_sets[model].encode_many([r.features for r in batch])
            for shift in monitor.update(X):
                DETECTIONS.labels(model, "psi", "covariate").inc()
                log.warning("covariate drift on %s: %s PSI %.3f", model, shift.feature, shift.statistic)
                events.append(
                    DriftDetected(
                        model=model,
                        version=self.champion[model],
                        detector="psi",
                        kind="covariate",
                        samples_seen=shift.samples_seen,
                        change_point_sample=max(0, shift.samples_seen - len(monitor.window)),
                        change_point_time=datetime.now(UTC),
                        detected_request_id=batch[valid[-1]].request_id if valid else batch[-1].request_id,
                        feature=shift.feature,
                        statistic=shift.statistic,
                    )
                )
            for feature, value in monitor.last.items():
                FEATURE_PSI.labels(model, feature).set(value)
        return events

    def _learn(
        self, request_id: str, fields: dict[str, bytes]
    ) -> tuple[Observation, DriftDetected | None] | None:
        result = PredictionResult.model_validate_json(fields["result"])
        spec = self.specs.get(result.model)
        if spec is None or result.error is not None:
            return None
        request = orjson.loads(fields["request"])
        feedback = orjson.loads(fields["feedback"])
        label = spec.label_of(feedback["label"])
        if label is None:
            return None
        requested_at = datetime.fromtimestamp(request["ts"] / 1000, tz=UTC)
        LABEL_DELAY.labels(result.model).observe(max(0.0, (feedback["ts"] - request["ts"]) / 1000))
        correct = str(result.prediction) == str(label)
        version = result.model_version
        quality = self.quality.setdefault((result.model, version), RollingQuality(self.quality_window))
        p_true = (result.probabilities or {}).get(str(label))
        quality.update(correct, p_true)
        LABELLED.labels(result.model, str(version), "correct" if correct else "wrong").inc()
        ACCURACY.labels(result.model, str(version)).set(quality.accuracy)
        if p_true is not None:
            LOG_LOSS.labels(result.model, str(version)).set(quality.log_loss)
        observation = Observation(
            event_id=f"feedback:{request_id}",
            model=result.model,
            features=request["features"],
            label=label,
            event_time=requested_at,
        )
        detected = None
        monitor = self.drift.get(result.model)
        if monitor is not None and self.champion.get(result.model) == version:
            detection = monitor.update(0 if correct else 1, requested_at, time.monotonic())
            if not monitor.warming_up and self.state.get(result.model) == 1:
                self._set_state(result.model, 0)
            if detection is not None:
                detected = DriftDetected(
                    model=result.model,
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
                DETECTIONS.labels(result.model, spec.drift.detector, "concept").inc()
                self._set_state(result.model, 2)
                log.warning(
                    "drift on %s v%s after %s samples; change point ~%s (error %.3f -> %.3f)",
                    result.model,
                    version,
                    detection.samples_seen,
                    detection.change_point_sample,
                    detection.error_rate_before,
                    detection.error_rate_after,
                )
        return observation, detected

    def _retrain(self, detected: DriftDetected) -> TrainModel:
        RETRAINS.labels(detected.model).inc()
        return TrainModel(
            command_id=f"drift-{detected.model}-v{detected.version}-{detected.samples_seen}",
            model=detected.model,
            reason="drift",
            since=detected.change_point_time,
            min_rows=self.specs[detected.model].drift.retrain_min_rows,
        )
