import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftloop.artifacts import OnnxClassifier
from driftloop.contracts import (
    Feedback,
    InvalidInput,
    PredictionRequest,
    PredictionResult,
    plain_feedback,
    plain_request,
    plain_result,
    read,
    read_exact,
    result_json,
)
from driftloop.features import FeatureSet
from driftloop.spec import ModelSpec
from driftloop_inference.domain import Lineup, Request, ServingModel, read_request, score, to_canary
from tests.helpers import JSON, sea_onnx

GOOD = {"x0": 9.0, "x1": 9.0, "x2": 1.0}


def _serving(spec, version, variant=0):
    onnx, classes, names = sea_onnx(spec, variant=variant)
    return ServingModel(spec.name, version, OnnxClassifier(onnx, classes, names), FeatureSet(spec))


def _with_mode(spec, mode, share=0.5):
    return ModelSpec.model_validate(
        {**spec.model_dump(), "serving": {"challenger_mode": mode, "canary_share": share}}
    )


def test_every_request_gets_one_result_in_order(sea_spec):
    lineup = Lineup({"sea": _serving(sea_spec, 3)})
    requests = [
        Request(request_id="a", model="sea", features=GOOD),
        Request(request_id="b", model="nope", features=GOOD),
        Request(request_id="c", model="sea", features={"x0": 1.0}),
        Request(request_id="d", model="sea", features={**GOOD, "x0": 0.5}),
    ]
    scored = score(requests, {"sea": sea_spec}, lineup)
    results = scored.results
    assert [r["request_id"] for r in results] == ["a", "b", "c", "d"]
    assert results[0]["model_version"] == 3 and results[0]["error"] is None
    assert results[0]["prediction"] == 1  # 9 + 9 is well above every SEA threshold
    assert abs(sum(results[0]["probabilities"].values()) - 1) < 1e-5
    assert results[1]["error"] == "unknown_model"
    assert results[2]["error"].startswith("missing_feature")
    assert results[3]["error"] is None
    assert scored.shadow == []
    for result in results:  # every result is exactly the contract
        assert PredictionResult.model_validate(result).model_dump(mode="json") == result


def test_without_a_champion_requests_get_an_error(sea_spec):
    request = Request(request_id="a", model="sea", features={"x0": 1, "x1": 1, "x2": 1})
    (result,) = score([request], {"sea": sea_spec}, Lineup()).results
    assert result["error"] == "no_champion" and result["model_version"] == 0


def test_a_shadow_challenger_answers_every_request_on_the_side(sea_spec):
    spec = _with_mode(sea_spec, "shadow")
    lineup = Lineup({"sea": _serving(spec, 1)}, {"sea": _serving(spec, 2, variant=3)})
    requests = [Request(request_id=f"r{i}", model="sea", features=GOOD) for i in range(50)]
    requests.append(Request(request_id="bad", model="sea", features={}))
    scored = score(requests, {"sea": spec}, lineup)
    assert {r["model_version"] for r in scored.results if not r["error"]} == {1}
    assert [r["request_id"] for r in scored.shadow] == [f"r{i}" for i in range(50)]
    assert {r["model_version"] for r in scored.shadow} == {2}


def test_a_canary_serves_a_stable_share_chosen_by_request_id(sea_spec):
    spec = _with_mode(sea_spec, "canary", share=0.3)
    lineup = Lineup({"sea": _serving(spec, 1)}, {"sea": _serving(spec, 2)})
    requests = [Request(request_id=f"req-{i}", model="sea", features=GOOD) for i in range(2000)]
    first = score(requests, {"sea": spec}, lineup)
    again = score(requests, {"sea": spec}, lineup)
    versions = [r["model_version"] for r in first.results]
    assert versions == [r["model_version"] for r in again.results]  # stable per request id
    assert 0.26 < versions.count(2) / len(versions) < 0.34
    assert versions == [2 if to_canary(r.request_id, 0.3) else 1 for r in requests]
    assert first.shadow == []


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
def test_the_fast_reader_agrees_with_the_contract(payload):
    raw = orjson.dumps(payload)
    try:
        contract = PredictionRequest.model_validate(orjson.loads(raw))
    except ValueError:
        with pytest.raises(InvalidInput):
            read_request(raw)
        return
    request = read_request(raw)
    assert request == Request(
        contract.request_id, contract.model, dict(contract.features), contract.entity_id
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
