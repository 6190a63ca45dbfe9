import inspect
import logging
from pathlib import Path
from typing import get_args

import pytest
import yaml
from pydantic import ValidationError

from driftloop.algorithms import DETECTORS, ESTIMATORS
from driftloop.parameters import DETECTOR_CLASSES, DETECTOR_PARAMETERS, DETECTOR_SIGNATURES
from driftloop.spec import (
    ALGORITHMS,
    BUILDS,
    DriftSpec,
    ModelSpec,
    SpecRefused,
    describe,
    load_spec,
    load_specs,
    read_specs,
)

ROOT = Path(__file__).resolve().parents[2]


def _data(**overrides):
    data = {
        "name": "demo",
        "features": [{"name": "a", "type": "numeric"}],
        "label": {"classes": [0, 1]},
        "algorithm": {"name": "logistic_regression"},
    }
    data.update(overrides)
    return data


def _spec(**overrides):
    return ModelSpec.model_validate(_data(**overrides))


def _refusal(**overrides) -> str:
    with pytest.raises(ValidationError) as caught:
        _spec(**overrides)
    return describe(caught.value)


def test_the_shipped_specs_load():
    catalog = read_specs(ROOT / "models")
    assert catalog.refused == {}
    assert "sea" in catalog.specs
    assert [f.name for f in catalog.specs["sea"].features] == ["x0", "x1", "x2"]


@pytest.mark.parametrize("name", ["../../etc", "Sea", "", "a" * 65, "sea/x"])
def test_model_names_cannot_be_paths_or_odd(name):
    with pytest.raises(ValidationError):
        _spec(name=name)


def test_duplicate_features_and_bare_categoricals_are_refused():
    with pytest.raises(ValidationError, match="unique"):
        _spec(features=[{"name": "a", "type": "numeric"}, {"name": "a", "type": "numeric"}])
    with pytest.raises(ValidationError, match="categories"):
        _spec(features=[{"name": "c", "type": "categorical"}])


def test_unknown_spec_keys_are_refused():
    with pytest.raises(ValidationError):
        _spec(algorithmm={"name": "random_forest"})


def test_label_of_accepts_equivalent_spellings():
    spec = _spec()
    assert spec.label_of(1) == 1
    assert spec.label_of("1") == 1
    assert spec.label_of(True) == 1
    assert spec.label_of(2) is None


def _drift(**drift):
    return {"drift": drift}


def _feature(**feature):
    return {"features": [{"name": "a", "type": "numeric", **feature}]}


def _colour(**feature):
    return {"features": [{"name": "colour", "type": "categorical", "categories": ["red", "blue"], **feature}]}


REFUSED = {
    # the drift detector: names against River's signature, values by rule and by building it
    "adwin threshold": (_drift(params={"threshold": 50}), "drift.params.threshold", "no parameter"),
    "negative delta": (_drift(params={"delta": -0.1}), "drift.params.delta", "greater than 0"),
    "delta of 1": (_drift(params={"delta": 1}), "drift.params.delta", "less than 1"),
    "text delta": (_drift(params={"delta": "0.1"}), "drift.params.delta", "valid number"),
    "true delta": (_drift(params={"delta": True}), "drift.params.delta", "valid number"),
    "adwin clock 0": (_drift(params={"clock": 0}), "drift.params.clock", "greater than or equal to 1"),
    "adwin float clock": (_drift(params={"clock": 1.5}), "drift.params.clock", "valid integer"),
    "page-hinkley mode": (
        _drift(detector="page_hinkley", params={"mode": "sideways"}),
        "drift.params.mode",
        "'up', 'down' or 'both'",
    ),
    "page-hinkley threshold": (
        _drift(detector="page_hinkley", params={"threshold": -1}),
        "drift.params.threshold",
        "greater than 0",
    ),
    "kswin stat_size": (
        _drift(detector="kswin", params={"window_size": 10}),
        "drift.params",
        "KSWIN needs window_size (10) at least twice stat_size (30)",
    ),
    "kswin window under twice stat_size": (  # River draws stat_size samples from the rest
        _drift(detector="kswin", params={"window_size": 31}),
        "drift.params",
        "KSWIN needs window_size (31) at least twice stat_size (30)",
    ),
    "kswin window": (
        _drift(detector="kswin", params={"window": [0, 1]}),
        "drift.params.window",
        "cannot be set",
    ),
    "kswin seed": (_drift(detector="kswin", params={"seed": "x"}), "drift.params.seed", "valid integer"),
    "twin out of range": (
        _drift(detector="kswin", params={"alpha": 0.5}),
        "drift.params.alpha",
        "warning twin",
    ),
    "warning params": (_drift(warning_params={"delta": 2}), "drift.warning_params.delta", "less than 1"),
    "unknown detector": (_drift(detector="cusum"), "drift.detector", "'adwin'"),
    # categories
    "duplicate category": (_colour(categories=["red", "red"]), "features[0].categories[1]", "listed twice"),
    "boolean category": (_colour(categories=[True, "no"]), "features[0].categories[0]", "quote it"),
    "number category": (_colour(categories=["0", 1]), "features[0].categories[1]", "quote it"),
    "reserved category": (_colour(categories=["__unknown__"]), "features[0].categories[0]", "unknown bucket"),
    "empty categories": (_colour(categories=[]), "features[0].categories", "needs categories"),
    "categorical min": (_colour(min=0), "features[0].min", "numeric features only"),
    "categorical transform": (_colour(transform="log1p"), "features[0].transform", "numeric features only"),
    "numeric categories": (_feature(categories=["x"]), "features[0].categories", "categorical features only"),
    # names against each other and the encoder's columns
    "feature named like a column": (
        {"features": [*_colour()["features"], {"name": "colour=red", "type": "numeric"}]},
        "features[1].name",
        "column 'colour=red'",
    ),
    "columns of two categoricals": (
        {
            "features": [
                {"name": "a", "type": "categorical", "categories": ["b=c"]},
                {"name": "a=b", "type": "categorical", "categories": ["c"]},
            ]
        },
        "features[1].name",
        "column 'a=b=c'",
    ),
    "aggregate named like a column": (
        {**_colour(), "aggregates": [{"name": "colour=__unknown__", "stat": "count", "last_n": 5}]},
        "aggregates[0].name",
        "column",
    ),
    "time part named like a feature": (
        {"time_parts": [{"name": "a", "part": "hour"}]},
        "time_parts[0].name",
        "not unique",
    ),
    "aggregate of a categorical": (
        {**_colour(), "aggregates": [{"name": "m", "stat": "mean", "of": "colour", "last_n": 5}]},
        "aggregates[0].of",
        "not a numeric feature",
    ),
    "label named like a feature": (
        {"label": {"name": "a", "classes": [0, 1]}},
        "label.name",
        "also an input",
    ),
    "empty feature name": ({"features": [{"name": "", "type": "numeric"}]}, "features[0].name", "at least 1"),
    "time zone directory": (
        {"time_parts": [{"name": "h", "part": "hour", "timezone": "America"}]},
        "time_parts[0].timezone",
        "unknown time zone",
    ),
    # ranges and defaults
    "min above max": (_feature(min=10, max=0), "features[0].min", "above max"),
    "text default": (_feature(default="high"), "features[0].default", "is a string"),
    "default above max": (_feature(min=0, max=10, default=11), "features[0].default", "outside"),
    "clip default outside": (
        _feature(min=0, max=1, transform="clip", default=2),
        "features[0].default",
        "outside",
    ),
    "log1p default": (_feature(transform="log1p", default=-1), "features[0].default", "above -1"),
    "log1p max": (_feature(transform="log1p", max=-2), "features[0].max", "above -1"),
    "boolean default": (_feature(default=True), "features[0].default", "not a number or a string"),
    "list default": (_feature(default=[1]), "features[0].default", "not a number or a string"),
    "unknown categorical default": (
        _colour(default="green"),
        "features[0].default",
        "not one of the categories",
    ),
    "number categorical default": (_colour(default=1), "features[0].default", "not one of the categories"),
    "text min": (_feature(min="0"), "features[0].min", "valid number"),
    # numbers: finite, integers within JSON's exact range
    "nan min": (_feature(min=float("nan")), "features[0].min", "finite"),
    "inf max": (_feature(max=float("inf")), "features[0].max", "finite"),
    "inf default": (_feature(default=float("inf")), "features[0].default", "not a finite number"),
    "nan floor": ({"gate": {"floor": float("nan")}}, "gate.floor", "finite"),
    "inf threshold": (
        {"drift": {"covariate": {"threshold": float("inf")}}},
        "drift.covariate.threshold",
        "finite",
    ),
    "huge window": ({"drift": {"covariate": {"window": 10**30}}}, "drift.covariate.window", "2**53"),
    "inf algorithm param": (
        {"algorithm": {"name": "logistic_regression", "params": {"C": float("inf")}}},
        "algorithm.params",
        "not a finite number",
    ),
    # buckets
    "buckets not increasing": (
        _feature(transform="bucketize", buckets=[0, 5, 5]),
        "features[0].buckets[2]",
        "must increase",
    ),
    "infinite bucket": (
        _feature(transform="bucketize", buckets=[0, float("inf")]),
        "features[0].buckets[1]",
        "finite",
    ),
    "no buckets": (_feature(transform="bucketize", buckets=[]), "features[0].buckets", "at least one edge"),
    "buckets without bucketize": (_feature(buckets=[1, 2]), "features[0].buckets", "only with it"),
    # the gate and training
    "accuracy floor of 60": ({"gate": {"floor": 60}}, "gate.floor", "in [0, 1]"),
    "negative log loss floor": ({"gate": {"metric": "log_loss", "floor": -1}}, "gate.floor", "at least 0"),
    "negative seed": ({"training": {"seed": -1}}, "training.seed", "greater than or equal to 0"),
    "min rows above window": (
        {"training": {"window_rows": 100, "min_rows": 500}},
        "training.min_rows",
        "above window_rows",
    ),
    # the label's classes
    "1 and '1'": ({"label": {"classes": [1, "1"]}}, "label.classes[1]", "same class as 1"),
    "repeated class": ({"label": {"classes": ["a", "a"]}}, "label.classes[1]", "same class"),
    "boolean classes": ({"label": {"classes": [False, True]}}, "label.classes[0]", "quote it"),
    "float class": ({"label": {"classes": [0, 1.5]}}, "label.classes[1]", "not an integer or a string"),
    # the estimator: names against get_params(), values by scikit-learn's own constraints
    "unknown estimator param": (
        {"algorithm": {"name": "random_forest", "params": {"n_trees": 10}}},
        "algorithm.params.n_trees",
        "RandomForestClassifier has no parameter 'n_trees'",
    ),
    "negative C": (
        {"algorithm": {"name": "logistic_regression", "params": {"C": -1}}},
        "algorithm.params.C",
        "range (0.0, inf]",
    ),
    "text max_iter": (
        {"algorithm": {"name": "hist_gradient_boosting", "params": {"max_iter": "many"}}},
        "algorithm.params.max_iter",
        "max_iter",
    ),
    "unknown search param": (
        {"algorithm": {"name": "logistic_regression", "search": {"param_distributions": {"depth": [1]}}}},
        "algorithm.search.param_distributions.depth",
        "no parameter",
    ),
    "bad search value": (
        {"algorithm": {"name": "logistic_regression", "search": {"param_distributions": {"C": [1.0, 0]}}}},
        "algorithm.search.param_distributions.C[1]",
        "range",
    ),
    "empty search values": (
        {"algorithm": {"name": "logistic_regression", "search": {"param_distributions": {"C": []}}}},
        "algorithm.search.param_distributions.C",
        "at least one value",
    ),
}


@pytest.mark.parametrize(("overrides", "path", "why"), REFUSED.values(), ids=REFUSED.keys())
def test_a_bad_field_is_refused_with_its_path_and_why(overrides, path, why):
    message = _refusal(**overrides)
    assert message.startswith(f"{path}: "), message
    assert why in message
    assert "\n" not in message


ACCEPTED = {
    "default among the categories": _colour(default="blue"),
    "default within range": _feature(min=0, max=10, default=10),
    "quoted yes/no categories": _colour(categories=["yes", "no"]),
    "integer and text classes": {"label": {"classes": [0, "one"]}},
    "kswin with its own warning twin": _drift(
        detector="kswin", params={"alpha": 0.5}, warning_params={"alpha": 0.9}
    ),
    "page-hinkley": _drift(detector="page_hinkley", params={"threshold": 20, "mode": "up"}),
    "a '=' in a name that collides with nothing": {"features": [{"name": "ratio=a/b", "type": "numeric"}]},
    "searched estimator": {
        "algorithm": {"name": "random_forest", "search": {"param_distributions": {"max_depth": [2, None]}}}
    },
}


@pytest.mark.parametrize("overrides", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_good_fields_are_accepted(overrides):
    _spec(**overrides)


def test_the_detector_and_estimator_tables_are_the_ones_the_services_build_from():
    from driftloop import fitting as training

    assert training._ESTIMATORS is ESTIMATORS
    assert set(get_args(DriftSpec.model_fields["detector"].annotation)) == set(DETECTORS)
    assert set(ALGORITHMS) == set(ESTIMATORS)


@pytest.mark.parametrize("detector", sorted(DETECTORS))
def test_every_settable_detector_parameter_is_in_rivers_signature(detector):
    signature = tuple(inspect.signature(DETECTORS[detector]).parameters)
    assert DETECTOR_SIGNATURES[detector] == signature
    assert set(DETECTOR_PARAMETERS[detector]) <= set(signature)
    assert DETECTOR_CLASSES[detector] == DETECTORS[detector].__name__


@pytest.mark.parametrize("params", [{"threshold": 50}, {"delta": -1}, {"window": [0, 1]}, {"clock": 0}])
def test_services_that_do_not_build_detectors_refuse_the_same_parameters(params):
    """Ingest, feature, inference and the registry check detector parameters against the table
    alone (River is slow to import): they refuse what the monitor, which builds them, refuses."""
    data = _data(drift={"detector": "adwin" if "window" not in params else "kswin", "params": params})
    refusals = []
    for build in (frozenset(), BUILDS):
        with pytest.raises(ValidationError) as refused:
            ModelSpec.model_validate(data, context={"build": build})
        refusals.append(refused.value.errors()[0]["msg"])
    assert refusals[0] == refusals[1]


def _write(directory: Path, name: str, content: str | bytes) -> Path:
    path = directory / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def test_a_bad_file_is_refused_alone(tmp_path, caplog):
    good = yaml.safe_dump(_data(name="good"))
    _write(tmp_path, "good.yaml", good)
    refused = {
        _write(tmp_path, "broken.yaml", "features: [\n"): "is not valid YAML",
        _write(tmp_path, "list.yml", "- 1\n- 2\n"): "holds list, not a mapping",
        _write(tmp_path, "empty.yaml", ""): "holds NoneType, not a mapping",
        _write(tmp_path, "latin1.yaml", "name: caf\xe9\n".encode("latin-1")): "is not valid YAML",
        _write(tmp_path, "twice.yaml", good + "name: other\n"): "key 'name' is given twice",
        _write(tmp_path, "huge.yaml", "#" * (2 << 20)): "larger than",
        _write(
            tmp_path, "bad.yaml", yaml.safe_dump(_data(name="bad", drift={"params": {"threshold": 50}}))
        ): ("drift.params.threshold: ADWIN has no parameter 'threshold'"),
    }
    (tmp_path / "folder.yaml").mkdir()
    refused[tmp_path / "folder.yaml"] = "cannot be read"
    with caplog.at_level(logging.ERROR, logger="driftloop.spec"):
        specs = load_specs(tmp_path)
    assert list(specs) == ["good"]
    catalog = read_specs(tmp_path)
    assert list(catalog.specs) == ["good"] and set(catalog.refused) == set(refused)
    for path, why in refused.items():
        assert why in catalog.refused[path] and "\n" not in catalog.refused[path]
        assert any(str(path) in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


def test_a_model_declared_twice_is_refused_in_every_file(tmp_path):
    _write(tmp_path, "a.yaml", yaml.safe_dump(_data(name="twin")))
    _write(tmp_path, "b.yml", yaml.safe_dump(_data(name="twin", description="the other one")))
    _write(tmp_path, "c.yaml", yaml.safe_dump(_data(name="single")))
    catalog = read_specs(tmp_path)
    assert list(catalog.specs) == ["single"]
    assert set(catalog.refused) == {tmp_path / "a.yaml", tmp_path / "b.yml"}
    assert "also declared in" in catalog.refused[tmp_path / "a.yaml"]


def test_load_spec_names_the_file(tmp_path):
    features = [{"name": "a", "type": "numeric", "min": 1, "max": 0}]
    path = _write(tmp_path, "x.yaml", yaml.safe_dump(_data(features=features)))
    with pytest.raises(SpecRefused) as caught:
        load_spec(path)
    assert str(caught.value) == f"{path}: features[0].min: 1.0 is above max (0.0)"


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path):
    levels = ["&a0 [1, 2, 3, 4, 5, 6, 7, 8, 9]"]
    levels += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]  # 9**10 values
    bomb = "name: bomb\nfeatures: [{name: a, type: numeric}]\nlabel: {classes: [0, 1]}\n"
    bomb += f"algorithm: {{name: logistic_regression, params: {{class_weight: [{', '.join(levels)}]}}}}\n"
    with pytest.raises(SpecRefused, match=r"algorithm.params: holds more than \d+ values"):
        load_spec(_write(tmp_path, "bomb.yaml", bomb))


def test_deeply_nested_yaml_is_refused_not_a_crash(tmp_path):
    path = _write(tmp_path, "deep.yaml", "[" * 5_000 + "]" * 5_000)
    with pytest.raises(SpecRefused, match="not valid YAML"):
        load_spec(path)


def test_services_that_build_nothing_load_specs_without_river_or_scikit_learn(tmp_path):
    """Ingest, feature, inference and the registry load specs without the 1.7 s and ~130 MB of
    River and scikit-learn (a spec without a drift section too: its default one is checked)."""
    import subprocess
    import sys

    plain = {
        "name": "plain",
        "features": [{"name": "a", "type": "numeric"}],
        "label": {"classes": [0, 1]},
        "algorithm": {"name": "hist_gradient_boosting", "params": {"max_iter": 10}},
    }
    _write(tmp_path, "plain.yaml", yaml.safe_dump(plain))
    for spec in (ROOT / "models").glob("*.yaml"):
        _write(tmp_path, spec.name, spec.read_text())
    check = (
        "import sys; from pathlib import Path; from driftloop.spec import read_specs; "
        f"catalog = read_specs(Path({str(tmp_path)!r}), frozenset()); "
        "print(sorted(catalog.specs), sorted(m for m in ('river', 'sklearn') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    shipped = sorted([*(spec.stem for spec in (ROOT / "models").glob("*.yaml")), "plain"])
    assert done.stdout.strip() == f"{shipped} []", done.stdout + done.stderr
