from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftloop.contracts import InvalidInput, Observation, parse
from driftloop.observations import Observed, read_observation
from driftloop_ingest.domain import validate_observation
from tests.helpers import JSON

NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)
GOOD = {"event_id": "e1", "model": "sea", "features": {"x0": 1, "x1": 2.5, "x2": 9}, "label": "1"}


def _validate(payload, specs):
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return validate_observation(raw, specs, NOW, timedelta(minutes=5))


def test_a_good_observation_is_normalised(sea_spec):
    observation = _validate({**GOOD, "extra": {"ignored": True}}, {"sea": sea_spec})
    assert observation.label == 1
    assert observation.event_time == NOW
    assert observation.features == {"x0": 1.0, "x1": 2.5, "x2": 9.0}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b'{"event_id": "e", "model": "sea", "features": {"x0": NaN}}', "malformed_json"),
        (b"[1, 2]", "invalid_schema"),
        (b"", "empty"),
        (b"x" * 1_000_001, "oversized"),
        ({"model": "sea", "features": {}}, "invalid_schema"),
        ({**GOOD, "model": "../../etc"}, "unknown_model"),
        ({**GOOD, "features": {"x0": 1, "x1": 2}}, "missing_feature"),
        ({**GOOD, "features": {"x0": 1, "x1": 2, "x2": 11}}, "out_of_range"),
        ({**GOOD, "features": {"x0": "1", "x1": 2, "x2": 3}}, "wrong_type"),
        ({**GOOD, "label": 7}, "invalid_label"),
        ({**GOOD, "event_time": (NOW + timedelta(days=1)).isoformat()}, "event_time_in_future"),
        ({**GOOD, "event_time": "0001-01-01T00:00:00+01:00"}, "event_time_out_of_range"),  # no UTC twin
        ({**GOOD, "event_time": "9999-12-31T23:59:59-01:00"}, "event_time_out_of_range"),
    ],
)
def test_bad_observations_are_refused_with_a_reason(payload, reason, sea_spec):
    with pytest.raises(InvalidInput) as caught:
        _validate(payload, {"sea": sea_spec})
    assert caught.value.reason == reason


OBSERVATIONS = st.fixed_dictionaries(
    {"event_id": st.one_of(st.text(max_size=300), st.integers(-(10**6), 10**6), st.none())},
    optional={
        "model": st.one_of(st.sampled_from(["sea", "other"]), st.integers(0, 3)),
        "features": st.one_of(st.dictionaries(st.text(max_size=4), JSON, max_size=4), JSON),
        "label": JSON,
        "event_time": st.one_of(
            st.none(),
            st.datetimes().map(lambda t: t.isoformat()),
            st.datetimes(timezones=st.timezones()).map(lambda t: t.isoformat()),
            st.datetimes(timezones=st.just(UTC)).map(lambda t: t.isoformat()),  # as ingest writes
            st.sampled_from(
                [
                    *["2026-11-22", "2026-11-22T10:00:00Z", "yesterday", "", "2026-13-01T00:00:00"],
                    *["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"],
                    *["2026-02-30T00:00:00+00:00", "2026-11-22T24:00:00+00:00", "2026-11-22T23:59:60+00:00"],
                    *["0000-01-01T00:00:00+00:00", "2026-W47-1T10:00:00+00:00"],
                    "2026-11-22T10:00:00,123456+00:00",
                ]
            ),
            st.integers(0, 2**31),
            st.floats(allow_nan=False),
        ),
        "entity_id": st.one_of(st.none(), st.text(max_size=4), st.integers(-5, 5)),
        "schema_version": st.one_of(st.integers(0, 3), st.text(max_size=2)),
        "extra": JSON,
    },
)


@given(OBSERVATIONS)
def test_the_fast_observation_reader_agrees_with_the_contract(payload):
    raw = orjson.dumps(payload)
    try:
        expected = parse(Observation, raw, {"sea"})
    except InvalidInput as exc:
        with pytest.raises(InvalidInput) as refused:
            read_observation(raw, {"sea"})
        assert refused.value.reason == exc.reason
        return
    e = expected
    assert read_observation(raw, {"sea"}) == Observed(
        e.event_id, e.model, dict(e.features), e.label, e.event_time, e.entity_id
    )


@given(st.datetimes(timezones=st.just(UTC)))
def test_event_times_as_ingest_writes_them_read_as_the_contract_reads_them(moment):
    raw = orjson.dumps({"event_id": "e", "model": "sea", "features": {}, "event_time": moment.isoformat()})
    read = read_observation(raw, {"sea"}).event_time
    assert read == parse(Observation, raw, {"sea"}).event_time == moment
    assert read.tzinfo is UTC  # already in UTC: nothing to convert
