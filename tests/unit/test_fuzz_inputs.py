"""Property-based: arbitrary and hostile records thrown at the hot-path handlers of ingest and
feature (as their consume loop calls them). No crash, no stall: every bad record is dead-lettered
with a reason, every good one passes exactly once, whatever it is mixed with."""

import json
import tempfile
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftloop.contracts import DeadLetter, FeatureRow, Observation
from driftloop.online import InMemoryOnlineStore
from driftloop.settings import Topics
from driftloop.spec import load_specs
from driftloop.store import RowStore
from driftloop_feature.handlers import FeatureHandler
from driftloop_ingest.handlers import IngestHandler
from tests.conftest import ROOT
from tests.helpers import records

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
NAMES = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30)


EVENT_IDS = st.sampled_from([f"e{i}" for i in range(12)])  # repeats: duplicates and redeliveries


@st.composite
def good(draw):
    """A valid SEA observation, perhaps with unknown extra fields (which consumers ignore)."""
    record = {
        "event_id": draw(EVENT_IDS),
        "model": "sea",
        "features": {f"x{k}": draw(st.floats(0, 10)) for k in range(3)},
        "label": draw(st.sampled_from([0, 1, "1", True])),
        "event_time": "2026-11-22T10:00:00+00:00",
    }
    record.update(draw(st.dictionaries(st.sampled_from(["extra", "note", "z"]), JSON, max_size=2)))
    return record


@st.composite
def bad(draw):
    """Bytes that must be rejected: not JSON, not an object, or an observation with one thing wrong."""
    kind = draw(
        st.sampled_from(["bytes", "json", "feature", "nan", "range", "label", "model", "huge", "missing"])
    )
    if kind == "bytes":
        return draw(st.binary(max_size=64).filter(lambda b: not _is_object(b)))
    if kind == "json":
        return json.dumps(draw(JSON.filter(lambda v: not isinstance(v, dict)))).encode()
    record = draw(good())
    if kind == "feature":
        record["features"]["x1"] = draw(
            st.text(max_size=10) | st.none() | st.lists(st.integers(), max_size=2)
        )
    elif kind == "nan":
        record["features"]["x0"] = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    elif kind == "range":
        record["features"]["x2"] = draw(st.floats(10.001, 1e300) | st.floats(-1e300, -0.001))
    elif kind == "label":
        record["label"] = draw(st.sampled_from([2, "yes", -1, 0.5, [1]]))
    elif kind == "model":
        record["model"] = draw(NAMES.filter(lambda n: n != "sea") | st.sampled_from(["../../etc", "sea\x00"]))
    elif kind == "huge":
        record["features"]["x1"] = "x" * 200_000
    else:
        del record[draw(st.sampled_from(["event_id", "model", "features"]))]
    return json.dumps(record, allow_nan=True).encode()


def _is_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except ValueError:
        return False


MIXES = st.lists(
    st.tuples(st.just("good"), good()) | st.tuples(st.just("bad"), bad()), min_size=1, max_size=25
)


TOPICS = Topics()


def _split(outputs, topic, contract):
    return [contract.model_validate_json(o.value) for o in outputs if o.topic == topic]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mix=MIXES)
async def test_ingest_dead_letters_every_bad_record_and_passes_every_good_one_once(mix):
    with tempfile.TemporaryDirectory() as tmp:
        store = RowStore(Path(tmp))
        handler = IngestHandler(load_specs(ROOT / "models"), store, TOPICS, timedelta(minutes=5))
        batch = [json.dumps(r).encode() if kind == "good" else r for kind, r in mix]
        handled = handler.handle(records(TOPICS.events_raw, batch))
        first = await handled
        first.then()
        # the next good record still flows; a redelivery of the batch adds nothing
        nxt = json.dumps({**_plain_good(), "event_id": "next"}).encode()
        second = await handler.handle(records(TOPICS.events_raw, [*batch, nxt]))
        second.then()
        stored = store.count("sea")
        store.close()

    validated = _split([*first.outputs, *second.outputs], TOPICS.events_validated, Observation)
    dead = _split(first.outputs, TOPICS.events_dlq, DeadLetter)
    good_ids = {r["event_id"] for kind, r in mix if kind == "good"} | {"next"}
    assert sorted(o.event_id for o in validated) == sorted(good_ids), "a good record lost or doubled"
    assert stored == len(good_ids)
    assert len(dead) == sum(kind == "bad" for kind, _ in mix)
    assert all(d.reason and d.service == "ingest" and d.original_size >= 0 for d in dead)
    assert len(_split(second.outputs, TOPICS.events_dlq, DeadLetter)) == len(dead)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mix=MIXES)
async def test_feature_dead_letters_every_bad_record_and_computes_every_good_one(mix):
    # the entity path runs against a real redis-server in tests/integration/test_data_path.py
    online = InMemoryOnlineStore()
    handler = FeatureHandler(load_specs(ROOT / "models"), online, TOPICS)
    batch = [json.dumps(r).encode() if kind == "good" else r for kind, r in mix]
    outputs = (await handler.handle(records(TOPICS.events_validated, batch))).outputs
    rows = _split(outputs, TOPICS.features_computed, FeatureRow)
    dead = _split(outputs, TOPICS.events_dlq, DeadLetter)

    good_count = sum(kind == "good" for kind, _ in mix)  # feature is idempotent downstream by event id
    assert len(rows) == good_count
    assert all(set(r.features) == {"x0", "x1", "x2"} and r.label in (0, 1) for r in rows)
    assert len(dead) == len(mix) - good_count and all(d.reason for d in dead)


def _plain_good():
    return {"model": "sea", "features": {"x0": 1.0, "x1": 2.0, "x2": 3.0}, "label": 0}
