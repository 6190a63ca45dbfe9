"""Property-based: arbitrary YAML documents, and arbitrary values in every field of a valid spec, are
either refused at load — one line naming the file, the field and why — or accepted, and then every
service can use the spec: the encoder builds and encodes a row, the monitor's drift detectors build
and learn, the estimator builds. Never a crash later."""

import copy
import math
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from driftloop.algorithms import ESTIMATORS, detector_parameters, estimator_parameters
from driftloop.features import FeatureSet, check_features
from driftloop.fitting import build_estimator
from driftloop.parameters import DETECTOR_PARAMETERS
from driftloop.policy import ConceptDriftMonitor
from driftloop.spec import ModelSpec, read_specs
from tests.oracles import row as encoded_row

BASE: dict[str, Any] = {
    "name": "fuzz",
    "description": "every field of a spec",
    "features": [
        {"name": "x", "type": "numeric", "required": True, "min": 0, "max": 10, "transform": "clip"},
        {"name": "colour", "type": "categorical", "required": False, "categories": ["red", "blue"]},
        {"name": "amount", "type": "numeric", "transform": "bucketize", "buckets": [0, 10, 100]},
        {"name": "size", "type": "numeric", "min": 0, "default": 1.5, "transform": "log1p"},
    ],
    "aggregates": [
        {"name": "x_mean_3", "stat": "mean", "of": "x", "last_n": 3},
        {"name": "n_1h", "stat": "count", "window_s": 3600},
    ],
    "time_parts": [{"name": "hour", "part": "hour", "timezone": "Europe/Berlin"}],
    "label": {"name": "y", "classes": [0, 1]},
    "algorithm": {"name": "logistic_regression", "params": {"C": 1.0, "max_iter": 100}, "search": None},
    "training": {
        "window_rows": 20000,
        "min_rows": 500,
        "holdout_fraction": 0.2,
        "seed": 7,
        "parity_tolerance": 0.001,
        "wait_for_rows_s": 120,
    },
    "gate": {
        "metric": "accuracy",
        "floor": 0.6,
        "max_regression": 0.01,
        "auto_promote": True,
        "min_holdout_rows": 500,
        "confidence": 0.95,
    },
    "drift": {
        "detector": "adwin",
        "params": {"delta": 0.002},
        "warning_params": None,
        "warning_hold_samples": 1000,
        "only_degradation": True,
        "warmup_samples": 0,
        "cooldown_rows": 1000,
        "covariate": {"statistic": "psi", "threshold": None, "clear": None, "window": 1000, "every": 250},
        "prediction": {"window": 1000, "every": 250, "confirmations": 2},
    },
    "retrain": {
        "trigger": "both",
        "every_rows": 2000,
        "every_s": None,
        "window_rows": 5000,
        "window": "since_change_at_least",
        "min_rows": 1000,
        "recency_half_life_rows": None,
        "retry_rejected": True,
        "below_floor_rows": 1000,
    },
    "serving": {"challenger_mode": "shadow", "canary_share": 0.1},
}


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every field of the base spec, containers included."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, (*prefix, i))
    return out


DETECTOR_KEYS = [
    "delta", "clock", "max_buckets", "min_window_length", "grace_period", "threshold", "alpha", "mode",
    "min_instances", "window_size", "stat_size", "seed", "window", "x",
]  # fmt: skip
ESTIMATOR_KEYS = [
    "C", "max_iter", "n_estimators", "max_depth", "learning_rate", "penalty", "solver", "random_state",
    "l2_regularization", "max_leaf_nodes", "class_weight", "trees",
]  # fmt: skip
PATHS = [
    *_paths(BASE),
    ("features", 0, "default"),
    ("features", 1, "default"),
    ("features", 1, "min"),
    ("features", 3, "max"),
    ("features", 0, "buckets"),
    ("features", 0, "categories"),
    ("aggregates", 1, "last_n"),
    ("aggregates", 0, "window_s"),
    ("drift", "warning_params"),
    ("drift", "covariate", "confirmations"),
    ("features", 4),
    ("aggregates", 2),
    ("time_parts", 1),
    ("label", "classes", 2),
    ("extra",),
    *[("drift", "params", key) for key in DETECTOR_KEYS],
    *[("drift", "warning_params", key) for key in DETECTOR_KEYS],
    *[("algorithm", "params", key) for key in ESTIMATOR_KEYS],
    *[("algorithm", "search", "param_distributions", key) for key in ESTIMATOR_KEYS[:4]],
]
WORDS = [
    "adwin", "page_hinkley", "kswin", "cusum", "logistic_regression", "random_forest",
    "gradient_boosting", "hist_gradient_boosting", "numeric", "categorical", "none", "log1p", "clip",
    "bucketize", "count", "mean", "last", "hour", "day_of_week", "month", "UTC", "America",
    "Asia/Tokyo", "up", "both", "l1", "l2", "saga", "balanced", "log_loss", "ks", "canary", "red",
    "blue", "x", "colour", "colour=red", "x_mean_3", "y", "__unknown__", "yes", "", "1", "0.5",
]  # fmt: skip
NUMBERS = (
    st.integers(-3, 3)
    | st.integers()
    | st.sampled_from([0, 1, 2, 10, 50, 100, 1000, 2**31, 2**53 + 1, 10**30, -1])
    | st.floats()
    | st.sampled_from([0.0, 0.001, 0.002, 0.05, 0.5, 0.99, 1.0, -0.5, 1e308, math.nan, math.inf])
)
SCALARS = st.none() | st.booleans() | NUMBERS | st.sampled_from(WORDS) | st.text(max_size=8)
KEYS = st.sampled_from([*WORDS, *DETECTOR_KEYS, *ESTIMATOR_KEYS]) | st.text(max_size=4)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=8,
)


def _set(data: Any, path: tuple, value: Any) -> None:
    """Put `value` at `path`, making the containers on the way (a list index past the end appends)."""
    for i, key in enumerate(path[:-1]):
        nxt = path[i + 1]
        if isinstance(data, list):
            if not isinstance(key, int) or key >= len(data):
                return
            data = data[key]
            continue
        if not isinstance(data, dict):
            return
        if not isinstance(data.get(key), dict | list):
            data[key] = [] if isinstance(nxt, int) else {}
        data = data[key]
    last = path[-1]
    if isinstance(data, dict):
        data[last] = value
    elif isinstance(data, list) and isinstance(last, int):
        if last < len(data):
            data[last] = value
        else:
            data.append(value)


def _drop(data: Any, path: tuple) -> None:
    for key in path[:-1]:
        if not (isinstance(data, dict) and key in data) and not (
            isinstance(data, list) and isinstance(key, int) and key < len(data)
        ):
            return
        data = data[key]
    if isinstance(data, dict):
        data.pop(path[-1], None)


def _valid_value(feature) -> float | str:
    if feature.type == "categorical":
        return feature.default if feature.default is not None else feature.categories[0]
    if feature.default is not None:
        return feature.default
    low = -math.inf if feature.min is None else feature.min
    high = math.inf if feature.max is None else feature.max
    return min(max(0.0, low), high)  # above -1 for log1p: its max is above -1


def _behaves(spec: ModelSpec) -> None:
    """What the services do with a spec: encode rows, watch drift, build the estimator."""
    features = FeatureSet(spec)
    assert len(set(features.names)) == len(features.names)
    raw = {f.name: _valid_value(f) for f in spec.features}
    row = encoded_row(features, check_features(spec, raw))
    assert len(row) == len(features.names) and all(math.isfinite(v) for v in row)
    absent = {f.name: raw[f.name] for f in spec.features if f.required and f.default is None}
    X, valid, _ = features.encode_many([raw, absent, {}])
    assert valid[:2] == [0, 1] and X.shape[1] == len(features.names)
    assert [spec.label_of(c) for c in spec.label.classes] == spec.label.classes

    monitor = ConceptDriftMonitor(spec.drift)
    now = datetime(2026, 11, 22, tzinfo=UTC)
    for i in range(150):
        monitor.update(int(i >= 75), now)
        monitor.detector.update(i % 2)
        monitor.warning_detector.update(i % 2)
    build_estimator(spec.algorithm, spec.training.seed)


def _check(data: Any) -> None:
    """Load `data` (a document, or what to dump as one) as a spec file: refused on one line, or used."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "spec.yaml"
        text = data if isinstance(data, str) else yaml.safe_dump(data, allow_unicode=True)
        path.write_text(text, encoding="utf-8")
        catalog = read_specs(Path(directory))
    if catalog.refused:
        why = catalog.refused[path]
        assert why and "\n" not in why and "could not be checked" not in why, why
        assert not catalog.specs
        return
    (spec,) = catalog.specs.values()
    _behaves(spec)


def test_the_base_spec_is_valid_and_behaves():
    spec = ModelSpec.model_validate(BASE)
    assert spec.inputs[-1].name == "hour"
    _behaves(spec)


def _like(path: tuple) -> st.SearchStrategy[Any]:
    """Mostly values of the base spec's type at `path` (more of them pass the checks), else any."""
    base: Any = BASE
    for key in path:
        try:
            base = base[key]
        except (KeyError, IndexError, TypeError):
            return VALUES
    if isinstance(base, bool):
        typed: st.SearchStrategy[Any] = st.booleans()
    elif isinstance(base, int | float):
        typed = NUMBERS
    elif isinstance(base, str):
        typed = st.sampled_from(WORDS)
    else:
        return VALUES
    return st.one_of(typed, typed, typed, VALUES)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_value_in_any_field_is_refused_at_load_or_works(data):
    spec = copy.deepcopy(BASE)
    for path in data.draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=3), label="paths"):
        _set(spec, path, data.draw(_like(path), label=".".join(map(str, path))))
    if data.draw(st.booleans(), label="drop one"):
        _drop(spec, data.draw(st.sampled_from(PATHS), label="dropped"))
    _check(spec)


PLAUSIBLE = st.sampled_from([0.001, 0.002, 0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 100, "up", "l2", None, True])
PARAMETER_VALUES = st.one_of(PLAUSIBLE, PLAUSIBLE, PLAUSIBLE, NUMBERS, st.sampled_from(WORDS))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_detector_and_estimator_parameters_are_refused_at_load_or_work(data):
    spec = copy.deepcopy(BASE)
    drift, algorithm = spec["drift"], spec["algorithm"]
    drift["detector"] = data.draw(st.sampled_from(sorted(DETECTOR_PARAMETERS)), label="detector")
    names = st.sampled_from([*detector_parameters(drift["detector"]), "x"])
    drift["params"] = data.draw(st.dictionaries(names, PARAMETER_VALUES, max_size=2), label="params")
    drift["warning_params"] = data.draw(
        st.none() | st.dictionaries(names, PARAMETER_VALUES, max_size=2), label="warning_params"
    )
    algorithm["name"] = data.draw(st.sampled_from(sorted(ESTIMATORS)), label="algorithm")
    names = st.sampled_from([*estimator_parameters(algorithm["name"]), "x"])
    algorithm["params"] = data.draw(st.dictionaries(names, PARAMETER_VALUES, max_size=2), label="estimator")
    _check(spec)
    # the services that do not build detectors (River is slow to import) accept and refuse the same
    # drift sections as the monitor, which builds them
    verdicts = []
    for build in (frozenset(), frozenset({"detectors"})):
        try:
            ModelSpec.model_validate({**spec, "algorithm": BASE["algorithm"]}, context={"build": build})
            verdicts.append(None)
        except ValidationError as exc:
            verdicts.append(exc.errors()[0]["msg"])
    assert verdicts[0] == verdicts[1]


TOKENS = [*"abc:-[]{}&*!|>'\"#%@`, \t0123456789.", "\n", "\n  ", "name", "features", "yes", "~", ".nan"]
YAML_DOCUMENTS = (
    st.text(max_size=200)
    | st.lists(st.sampled_from(TOKENS), max_size=40).map("".join)
    | VALUES.map(yaml.safe_dump)
    | st.text(max_size=40).map(lambda extra: yaml.safe_dump(BASE) + extra)
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=YAML_DOCUMENTS)
def test_any_yaml_document_is_refused_at_load_or_works(document):
    _check(document)
