"""Explanations (`driftloop.explain`): contributions equal a brute-force oracle and, for a model
additive in its inputs, the exact effect of each input; backgrounds from a version's statistics;
inference explains the requests that ask, and only those, by the version that answered."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftloop import datasets
from driftloop.artifacts import OnnxClassifier
from driftloop.explain import Background, background, contributions, input_columns
from driftloop.features import FeatureSet, check_features
from driftloop.fitting import reference_stats
from driftloop.spec import load_spec
from driftloop_inference.domain import Lineup, Request, ServingModel, score
from tests.conftest import ROOT
from tests.helpers import sea_onnx, sea_rows
from tests.oracles import matrix

rows_of = st.integers(1, 5).flatmap(
    lambda n: st.lists(st.lists(st.floats(0, 1), min_size=3, max_size=3), min_size=n, max_size=n)
)


def random_background(rng: np.random.Generator) -> Background:
    inputs = []
    for name, column in (("a", 0), ("b", 1), ("c", 2)):
        k = int(rng.integers(1, 6))
        weights = rng.random(k) + 0.1
        inputs.append((name, (column,), rng.random((k, 1)), weights / weights.sum()))
    return Background(tuple(inputs))


@settings(max_examples=50, deadline=None)
@given(X=rows_of, seed=st.integers(0, 2**32 - 1))
def test_contributions_equal_a_brute_force_oracle(X, seed):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(3, 3))

    def proba(M):  # a non-additive three-class model
        logits = np.tanh(M @ W) * (1 + M[:, [0]] * M[:, [1]])
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    X = np.array(X)
    predicted = proba(X).argmax(axis=1)
    back = random_background(rng)
    got = contributions(proba, X, predicted, back)
    for r, row in enumerate(X):
        for name, columns, values, weights in back.inputs:
            replaced = []
            for value in values:
                changed = row.copy()
                changed[list(columns)] = value
                replaced.append(proba(changed[None, :])[0, predicted[r]])
            expected = proba(row[None, :])[0, predicted[r]] - float(np.dot(replaced, weights))
            assert got[r][name] == pytest.approx(expected, abs=2e-6)


@settings(max_examples=30, deadline=None)
@given(X=rows_of, w=st.lists(st.floats(-0.1, 0.1), min_size=3, max_size=3), seed=st.integers(0, 2**32 - 1))
def test_for_an_additive_model_a_contribution_is_the_inputs_own_effect(X, w, seed):
    """p(class 1) = 0.5 + sum_j w_j x_j: input j contributes w_j (x_j - E[x_j]), its SHAP value."""
    w = np.array(w)

    def proba(M):
        p = 0.5 + M @ w
        return np.stack([1 - p, p], axis=1)

    X = np.array(X)
    back = random_background(np.random.default_rng(seed))
    got = contributions(proba, X, np.ones(len(X), dtype=int), back)
    for r, row in enumerate(X):
        for j, (name, _, values, weights) in enumerate(back.inputs):
            assert got[r][name] == pytest.approx(w[j] * (row[j] - float(values[:, 0] @ weights)), abs=2e-6)


def test_a_background_comes_from_the_versions_statistics():
    spec = load_spec(ROOT / "models" / "agrawal.yaml")
    features = FeatureSet(spec)
    rows = [x for x, _ in itertools.islice(datasets.conform(spec, datasets.synthetic("agrawal", 0, 1)), 500)]
    X = matrix(features, [check_features(spec, x) for x in rows])
    stats = reference_stats(X, features.names)
    back = background(input_columns(spec, features.names), features.names, stats)
    by_name = {name: (columns, values, weights) for name, columns, values, weights in back.inputs}
    assert set(by_name) == {f.name for f in spec.inputs}
    columns, values, weights = by_name["salary"]
    assert values.shape == (11, 1) and weights.sum() == pytest.approx(1)
    assert values[0, 0] == pytest.approx(X[:, columns[0]].min()) and values[-1, 0] == pytest.approx(
        X[:, columns[0]].max()
    )
    columns, values, weights = by_name["elevel"]
    assert values.shape == (len(columns), len(columns)) and weights.sum() == pytest.approx(1)
    assert weights == pytest.approx(X[:, list(columns)].mean(axis=0) / X[:, list(columns)].mean(axis=0).sum())
    assert background([("x", [0])], ["x"], {}).inputs == ()  # no statistics: not explained


def test_inference_explains_the_requests_that_ask_and_only_those():
    spec = load_spec(ROOT / "models" / "sea.yaml")
    features = FeatureSet(spec)
    onnx, classes, names = sea_onnx(spec)
    X = matrix(features, [check_features(spec, x) for x, _ in sea_rows(600)])
    back = background(input_columns(spec, names), names, reference_stats(X, names))
    serving = ServingModel("sea", 3, OnnxClassifier(onnx, classes, names), features, back)
    requests = [
        Request("plain", "sea", {"x0": 9.0, "x1": 9.0, "x2": 5.0}),
        Request("asks", "sea", {"x0": 9.0, "x1": 9.0, "x2": 5.0}, explain=True),
        Request("low", "sea", {"x0": 0.5, "x1": 0.5, "x2": 5.0}, explain=True),
    ]
    plain, asks, low = score(requests, {"sea": spec}, Lineup({"sea": serving})).results
    assert plain["explanation"] is None and plain["probabilities"] == asks["probabilities"]
    for answer in (asks, low):
        explanation = answer["explanation"]
        assert set(explanation) == {"x0", "x1", "x2"} and answer["model_version"] == 3
        # x0 + x1 far from the threshold: both pushed towards the answer; x2 (noise) hardly matters
        assert min(explanation["x0"], explanation["x1"]) > 0.05 > abs(explanation["x2"])
