from driftloop.artifacts import OnnxClassifier
from driftloop.contracts import PredictionRequest, PredictionResult
from driftloop.features import FeatureSet
from driftloop_inference.domain import ServingModel, score
from tests.helpers import sea_onnx


def test_every_request_gets_one_result_in_order(sea_spec):
    onnx, classes, names = sea_onnx(sea_spec)
    serving = {"sea": ServingModel("sea", 3, OnnxClassifier(onnx, classes, names), FeatureSet(sea_spec))}
    good = {"x0": 9.0, "x1": 9.0, "x2": 1.0}
    requests = [
        PredictionRequest(request_id="a", model="sea", features=good),
        PredictionRequest(request_id="b", model="nope", features=good),
        PredictionRequest(request_id="c", model="sea", features={"x0": 1.0}),
        PredictionRequest(request_id="d", model="sea", features={**good, "x0": 0.5}),
    ]
    results = score(requests, {"sea": sea_spec}, serving)
    assert [r["request_id"] for r in results] == ["a", "b", "c", "d"]
    assert results[0]["model_version"] == 3 and results[0]["error"] is None
    assert results[0]["prediction"] == 1  # 9 + 9 is well above every SEA threshold
    assert abs(sum(results[0]["probabilities"].values()) - 1) < 1e-5
    assert results[1]["error"] == "unknown_model"
    assert results[2]["error"].startswith("missing_feature")
    assert results[3]["error"] is None
    for result in results:  # every result is exactly the contract
        assert PredictionResult.model_validate(result).model_dump(mode="json") == result


def test_without_a_champion_requests_get_an_error(sea_spec):
    request = PredictionRequest(request_id="a", model="sea", features={"x0": 1, "x1": 1, "x2": 1})
    (result,) = score([request], {"sea": sea_spec}, {})
    assert result["error"] == "no_champion" and result["model_version"] == 0
