from driftloop.artifacts import OnnxClassifier
from driftloop.contracts import (
    PredictionResult,
)
from driftloop.features import FeatureSet
from driftloop.spec import ModelSpec
from driftloop_inference.domain import Lineup, Request, ServingModel, score, to_canary
from tests.helpers import sea_onnx

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
