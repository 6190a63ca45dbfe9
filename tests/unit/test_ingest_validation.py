from datetime import UTC, datetime, timedelta

import orjson
import pytest

from driftloop.contracts import InvalidInput
from driftloop_ingest.domain import validate_observation

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
