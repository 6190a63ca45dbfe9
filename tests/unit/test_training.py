import numpy as np
import pytest

from driftloop import fitting as domain
from driftloop.artifacts import OnnxClassifier
from driftloop.features import FeatureSet, check_features
from driftloop.spec import AlgorithmSpec
from driftloop_training.adapters import convert
from tests.helpers import sea_rows
from tests.oracles import matrix


@pytest.mark.parametrize(
    "algorithm",
    ["logistic_regression", "random_forest", "gradient_boosting", "hist_gradient_boosting"],
)
def test_every_algorithm_converts_to_onnx_with_parity(sea_spec, algorithm):
    rows = sea_rows(800)
    feature_set = FeatureSet(sea_spec)
    X = matrix(feature_set, [check_features(sea_spec, x) for x, _ in rows])
    y = [label for _, label in rows]
    params = {"n_estimators": 20} if algorithm in {"random_forest", "gradient_boosting"} else {}
    estimator = domain.build_estimator(AlgorithmSpec(name=algorithm, params=params), seed=0)
    estimator.fit(X[:600], y[:600])
    onnx = OnnxClassifier(convert(estimator, X.shape[1]), list(estimator.classes_), feature_set.names)
    diff = np.abs(onnx.predict_proba(X[600:]) - estimator.predict_proba(X[600:])).max()
    assert diff < sea_spec.training.parity_tolerance
    assert domain.metrics(y[600:], onnx.predict_proba(X[600:]), [0, 1])["accuracy"] > 0.75


def test_holdout_is_the_newest_slice():
    assert domain.holdout_start(100, 0.2) == 80
    assert domain.holdout_start(3, 0.01) == 2


def test_columns_are_aligned_by_class_label():
    proba = np.array([[0.1, 0.9]])
    assert domain.align_columns(proba, [1, 0], [0, 1]).tolist() == [[0.9, 0.1]]
    assert domain.align_columns(proba, ["a", "b"], ["b", "c"]).tolist() == [[0.9, 0.0]]


def test_reference_stats_describe_each_feature():
    X = np.array([[0.0, 10.0], [2.0, 10.0]], dtype=np.float32)
    stats = domain.reference_stats(X, ["a", "b"])
    assert stats["a"].mean == 1.0 and stats["a"].max == 2.0 and stats["b"].std == 0.0
    assert len(stats["a"].quantiles) == 9
