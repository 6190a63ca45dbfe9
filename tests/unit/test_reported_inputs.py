"""The single inputs that each stopped a service, at their handler: refused with a reason (a dead
letter) instead of raising, and the good record next to them flows. Through the running stack,
with the runtime's isolation as well: tests/e2e/test_hostile_inputs.py."""

from __future__ import annotations

import base64
from datetime import timedelta
from types import SimpleNamespace

import orjson
import pytest
from aiokafka import ConsumerRecord

from driftloop.contracts import DeadLetter, InvalidInput, PredictionResult
from driftloop.online import InMemoryOnlineStore
from driftloop.settings import Topics
from driftloop.spec import load_specs
from driftloop.store import RowStore
from driftloop_inference.domain import Lineup
from driftloop_inference.handlers import InferenceHandler
from driftloop_ingest.handlers import IngestHandler
from driftloop_monitor.adapters import InMemoryJoinStore
from driftloop_monitor.handlers import Monitor
from tests.conftest import ROOT

SPECS = load_specs(ROOT / "models")
TOPICS = Topics()
FAR = 300_000_000_000_000  # a record timestamp in ms: the year 11476


def _records(topic: str, values: list[bytes], timestamp: int = 0) -> list[ConsumerRecord]:
    return [
        ConsumerRecord(topic, 0, offset, timestamp, 0, None, value, None, 0, len(value), ())
        for offset, value in enumerate(values)
    ]


def _dead(handled) -> list[DeadLetter]:
    return [DeadLetter.model_validate_json(o.value) for o in handled.outputs if o.topic == TOPICS.events_dlq]


async def test_a_request_id_that_is_a_lone_surrogate_is_dead_lettered_not_answered():
    handler = InferenceHandler(SPECS, SimpleNamespace(lineup=Lineup()), InMemoryOnlineStore(), TOPICS)  # type: ignore[arg-type]
    poison = b'{"request_id": "\\ud800", "model": "sea", "features": {}}'
    good = orjson.dumps({"request_id": "ok", "model": "sea", "features": {"x0": 1, "x1": 1, "x2": 1}})
    handled = await handler.handle(_records(TOPICS.predictions_requests, [poison, good]))
    (letter,) = _dead(handled)
    assert letter.reason == "malformed_json" and base64.b64decode(letter.original) == poison
    results = [
        PredictionResult.model_validate_json(o.value)
        for o in handled.outputs
        if o.topic == TOPICS.predictions_results
    ]
    assert [(r.request_id, r.error) for r in results] == [("ok", "no_champion")]


async def test_an_observation_whose_record_timestamp_is_no_date_is_dead_lettered(tmp_path):
    handler = IngestHandler(SPECS, RowStore(tmp_path), TOPICS, timedelta(minutes=5))
    observation = {"event_id": "e1", "model": "sea", "features": {"x0": 1, "x1": 2, "x2": 3}, "label": 1}
    handled = await handler.handle(_records(TOPICS.events_raw, [orjson.dumps(observation)], FAR))
    (letter,) = _dead(handled)
    assert letter.reason == "event_time_out_of_range" and str(FAR) in letter.detail
    assert letter.original_timestamp == FAR
    with_time = {**observation, "event_id": "e2", "event_time": "2026-11-30T10:00:00+00:00"}
    handled = await handler.handle(_records(TOPICS.events_raw, [orjson.dumps(with_time)], FAR))
    assert _dead(handled) == [] and len(handled.outputs) == 1  # its own event time is what counts


def test_a_request_whose_record_timestamp_is_no_date_is_refused_by_the_monitor():
    monitor = Monitor(SPECS, joins=InMemoryJoinStore(), topics=TOPICS, quality_window=100)
    request = orjson.dumps({"request_id": "r", "model": "sea", "features": {"x0": 1}})
    (record,) = _records(TOPICS.predictions_requests, [request], FAR)
    with pytest.raises(InvalidInput, match="timestamp_out_of_range"):
        monitor._part(record)


def test_feedback_with_a_label_outside_the_classes_is_refused_with_a_reason():
    monitor = Monitor(SPECS, joins=InMemoryJoinStore(), topics=TOPICS, quality_window=100)
    for label, refused in ((7, True), ("cat", True), (1, False), ("0", False)):
        feedback = orjson.dumps({"request_id": "r", "model": "sea", "label": label})
        (record,) = _records(TOPICS.predictions_feedback, [feedback], 1_000)
        if refused:
            with pytest.raises(InvalidInput, match="unknown_label"):
                monitor._part(record)
        else:
            assert monitor._part(record).name == "feedback"


async def test_true_is_not_a_number(tmp_path):
    handler = IngestHandler(SPECS, RowStore(tmp_path), TOPICS, timedelta(minutes=5))
    observation = {"event_id": "e1", "model": "sea", "features": {"x0": True, "x1": 2, "x2": 3}, "label": 1}
    (letter,) = _dead(await handler.handle(_records(TOPICS.events_raw, [orjson.dumps(observation)])))
    assert letter.reason in {"invalid_schema", "wrong_type"} and "x0" in letter.detail
    inference = InferenceHandler(SPECS, SimpleNamespace(lineup=Lineup()), InMemoryOnlineStore(), TOPICS)  # type: ignore[arg-type]
    request = orjson.dumps({"request_id": "r", "model": "sea", "features": {"x0": True, "x1": 1, "x2": 1}})
    handled = await inference.handle(_records(TOPICS.predictions_requests, [request]))
    (result,) = [PredictionResult.model_validate_json(o.value) for o in handled.outputs]
    assert result.error is not None and result.error.startswith("invalid_schema") and "x0" in result.error


async def test_a_full_disk_stops_ingest_before_anything_is_published(tmp_path):
    from driftloop.faults import is_transient
    from driftloop.store import StoreFull

    full = RowStore(tmp_path, min_free_bytes=2**62)  # more than any disk has free
    handler = IngestHandler(SPECS, full, TOPICS, timedelta(minutes=5))
    observation = {"event_id": "e1", "model": "sea", "features": {"x0": 1, "x1": 2, "x2": 3}, "label": 1}
    with pytest.raises(StoreFull) as refused:
        await handler.handle(_records(TOPICS.events_raw, [orjson.dumps(observation)]))
    assert is_transient(refused.value)  # the loop retries it with a growing pause, never dead-letters


async def test_a_batch_handled_again_teaches_the_monitor_and_its_counters_once():
    from driftloop.contracts import ArtifactRef, ModelPromoted, result_json
    from driftloop_monitor.handlers import LABELLED

    monitor = Monitor(SPECS, InMemoryJoinStore(), TOPICS, quality_window=100)
    artifact = ArtifactRef(uri="u", sha256="0" * 64, size_bytes=1)
    await monitor.on_lifecycle(ModelPromoted(model="sea", version=1, reason="test", artifact=artifact,
                                             classes=[0, 1], feature_names=["x0", "x1", "x2"]))  # fmt: skip

    def record(topic: str, offset: int, ms: int, body: dict) -> ConsumerRecord:
        return ConsumerRecord(topic, 0, offset, ms, 0, None, orjson.dumps(body), None, 0, 0, ())

    batch = []
    for i in range(10):
        rid, x = f"r{i}", {"x0": 1, "x1": 2, "x2": 3}
        answer = result_json(rid, "sea", 1, prediction=1, probabilities={"0": 0.2, "1": 0.8})
        batch += [
            record(
                TOPICS.predictions_requests, i, 1_000 + i, {"request_id": rid, "model": "sea", "features": x}
            ),
            record(TOPICS.predictions_results, i, 1_000 + i, answer),
            record(
                TOPICS.predictions_feedback, i, 2_000 + i, {"request_id": rid, "model": "sea", "label": i % 2}
            ),
        ]
    correct = LABELLED.labels("sea", "1", "correct")._value.get()

    checkpoint = monitor.checkpoint  # as the loop drives it
    checkpoint.begin()
    first = await monitor.handle(batch)  # its send fails: the loop rewinds and handles it again
    checkpoint.rewound()
    number = checkpoint.begin()
    again = await monitor.handle(batch)

    assert [o for o in first.outputs] == [o for o in again.outputs]  # the same rows go out again
    assert sum(o.topic == TOPICS.events_raw for o in again.outputs) == 10
    assert monitor.watches["sea"].policy.detector_samples == 10, "the detector learned the batch twice"
    assert monitor.watches["sea"].policy.labelled == 10, "the policy counted the batch twice"
    assert len(monitor.watches["sea"].quality[1].correct) == 10
    assert again.tally is not None and again.then is not None
    await again.then()  # the loop: outputs acknowledged, joins marked done, offsets committed
    again.tally.apply()
    checkpoint.committed(number)
    assert LABELLED.labels("sea", "1", "correct")._value.get() == correct + 5
    assert checkpoint.memos == 0, "kept what a committed batch taught"
    assert (await monitor.handle(batch)).outputs == [], "a committed join came back"


async def test_a_batch_split_by_the_search_for_a_bad_record_counts_every_part_once():
    """Isolation handles a batch, then its halves, each committed on its own: every request and
    result is counted once (not only those of the part that happens to hold the group's last
    record), and a record repeated within a batch teaches the drift monitors once."""
    from driftloop.contracts import ArtifactRef, FeatureStats, ModelPromoted, result_json
    from driftloop_monitor.handlers import PREDICTED

    monitor = Monitor(SPECS, InMemoryJoinStore(), TOPICS, quality_window=100)
    stats = FeatureStats(mean=5, std=2.9, min=0, max=10, quantiles=[float(q) for q in range(1, 10)])
    names = ["x0", "x1", "x2"]
    await monitor.on_lifecycle(ModelPromoted(
        model="sea", version=1, reason="test", artifact=ArtifactRef(uri="u", sha256="0" * 64, size_bytes=1),
        classes=[0, 1], feature_names=names, reference_stats=dict.fromkeys(names, stats),
        prediction_shares={"0": 0.5, "1": 0.5}))  # fmt: skip

    def record(topic: str, offset: int, body: dict) -> ConsumerRecord:
        return ConsumerRecord(topic, 0, offset, 1_000 + offset, 0, None, orjson.dumps(body), None, 0, 0, ())

    results = [
        record(TOPICS.predictions_results, i, result_json(f"r{i}", "sea", 1, prediction=1)) for i in range(10)
    ]
    request = {"request_id": "q0", "model": "sea", "features": {"x0": 1, "x1": 2, "x2": 3}}
    requests = [
        record(TOPICS.predictions_requests, 0, request),
        record(TOPICS.predictions_requests, 1, request),
    ]
    predicted = PREDICTED.labels("sea", "1", "1")._value.get()

    checkpoint = monitor.checkpoint  # as the loop drives it
    checkpoint.begin()
    await monitor.handle([*results, *requests])  # fails (a bad record): never committed
    assert monitor.watches["sea"].covariate.samples_seen == 1, (
        "a request repeated in a batch was learned twice"
    )
    for part in (results[:5], [*results[5:], *requests]):  # the halves, each sent and committed
        checkpoint.rewound()
        number = checkpoint.begin()
        handled = await monitor.handle(part)
        assert handled.then is not None and handled.tally is not None
        await handled.then()
        handled.tally.apply()
        checkpoint.committed(number)
    assert PREDICTED.labels("sea", "1", "1")._value.get() == predicted + 10
    assert (
        monitor.watches["sea"].predictions.samples_seen == 10
        and monitor.watches["sea"].covariate.samples_seen == 1
    )
    assert checkpoint.memos == 0


async def test_the_monitor_tells_its_policy_which_retrains_came_to_nothing():
    from datetime import UTC, datetime

    from driftloop.contracts import ArtifactRef, ModelPromoted, ModelRejected, ModelTrainingFailed

    monitor = Monitor(SPECS, InMemoryJoinStore(), TOPICS, quality_window=100)
    artifact = ArtifactRef(uri="u", sha256="0" * 64, size_bytes=1)
    await monitor.on_lifecycle(ModelPromoted(model="sea", version=1, reason="test", artifact=artifact,
                                             classes=[0, 1], feature_names=["x0", "x1", "x2"]))  # fmt: skip
    policy = monitor.watches["sea"].policy
    at = datetime(2026, 1, 1, tzinfo=UTC)
    asked = [r for _ in range(1200) for r in policy.observe(1, False, at).retrains]  # below the floor
    (retrain,) = asked
    assert retrain.reason == "below_floor" and retrain.command_id in policy.asked
    await monitor.on_lifecycle(ModelRejected(model="sea", version=2, reason="gate", command_id="other"))
    assert not policy.pending  # not one of its own: nothing to retry
    await monitor.on_lifecycle(
        ModelTrainingFailed(
            model="sea", version=0, reason="x", command_id=retrain.command_id, outcome="failed"
        )
    )
    assert [p.reason for p in policy.pending] == ["retry"]
