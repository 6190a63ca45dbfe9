"""One feature definition for training and serving: identical input gives identical vectors."""

import math
from datetime import UTC, datetime

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftloop.contracts import InvalidInput, Observation, utcnow
from driftloop.features import Checker, FeatureSet, check_features, check_values
from driftloop.kafka import encode
from driftloop.observations import checkers
from driftloop.online import decode_stored
from driftloop.spec import ModelSpec
from driftloop_feature.domain import check_batch, feature_rows
from tests.oracles import matrix
from tests.oracles import row as encoded_row

MIXED = ModelSpec.model_validate(
    {
        "name": "mixed",
        "features": [
            {"name": "amount", "type": "numeric", "min": 0, "max": 1e6, "transform": "log1p"},
            {"name": "score", "type": "numeric", "min": 0, "max": 1, "transform": "clip"},
            {"name": "colour", "type": "categorical", "categories": ["red", "blue"]},
            {"name": "age", "type": "numeric", "required": False, "default": 30},
        ],
        "label": {"classes": ["no", "yes"]},
        "algorithm": {"name": "random_forest"},
    }
)


def _training_vector(spec, raw):
    feature_set = FeatureSet(spec)
    observation = Observation(event_id="e", model=spec.name, features=raw, event_time=utcnow())
    specs = {spec.name: spec}
    valid, errors = check_batch([encode(observation)], specs, checkers(specs))
    assert not errors
    (row,), _ = feature_rows(feature_set, valid[spec.name], {})
    return feature_set.from_named([row["features"]])[0]


def _serving_vector(spec, raw):
    return matrix(FeatureSet(spec), [check_features(spec, raw)])[0]


@given(
    amount=st.floats(0, 1e6),
    score=st.floats(-5, 5),
    colour=st.sampled_from(["red", "blue", "green", ""]),
    age=st.one_of(st.none(), st.integers(0, 120)),
)
def test_training_and_serving_vectors_are_identical(amount, score, colour, age):
    raw = {"amount": amount, "score": score, "colour": colour, "age": age}
    np.testing.assert_array_equal(_training_vector(MIXED, raw), _serving_vector(MIXED, raw))


def test_encoding_applies_transforms_and_an_unknown_bucket():
    feature_set = FeatureSet(MIXED)
    assert feature_set.names == [
        "amount",
        "score",
        "colour=red",
        "colour=blue",
        "colour=__unknown__",
        "age",
    ]
    row = encoded_row(
        feature_set, check_features(MIXED, {"amount": math.e - 1, "score": 3, "colour": "pink"})
    )
    assert row == pytest.approx([1.0, 1.0, 0.0, 0.0, 1.0, 30.0])


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"score": 0.5, "colour": "red"}, "missing_feature"),
        ({"amount": "10", "score": 0.5, "colour": "red"}, "wrong_type"),
        ({"amount": True, "score": 0.5, "colour": "red"}, "wrong_type"),
        ({"amount": -1, "score": 0.5, "colour": "red"}, "out_of_range"),
        ({"amount": float("inf"), "score": 0.5, "colour": "red"}, "not_finite"),
        ({"amount": 1, "score": 0.5, "colour": 3}, "wrong_type"),
    ],
)
def test_invalid_values_are_refused_with_a_reason(raw, reason):
    with pytest.raises(InvalidInput) as caught:
        check_features(MIXED, raw)
    assert caught.value.reason == reason


@given(
    st.dictionaries(
        st.sampled_from(["amount", "score", "colour", "age", "x"]),
        st.one_of(st.none(), st.booleans(), st.floats(), st.integers(), st.text(max_size=20)),
    )
)
def test_any_input_is_either_encoded_or_refused(raw):
    try:
        clean = check_features(MIXED, raw)
    except InvalidInput as exc:
        assert exc.reason
        return
    vector = encoded_row(FeatureSet(MIXED), clean)
    assert all(math.isfinite(v) for v in vector)


def test_values_read_back_from_the_online_store_keep_their_types():
    stored = b'{"amount": 12, "colour": "red", "score": "0.5", "other": 1}'
    assert decode_stored(MIXED, stored) == {"amount": 12.0, "colour": "red"}  # a wrong type is dropped
    assert decode_stored(MIXED, b"{oops") == decode_stored(MIXED, None) == {}


NUMERIC = ModelSpec.model_validate(
    {
        "name": "numeric",
        "features": [
            {"name": "a", "type": "numeric", "min": 0, "max": 100},
            {"name": "b", "type": "numeric", "min": 0, "max": 1, "transform": "clip"},
            {"name": "c", "type": "numeric", "transform": "log1p"},
            {"name": "e", "type": "numeric", "transform": "bucketize", "buckets": [-1, 0, 2.5, 10]},
            {"name": "d", "type": "numeric", "required": False, "default": 2.5},
        ],
        "label": {"classes": [0, 1]},
        "algorithm": {"name": "logistic_regression"},
    }
)
VALUES = st.one_of(
    st.floats(-3, 150), st.integers(-5, 200), st.none(), st.just(float("nan")), st.just(-1.0),
    st.just(float("inf")), st.booleans(), st.text(max_size=3),
)  # fmt: skip


def _raws(spec, data):
    names = [f.name for f in spec.features]
    values = VALUES if spec is NUMERIC else st.one_of(VALUES, st.sampled_from(["red", "blue", "pink"]))
    return data.draw(st.lists(st.dictionaries(st.sampled_from(names), values), max_size=12))


@pytest.mark.parametrize("spec", [NUMERIC, MIXED], ids=["numeric", "mixed"])
@given(data=st.data())
def test_batch_encoding_equals_row_by_row_encoding(spec, data):
    raws = _raws(spec, data)
    X, valid, errors = FeatureSet(spec).encode_many(raws)
    expected_rows, expected_errors = [], {}
    for i, raw in enumerate(raws):
        try:
            expected_rows.append(encoded_row(FeatureSet(spec), check_features(spec, raw)))
        except InvalidInput as exc:
            expected_errors[i] = exc.reason
    assert {i: e.reason for i, e in errors.items()} == expected_errors
    assert valid == [i for i in range(len(raws)) if i not in expected_errors]
    np.testing.assert_array_equal(
        X, np.asarray(expected_rows, dtype=np.float32).reshape(-1, len(FeatureSet(spec).names))
    )


def test_bucketize_counts_the_edges_at_or_below_a_value():
    spec = ModelSpec.model_validate(
        {
            "name": "b",
            "features": [{"name": "v", "type": "numeric", "transform": "bucketize", "buckets": [0, 10, 100]}],
            "label": {"classes": [0, 1]},
            "algorithm": {"name": "logistic_regression"},
        }
    )
    raws = [{"v": x} for x in (-5, 0, 9.9, 10, 1e6)]
    assert [encoded_row(FeatureSet(spec), check_features(spec, r)) for r in raws] == [
        [0.0],
        [1.0],
        [1.0],
        [2.0],
        [3.0],
    ]
    X, valid, _ = FeatureSet(spec).encode_many(raws)
    assert X[:, 0].tolist() == [0.0, 1.0, 1.0, 2.0, 3.0] and valid == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="increase"):
        ModelSpec.model_validate({**spec.model_dump(), "features": [{"name": "v", "type": "numeric",
                                  "transform": "bucketize", "buckets": [1, 1]}]})  # fmt: skip


@pytest.mark.parametrize("spec", [NUMERIC, MIXED], ids=["numeric", "mixed"])
@given(data=st.data())
def test_batch_checking_equals_row_by_row_checking(spec, data):
    raws = _raws(spec, data)
    clean, errors = Checker(spec.features).check_many(raws)
    expected_clean, expected_errors = {}, {}
    for i, raw in enumerate(raws):
        try:
            expected_clean[i] = check_values(spec.features, raw)
        except InvalidInput as exc:
            expected_errors[i] = exc.reason
    assert {i: e.reason for i, e in errors.items()} == expected_errors
    assert clean == expected_clean
    assert all(type(clean[i][k]) is type(v) for i, row in expected_clean.items() for k, v in row.items())


def test_feature_checks_read_event_times_in_utc_and_refuse_those_without_one():
    specs = {MIXED.name: MIXED}
    body = {"model": "mixed", "features": {"amount": 1, "score": 0.5, "colour": "red"}}
    raws = [
        orjson.dumps({**body, "event_id": "paris", "event_time": "2026-11-22T10:00:00+01:00"}),
        orjson.dumps({**body, "event_id": "naive", "event_time": "2026-11-22T09:00:00"}),
        orjson.dumps({**body, "event_id": "overflow", "event_time": "9999-12-31T23:59:59-01:00"}),
    ]
    valid, errors = check_batch(raws, specs, checkers(specs))
    times = {o.event_id: o.event_time for o in valid["mixed"].observations}
    assert times == dict.fromkeys(["paris", "naive"], datetime(2026, 11, 22, 9, tzinfo=UTC))
    assert all(t.tzinfo is UTC for t in times.values())
    assert [(i, e.reason) for i, e in errors.items()] == [(2, "event_time_out_of_range")]
