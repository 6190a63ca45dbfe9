from pathlib import Path

import pytest
from pydantic import ValidationError

from driftloop.spec import ModelSpec, load_specs

ROOT = Path(__file__).resolve().parents[2]


def _spec(**overrides):
    data = {
        "name": "demo",
        "features": [{"name": "a", "type": "numeric"}],
        "label": {"classes": [0, 1]},
        "algorithm": {"name": "logistic_regression"},
    }
    data.update(overrides)
    return ModelSpec.model_validate(data)


def test_the_shipped_specs_load():
    specs = load_specs(ROOT / "models")
    assert "sea" in specs
    assert [f.name for f in specs["sea"].features] == ["x0", "x1", "x2"]


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
