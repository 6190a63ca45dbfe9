"""The hot paths' codecs against their contracts, in one place: every fast reader of
`driftloop.contracts.FAST_READERS` accepts what its contract accepts, reads it as the contract
does and refuses the rest; every fast writer of `FAST_WRITERS` writes what the contract would.
Input is generated (valid and invalid shapes, wrong types, extra fields)."""

from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftloop.contracts import (
    FAST_READERS,
    FAST_WRITERS,
    FeatureRow,
    Feedback,
    InvalidInput,
    Observation,
    PredictionRequest,
    PredictionResult,
    feature_row_json,
    parse,
    plain_feedback,
    plain_request,
    plain_result,
    read,
    read_exact,
    result_json,
)
from driftloop.observations import Observed, read_observation
from driftloop_inference.domain import Request, read_request
from tests.helpers import JSON

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


def _fast_reader_agrees(fast, contract, carried, raw):
    """`fast(raw)` is what `contract(raw)` reads, as the hot path carries it (`carried`), or is
    refused for the same reason."""
    try:
        expected = contract(raw)
    except InvalidInput as exc:
        with pytest.raises(InvalidInput) as refused:
            fast(raw)
        assert refused.value.reason == exc.reason
        return
    assert fast(raw) == carried(expected)


@given(OBSERVATIONS)
def test_the_fast_observation_reader_agrees_with_the_contract(payload):
    _fast_reader_agrees(
        lambda raw: read_observation(raw, {"sea"}),
        lambda raw: parse(Observation, raw, {"sea"}),
        lambda o: Observed(o.event_id, o.model, dict(o.features), o.label, o.event_time, o.entity_id),
        orjson.dumps(payload),
    )


@given(st.datetimes(timezones=st.just(UTC)))
def test_event_times_as_ingest_writes_them_read_as_the_contract_reads_them(moment):
    raw = orjson.dumps({"event_id": "e", "model": "sea", "features": {}, "event_time": moment.isoformat()})
    read = read_observation(raw, {"sea"}).event_time
    assert read == parse(Observation, raw, {"sea"}).event_time == moment
    assert read.tzinfo is UTC  # already in UTC: nothing to convert


REQUESTS = st.fixed_dictionaries(
    {"request_id": st.one_of(st.text(max_size=300), st.integers(-(10**6), 10**6), st.none())},
    optional={
        "model": st.one_of(st.text(max_size=5), st.integers(-(10**6), 10**6)),
        "features": st.one_of(st.dictionaries(st.text(max_size=4), JSON, max_size=4), JSON),
        "entity_id": st.one_of(st.none(), st.text(max_size=4), st.integers(-(10**6), 10**6)),
        "schema_version": st.one_of(st.integers(0, 3), st.text(max_size=2)),
        "extra": JSON,
    },
)


@given(REQUESTS)
def test_the_inference_reader_agrees_with_the_contract(payload):
    _fast_reader_agrees(
        read_request,
        lambda raw: parse(PredictionRequest, raw),
        lambda r: Request(r.request_id, r.model, dict(r.features), r.entity_id),
        orjson.dumps(payload),
    )


@given(REQUESTS)
def test_the_shared_reader_agrees_with_the_contract_on_requests(payload):
    _reader_agrees(PredictionRequest, plain_request, payload)


NUMBERS = st.one_of(st.floats(allow_nan=False), st.integers(-(10**6), 10**6))
RESULTS = st.fixed_dictionaries(
    {
        "request_id": st.one_of(st.text(max_size=5), st.integers(-5, 5)),
        "model": st.one_of(st.text(max_size=5), st.none()),
        "model_version": st.one_of(st.integers(0, 10), st.floats(allow_nan=False), st.text(max_size=2)),
    },
    optional={
        "prediction": st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=3), JSON),
        "probabilities": st.one_of(
            st.none(), st.dictionaries(st.text(max_size=3), NUMBERS, max_size=3), JSON
        ),
        "error": st.one_of(st.none(), st.text(max_size=5), st.integers(0, 3)),
        "features": st.one_of(st.none(), st.dictionaries(st.text(max_size=3), JSON, max_size=3), JSON),
        "schema_version": st.one_of(st.integers(0, 3), st.text(max_size=2)),
        "extra": JSON,
    },
)


@given(RESULTS)
def test_the_shared_reader_agrees_with_the_contract_on_results(payload):
    _reader_agrees(PredictionResult, plain_result, payload)


def test_results_as_inference_writes_them_are_read_without_validation():
    raw = orjson.dumps(result_json("r1", "sea", 3, prediction=1, probabilities={"0": 0.25, "1": 0.75}))
    assert plain_result(orjson.loads(raw))
    assert read(PredictionResult, raw, plain_result) == PredictionResult(
        request_id="r1", model="sea", model_version=3, prediction=1, probabilities={"0": 0.25, "1": 0.75}
    )


FEEDBACK = st.fixed_dictionaries(
    {
        "request_id": st.one_of(st.text(max_size=300), st.integers(-5, 5)),
        "model": st.one_of(st.text(max_size=3), st.none()),
    },
    optional={
        "label": st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=3), JSON),
        "schema_version": st.one_of(st.integers(0, 3), st.text(max_size=2)),
        "extra": JSON,
    },
)


@given(FEEDBACK)
def test_the_shared_reader_agrees_with_the_contract_on_feedback(payload):
    _reader_agrees(Feedback, plain_feedback, payload)


def _reader_agrees(kind, plain, payload):
    """`read` accepts what the contract accepts, as the contract reads it, and refuses the rest;
    `read_exact`'s bytes hold the same contract in exactly its types (read again without validating)."""
    raw = orjson.dumps(payload)
    try:
        contract = kind.model_validate(orjson.loads(raw))
    except ValueError:
        with pytest.raises(InvalidInput):
            read(kind, raw, plain)
        with pytest.raises(InvalidInput):
            read_exact(kind, raw, plain)
        return
    assert read(kind, raw, plain) == contract
    message, exact = read_exact(kind, raw, plain)
    assert message == contract
    assert plain(orjson.loads(exact))
    assert kind.model_validate_json(exact) == contract


def test_the_hot_path_feature_row_is_the_contract():
    at = datetime(2026, 11, 22, 9, 30, 0, 250, tzinfo=UTC)
    row = feature_row_json("e1", "mixed", None, at, {"amount": 1.5}, "yes")
    contract = FeatureRow(event_id="e1", model="mixed", event_time=at, features={"amount": 1.5}, label="yes")
    assert FeatureRow.model_validate_json(orjson.dumps(row)) == contract
    assert orjson.loads(orjson.dumps(row))["event_time"] == at.isoformat()


LABELS = st.one_of(st.integers(-5, 5), st.text(max_size=3), st.floats(allow_nan=False, allow_infinity=False))
WRITTEN = {
    PredictionResult: st.fixed_dictionaries(
        {
            "request_id": st.text(min_size=1, max_size=5),
            "model": st.text(max_size=5),
            "model_version": st.integers(0, 10**6),
        },
        optional={
            "prediction": st.one_of(st.none(), LABELS),
            "probabilities": st.one_of(
                st.none(), st.dictionaries(st.text(max_size=3), st.floats(0, 1), max_size=3)
            ),
            "error": st.one_of(st.none(), st.text(max_size=5)),
            "features": st.one_of(
                st.none(),
                st.dictionaries(
                    st.text(max_size=3),
                    st.one_of(
                        st.none(), st.text(max_size=3), st.floats(allow_nan=False, allow_infinity=False)
                    ),
                    max_size=3,
                ),
            ),
        },
    ),
    FeatureRow: st.fixed_dictionaries(
        {
            "event_id": st.text(min_size=1, max_size=5),
            "model": st.text(max_size=5),
            "entity_id": st.one_of(st.none(), st.text(max_size=4)),
            "event_time": st.datetimes(timezones=st.just(UTC)),
            "features": st.dictionaries(
                st.text(max_size=3), st.floats(allow_nan=False, allow_infinity=False), max_size=4
            ),
            "label": st.one_of(st.none(), LABELS),
        },
    ),
}
READ = {Observation: OBSERVATIONS, PredictionRequest: REQUESTS, PredictionResult: RESULTS, Feedback: FEEDBACK}


def test_every_codec_of_the_contracts_is_tested_here():
    assert set(FAST_READERS) == set(READ) and set(FAST_WRITERS) == set(WRITTEN)


@pytest.mark.parametrize("kind", list(WRITTEN), ids=lambda k: k.__name__)
@given(data=st.data())
def test_every_fast_writer_writes_its_contract(kind, data):
    fields = data.draw(WRITTEN[kind])
    written = orjson.loads(orjson.dumps(FAST_WRITERS[kind](**fields)))
    assert set(written) == set(kind.model_fields)
    assert kind.model_validate(written) == kind(**fields)
