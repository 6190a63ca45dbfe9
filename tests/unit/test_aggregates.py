"""Per-entity aggregates: point-in-time correct for training rows, identical for serving rows, and
indifferent to redelivery and batch boundaries."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftloop.aggregates import History
from driftloop.contracts import Observation
from driftloop.features import FeatureSet, check_features
from driftloop.kafka import encode
from driftloop.observations import checkers
from driftloop.spec import ModelSpec
from driftloop_feature.domain import aggregate_values, check_batch, feature_rows
from tests.oracles import matrix

SPEC = ModelSpec.model_validate(
    {
        "name": "payments",
        "features": [{"name": "amount", "type": "numeric", "min": 0}],
        "aggregates": [
            {"name": "amount_mean_3", "stat": "mean", "of": "amount", "last_n": 3},
            {"name": "amount_max_60s", "stat": "max", "of": "amount", "window_s": 60},
            {"name": "payments_60s", "stat": "count", "window_s": 60},
            {"name": "amount_last", "stat": "last", "of": "amount"},
        ],
        "label": {"classes": [0, 1]},
        "algorithm": {"name": "logistic_regression"},
    }
)
T0 = datetime(2026, 11, 22, tzinfo=UTC)
EVENTS = st.lists(
    st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 300), st.floats(0, 1000)), min_size=1, max_size=40
)


def _observations(events):
    return [
        Observation(
            event_id=f"e{i}",
            model="payments",
            entity_id=entity,
            features={"amount": amount},
            label=i % 2,
            event_time=T0 + timedelta(seconds=second, microseconds=i),  # distinct times
        )
        for i, (entity, second, amount) in enumerate(events)
    ]


def _checked(batch):
    """The feature service's validated rows of a batch, in batch order."""
    specs = {SPEC.name: SPEC}
    valid, errors = check_batch([encode(o) for o in batch], specs, checkers(specs))
    assert not errors
    return valid[SPEC.name]


def _oracle(observations, observation):
    """Aggregates from every earlier event of the entity, by brute force."""
    before = sorted(
        (
            o
            for o in observations
            if o.entity_id == observation.entity_id and o.event_time < observation.event_time
        ),
        key=lambda o: o.event_time,
    )
    amounts = [o.features["amount"] for o in before]
    recent = [
        o.features["amount"] for o in before if o.event_time > observation.event_time - timedelta(seconds=60)
    ]
    return {
        "amount_mean_3": sum(amounts[-3:]) / len(amounts[-3:]) if amounts else 0.0,
        "amount_max_60s": max(recent) if recent else 0.0,
        "payments_60s": float(len(recent)),
        "amount_last": amounts[-1] if amounts else 0.0,
    }


def _aggregate(batch, stored):
    """One batch through the feature service's domain code: histories read from `stored` (hash
    fields by entity, as the online store keeps them), only their changes written back."""
    checked = _checked(batch)
    histories = {e: History.from_fields(SPEC, stored.get(e, {})) for e in {o.entity_id for o in batch}}
    names = [a.name for a in SPEC.aggregates]
    values = aggregate_values(SPEC, checked, histories).tolist()
    ids = [o.event_id for o in checked.observations]
    rows = {i: dict(zip(names, v, strict=True)) for i, v in zip(ids, values, strict=True)}
    for entity, history in histories.items():
        added, removed = history.changes()
        fields = stored.setdefault(entity, {})  # as Redis gives them back: bytes
        fields.update({k.encode(): v.encode() for k, v in added.items()})
        for field in removed:
            fields.pop(field.encode(), None)
    return rows, histories


def _stream(batches):
    """Run batches through the feature service's domain code; histories carried between batches."""
    stored: dict[str, dict[bytes, bytes]] = {}
    out = {}
    for batch in batches:
        rows, histories = _aggregate(batch, stored)
        for entity, history in histories.items():
            assert stored[entity] == {k.encode(): v.encode() for k, v in history.fields().items()}, (
                "the changes written leave another history stored"
            )
        for event_id, values in rows.items():
            out.setdefault(event_id, values)
    return out, stored


@settings(max_examples=150, deadline=None)
@given(events=EVENTS, cut=st.integers(1, 40))
def test_training_rows_use_only_earlier_events_whatever_the_batches(events, cut):
    observations = sorted(_observations(events), key=lambda o: o.event_time)
    batches = [observations[i : i + cut] for i in range(0, len(observations), cut)]
    rows, _ = _stream([*batches, observations[: cut // 2 + 1]])  # and a redelivery of the start
    for o in observations:
        assert rows[o.event_id] == _oracle(observations, o), o.event_id


@settings(max_examples=100, deadline=None)
@given(events=EVENTS, at_s=st.integers(0, 400))
def test_values_as_of_a_moment_never_depend_on_later_events(events, at_s):
    # whatever a history holds (late arrivals included), values at T come from events before T only
    observations = _observations(events)
    _, stored = _stream([observations])  # in arrival order, not time order
    at = (T0 + timedelta(seconds=at_s)).timestamp()
    for fields in stored.values():
        history = History.from_fields(SPEC, fields)
        earlier = History(SPEC, [e for e in history.events if e[0] < at])
        assert history.values(at) == earlier.values(at)


@given(events=EVENTS, after_s=st.integers(0, 400))
def test_a_serving_row_equals_the_training_row_of_an_event_at_that_moment(events, after_s):
    observations = sorted(_observations(events), key=lambda o: o.event_time)
    _, stored = _stream([observations])
    entity = observations[0].entity_id
    at = T0 + timedelta(seconds=after_s, microseconds=999_999)
    probe = Observation(event_id="probe", model="payments", entity_id=entity, features={"amount": 5.0},
                        label=0, event_time=at)  # fmt: skip
    # training: the feature service's path for an event at `at`
    feature_set = FeatureSet(SPEC)
    histories = {entity: History.from_fields(SPEC, stored[entity])}
    (row,), _ = feature_rows(feature_set, _checked([probe]), histories)
    training = feature_set.from_named([row["features"]])[0]
    # serving: inference's path for a request at `at` (raw features + the entity's stored history)
    served = {"amount": 5.0, **History.from_fields(SPEC, stored[entity]).values(at.timestamp())}
    serving = matrix(feature_set, [check_features(SPEC, served)])[0]
    assert training.tolist() == serving.tolist()


def test_rows_without_an_entity_get_the_documented_default():
    (o,) = _observations([("a", 0, 7.0)])
    o = o.model_copy(update={"entity_id": None})
    (row,), _ = feature_rows(FeatureSet(SPEC), _checked([o]), {})
    assert {k: row["features"][k] for k in _oracle([], o)} == dict.fromkeys(_oracle([], o), 0.0)


@pytest.mark.parametrize(
    "raw",
    [
        b"{oops",
        b"[]",
        b'"text"',
        b"[1.0]",
        b'["x", {"amount": 1.0}]',
        b"[1.0, {}]",
        b'[1.0, {"amount": "1"}]',
    ],
)
def test_an_unreadable_stored_event_is_skipped_and_deleted_with_the_next_changes(raw):
    fields = {b"features": b"{}", b"h:good": b'[1.0, {"amount": 2.0}]', b"h:bad": raw, b"h:\xff": raw}
    history = History.from_fields(SPEC, fields)
    assert history.events == [(1.0, "good", {"amount": 2.0})]
    assert history.changes() == ({}, ["h:bad"])  # a name that is not UTF-8 is not ours: left


def test_only_changes_are_written_and_what_no_aggregate_needs_is_let_go():
    fields = {f"h:e{t}".encode(): f'[{t}, {{"amount": {t}}}]'.encode() for t in (0, 100, 200, 300, 400)}
    history = History.from_fields(SPEC, fields)
    history.add(500.0, "e500", {"amount": 7.0})
    history.add(500.0, "e500", {"amount": 7.0})  # a redelivery
    history.add(530.0, "e530", {"amount": 8.0})
    added, removed = history.changes()
    assert added == {"h:e500": '[500.0,{"amount":7.0}]', "h:e530": '[530.0,{"amount":8.0}]'}
    # kept: the 3 events before the batch's oldest (the mean of 3 for e500), and everything after
    assert removed == ["h:e0", "h:e100"]
    assert [i for _, i, _ in history.events] == ["e200", "e300", "e400", "e500", "e530"]
    assert history.changes() == ({}, [])
    history.add(700.0, "e700", {"amount": 9.0})  # the next batch: e700 needs e400, e500, e530
    assert history.changes()[1] == ["h:e200", "h:e300"]


def test_the_history_cache_is_bounded_and_forgets_what_redis_may_have_expired():
    from driftloop_feature.histories import HistoryCache

    now = [0.0]
    cache = HistoryCache(max_entities=2, ttl_s=10, clock=lambda: now[0])
    a, b, c = History(SPEC), History(SPEC), History(SPEC)
    cache.put([(("m", "a"), a), (("m", "b"), b)])
    assert cache.get(("m", "a")) is a
    cache.put([(("m", "c"), c)])  # "b" was used least recently
    assert cache.get(("m", "b")) is None and cache.get(("m", "a")) is a and len(cache) == 2
    now[0] = 10.5  # older than the online TTL: Redis may have expired it
    assert cache.get(("m", "c")) is None
    cache.clear()
    assert len(cache) == 0


@settings(max_examples=150, deadline=None)
@given(events=EVENTS, cut=st.integers(1, 40))
def test_a_batch_redelivered_after_its_history_was_stored_gives_the_same_rows(events, cut):
    # a crash after the online-store write and before the commit: the batch comes again and reads
    # the history that its first pass stored (and trimmed)
    observations = sorted(_observations(events), key=lambda o: o.event_time)
    batches = [observations[i : i + cut] for i in range(0, len(observations), cut)]
    stored: dict[str, dict[bytes, bytes]] = {}
    for batch in batches:
        passes = []
        for _ in range(2):
            rows, _ = _aggregate(batch, stored)
            passes.append(rows)
        assert passes[0] == passes[1]


def test_an_event_whose_aggregate_overflows_is_refused_not_fatal():
    spec = ModelSpec.model_validate(
        {
            "name": "huge",
            "features": [{"name": "x", "type": "numeric"}],
            "aggregates": [{"name": "x_sum", "stat": "sum", "of": "x", "last_n": 2}],
            "label": {"classes": [0, 1]},
            "algorithm": {"name": "logistic_regression"},
        }
    )
    observations = [
        Observation(event_id=f"e{i}", model="huge", entity_id="a", features={"x": 1e308}, label=0,
                    event_time=T0 + timedelta(seconds=i))
        for i in range(3)
    ]  # fmt: skip
    specs = {"huge": spec}
    valid, _ = check_batch([encode(o) for o in observations], specs, checkers(specs))
    rows, errors = feature_rows(FeatureSet(spec), valid["huge"], {"a": History(spec)})
    assert [r["event_id"] for r in rows] == ["e0", "e1"]  # e2's sum of the two before is inf
    assert {i: e.reason for i, e in errors.items()} == {2: "not_finite"}
