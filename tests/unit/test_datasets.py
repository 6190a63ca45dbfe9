"""Synthetic streams are named and shaped by the model specs in models/: every stream's rows pass
its spec's validation, and each concept is a different labelling of the same inputs."""

import itertools

import pytest

from driftloop import datasets
from driftloop.features import FeatureSet, check_features
from driftloop.spec import load_specs
from tests.conftest import ROOT

SPECS = load_specs(ROOT / "models")


@pytest.mark.parametrize("name", sorted(datasets.SYNTHETIC))
def test_every_synthetic_stream_has_a_spec_its_rows_pass(name):
    spec = SPECS[name]
    concepts, _ = datasets.SYNTHETIC[name]
    for concept in (concepts.start, concepts.stop - 1):
        rows = list(itertools.islice(datasets.conform(spec, datasets.synthetic(name, concept, seed=3)), 500))
        X = FeatureSet(spec).matrix(check_features(spec, x) for x, _ in rows)
        assert X.shape == (500, len(FeatureSet(spec).names))
        assert {spec.label_of(y) for _, y in rows} <= set(spec.label.classes)


def test_concepts_label_the_same_inputs_differently():
    first = list(itertools.islice(datasets.synthetic("agrawal", 0, seed=5), 2000))
    second = list(itertools.islice(datasets.synthetic("agrawal", 2, seed=5), 2000))
    assert [x for x, _ in first] == [x for x, _ in second]
    assert sum(a != b for (_, a), (_, b) in zip(first, second, strict=True)) > 200


def test_abrupt_drift_switches_concept_at_the_given_row():
    drifted = datasets.abrupt(
        datasets.synthetic("stagger", 0, 1), datasets.synthetic("stagger", 2, 7), at=100
    )
    rows = list(itertools.islice(drifted, 300))
    first, second = datasets.synthetic("stagger", 0, 1), datasets.synthetic("stagger", 2, 7)
    assert rows == list(itertools.islice(first, 100)) + list(itertools.islice(second, 200))


def test_unknown_stream_or_concept_is_refused():
    with pytest.raises(ValueError, match="unknown synthetic stream"):
        datasets.synthetic("nope", 0, 1)
    with pytest.raises(ValueError, match=r"concepts 0\.\.2"):
        datasets.synthetic("stagger", 3, 1)
