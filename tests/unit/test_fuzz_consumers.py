"""Property-based: hostile records thrown at every other consumer's record reader, as its batch
handler calls it (through `triage`): the monitor (requests, results, feedback), the registry
(trained candidates, commands), the trainer (commands, feature rows), inference (requests) and the
lifecycle followers. No exception escapes, every record either parses into a valid contract or
becomes a dead letter with a reason, and a good record after them still parses.

(Ingest and feature: tests/unit/test_fuzz_inputs.py. A 10 MB record through the real broker:
tests/integration/test_serving.py.)"""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftloop.contracts import (
    LIFECYCLE,
    REGISTRY_COMMAND,
    FeatureRow,
    InvalidInput,
    ModelTrained,
    TrainModel,
    parse,
)
from driftloop.kafka import triage
from driftloop.settings import Topics
from driftloop.spec import load_specs
from driftloop_inference.handlers import _request_or_error
from driftloop_monitor.adapters import InMemoryJoinStore
from driftloop_monitor.handlers import Monitor
from tests.conftest import ROOT
from tests.helpers import JSON, records

SPECS = load_specs(ROOT / "models")
TOPICS = Topics()
MONITOR = Monitor(SPECS, joins=InMemoryJoinStore(), topics=TOPICS, quality_window=100)

HOSTILE_VALUES = st.sampled_from(
    [
        "../../etc/passwd",
        "..\\..\\windows",
        "/abs/path",
        "\x00\x01\x1b[31m\u202e",
        "x" * 300,
        "NaN",
        "Infinity",
        2**80,
        -(2**70),
        1e308,
        [],
        {},
        None,
        True,
        {"$ne": 1},
    ]
)


def _lifecycle(raw: bytes | None) -> object:
    try:
        return LIFECYCLE.validate_json(raw or b"")
    except ValueError as exc:  # what the follower does: log and skip
        raise InvalidInput("invalid_schema", str(exc)) from exc


CONSUMERS = {  # topic -> (the reader its handler uses, a good record)
    "monitor/requests": (
        TOPICS.predictions_requests,
        MONITOR._part,
        {"request_id": "r", "model": "sea", "features": {"x0": 1, "x1": 2, "x2": 3}},
    ),
    "monitor/results": (
        TOPICS.predictions_results,
        MONITOR._part,
        {"request_id": "r", "model": "sea", "model_version": 1, "prediction": 1},
    ),
    "monitor/feedback": (
        TOPICS.predictions_feedback,
        MONITOR._part,
        {"request_id": "r", "model": "sea", "label": 1},
    ),
    "registry/commands": (
        TOPICS.models_commands,
        lambda r: parse(REGISTRY_COMMAND, r.value, SPECS),
        {"command": "PromoteModel", "command_id": "c", "model": "sea", "version": 1, "reason": "x"},
    ),
    "registry/trained": (TOPICS.models_trained, lambda r: parse(ModelTrained, r.value, SPECS), None),
    "trainer/commands": (
        TOPICS.training_requests,
        lambda r: parse(TrainModel, r.value, SPECS),
        {"command_id": "c", "model": "sea"},
    ),
    "trainer/rows": (
        TOPICS.features_computed,
        lambda r: parse(FeatureRow, r.value, SPECS),
        {
            "event_id": "e",
            "model": "sea",
            "event_time": "2026-11-22T10:00:00+00:00",
            "features": {"x0": 1.0, "x1": 2.0, "x2": 3.0},
            "label": 1,
        },
    ),
    "inference/requests": (
        TOPICS.predictions_requests,
        _request_or_error,
        {"request_id": "r", "model": "sea", "features": {"x0": 1, "x1": 2, "x2": 3}},
    ),
    "followers/lifecycle": (TOPICS.models_lifecycle, lambda r: _lifecycle(r.value), None),
}


@st.composite
def hostile(draw, good: dict | None) -> bytes | None:
    """Bytes a consumer must survive: garbage, any JSON, or its own good record with one field
    replaced by something hostile, removed, or with unknown fields added."""
    kind = draw(st.sampled_from(["bytes", "json", "field", "missing", "nested", "none"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "none":
        return draw(st.sampled_from([None, b"", b"null", b"[]", b"NaN", b'{"a": Infinity}']))
    if kind == "nested":
        depth = draw(st.integers(100, 5000))
        return b'{"request_id": "r", "features": ' + b"[" * depth + b"]" * depth + b"}"
    if kind == "json" or good is None:
        return orjson.dumps(draw(JSON))
    record = dict(good)
    name = draw(st.sampled_from(sorted(record)))
    if kind == "missing":
        del record[name]
    else:
        record[name] = draw(HOSTILE_VALUES)
    record.update(draw(st.dictionaries(st.text(max_size=5), JSON, max_size=2)))
    return json.dumps(record).encode()  # (the standard library writes 80-bit integers too)


@pytest.mark.parametrize("consumer", sorted(CONSUMERS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_consumer_dead_letters_what_it_cannot_read_and_reads_the_next_good_record(consumer, data):
    topic, read, good = CONSUMERS[consumer]
    batch = data.draw(st.lists(hostile(good), min_size=1, max_size=8))
    if good is not None:
        batch.append(orjson.dumps(good))
    parsed, dead = triage("test", records(topic, batch), read)

    assert len(parsed) + len(dead) == len(batch), "a record vanished"
    assert all(letter.reason and letter.source_topic == topic for letter in dead)
    if good is not None:
        assert dead == [] or dead[-1].source_offset < len(batch) - 1, "the good record was refused"


@pytest.mark.parametrize("consumer", sorted(CONSUMERS))
def test_huge_and_deeply_nested_records_are_refused_with_a_reason(consumer):
    topic, read, _ = CONSUMERS[consumer]
    huge = orjson.dumps({"request_id": "r", "model": "sea", "features": {"x0": "x" * 10_000_000}})
    nested = b"[" * 100_000 + b"]" * 100_000
    parsed, dead = triage("test", records(topic, [huge, nested]), read)
    reasons = [d.reason for d in dead]
    assert parsed == [] or consumer == "inference/requests"  # inference answers an id it can salvage
    assert set(reasons) <= {"oversized", "malformed_json", "invalid_schema", "unknown_model", "empty"}
    assert len(reasons) + len(parsed) == 2
