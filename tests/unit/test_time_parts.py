"""Time-part inputs: one function for training rows (event time) and serving rows (arrival time)."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from driftloop.contracts import Observation
from driftloop.features import FeatureSet, check_features, time_parts
from driftloop.kafka import encode
from driftloop.observations import checkers
from driftloop.spec import ModelSpec
from driftloop_feature.domain import check_batch, feature_rows
from tests.oracles import matrix

BASE = {
    "name": "shop",
    "features": [{"name": "amount", "type": "numeric", "min": 0}],
    "label": {"classes": [0, 1]},
    "algorithm": {"name": "logistic_regression"},
}
SPEC = ModelSpec.model_validate(
    {
        **BASE,
        "time_parts": [
            {"name": "hour", "part": "hour"},
            {"name": "weekday_ny", "part": "day_of_week", "timezone": "America/New_York"},
            {"name": "month", "part": "month"},
        ],
    }
)
MOMENTS = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))


@given(at=MOMENTS, amount=st.floats(0, 1e6))
def test_a_training_row_and_a_serving_row_at_the_same_moment_are_identical(at, amount):
    observation = Observation(event_id="e", model="shop", features={"amount": amount}, label=1, event_time=at)
    specs = {"shop": SPEC}
    valid, errors = check_batch([encode(observation)], specs, checkers(specs))
    assert not errors
    feature_set = FeatureSet(SPEC)
    (row,), _ = feature_rows(feature_set, valid["shop"], {})  # the feature service's path
    training = feature_set.from_named([row["features"]])[0]
    serving = matrix(feature_set, [check_features(SPEC, {"amount": amount, **time_parts(SPEC, at)})])[0]
    np.testing.assert_array_equal(training, serving)


@given(at=MOMENTS)
def test_parts_are_read_in_their_time_zone(at):
    local = at.astimezone(ZoneInfo("America/New_York"))
    assert time_parts(SPEC, at) == {"hour": at.hour, "weekday_ny": local.weekday(), "month": at.month}


def test_new_york_moves_its_clocks_but_not_its_days():
    before = datetime(2026, 3, 8, 6, 59, tzinfo=UTC)  # 01:59 EST, Sunday
    after = before + timedelta(minutes=2)  # 03:01 EDT, still Sunday
    assert time_parts(SPEC, before)["weekday_ny"] == time_parts(SPEC, after)["weekday_ny"] == 6


@pytest.mark.parametrize(
    "time_part",
    [
        {"name": "h", "part": "hour", "timezone": "Mars/Olympus"},
        {"name": "h", "part": "second"},
        {"name": "amount", "part": "hour"},  # clashes with a feature
    ],
)
def test_bad_time_parts_are_refused(time_part):
    with pytest.raises(ValidationError):
        ModelSpec.model_validate({**BASE, "time_parts": [time_part]})


def test_inference_adds_the_parts_as_of_arrival_and_request_values_win():
    from driftloop_inference.domain import Request
    from driftloop_inference.handlers import InferenceHandler

    at = datetime(2026, 11, 22, 15, tzinfo=UTC)
    plain, replayed, other = InferenceHandler._with_time_parts(
        [
            Request("r1", "shop", {"amount": 1.0}),
            Request("r2", "shop", {"amount": 1.0, "hour": 3.0}),
            Request("r3", "other", {"x": 1.0}),
        ],
        at,
        {"shop": SPEC},
    )
    assert plain.features == {"amount": 1.0, **time_parts(SPEC, at)}
    assert replayed.features["hour"] == 3.0
    assert other.features == {"x": 1.0}
