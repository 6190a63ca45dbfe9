"""A dataset version's profile (exploratory data analysis, computed by the trainer as it builds the
dataset): per input its distribution (a histogram, or category shares), the rows at its default
and out of range, the label balance, and how far each input moved from the data the champion was
trained on (PSI against its shipped reference statistics, as the monitor measures drift).

Values are the encoder's (after the spec's transforms): what the model sees."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from driftloop.contracts import DatasetProfile, FeatureProfile, FeatureStats, Label
from driftloop.distributions import Reference, class_psi
from driftloop.spec import UNKNOWN, FeatureSpec, ModelSpec

BINS = 20


def profile(
    spec: ModelSpec,
    X: np.ndarray,
    y: Sequence[Label],
    reference: Mapping[str, FeatureStats] | None = None,
    compared_with: int | None = None,
) -> DatasetProfile:
    """The profile of an encoded dataset (`X`: the spec's columns, `FeatureSet.names`) and its
    labels; shifts against `reference` (the champion's training statistics by column), if any.

    >>> spec = ModelSpec.model_validate({"name": "m", "label": {"name": "y", "classes": [0, 1]},
    ...     "algorithm": {"name": "logistic_regression"}, "features": [
    ...     {"name": "x", "type": "numeric"},
    ...     {"name": "c", "type": "categorical", "categories": ["a", "b"], "default": "a"}]})
    >>> X = np.array([[0.0, 1, 0, 0], [1.0, 0, 1, 0], [2.0, 1, 0, 0], [3.0, 0, 0, 1]])
    >>> p = profile(spec, X, [0, 1, 1, 1])
    >>> p.labels, [f.kind for f in p.features], p.features[1].shares, p.features[1].at_default
    ({'0': 1, '1': 3}, ['numeric', 'categorical'], {'a': 0.5, 'b': 0.25, '__unknown__': 0.25}, 2)
    """
    reference = reference or {}
    features = []
    first = 0
    for feature in spec.inputs:
        columns = feature.columns
        block = X[:, first : first + len(columns)]
        first += len(columns)
        if feature.type == "numeric":
            features.append(_numeric(feature, block[:, 0], reference.get(feature.name)))
        else:
            features.append(_categorical(feature, block, columns, reference))
    labels = Counter(str(label) for label in y)
    return DatasetProfile(
        rows=len(X),
        labels=dict(sorted(labels.items())),
        features=features,
        compared_with=compared_with if reference else None,
    )


def _numeric(feature: FeatureSpec, values: np.ndarray, reference: FeatureStats | None) -> FeatureProfile:
    values = values if np.issubdtype(values.dtype, np.floating) else values.astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if len(values) else (0.0, 0.0)
    counts, edges = np.histogram(
        values, bins=BINS if high > low else 1, range=(low, high) if high > low else None
    )
    default = feature.default
    at_default = None
    if feature.transform == "none" and isinstance(default, int | float):  # in the matrix's precision
        at_default = int((values == values.dtype.type(default)).sum())
    out_of_range = shift = None
    if reference is not None and len(values):
        out_of_range = int(((values < reference.min) | (values > reference.max)).sum())
        shift = Reference(reference).psi(values.astype(np.float64))
    return FeatureProfile(
        name=feature.name,
        kind="numeric",
        mean=float(values.mean()) if len(values) else None,
        std=float(values.std()) if len(values) else None,
        min=low if len(values) else None,
        max=high if len(values) else None,
        edges=[float(e) for e in edges],
        counts=[int(c) for c in counts],
        at_default=at_default,
        out_of_range=out_of_range,
        shift=shift,
    )


def _categorical(
    feature: FeatureSpec, block: np.ndarray, columns: Sequence[str], reference: Mapping[str, FeatureStats]
) -> FeatureProfile:
    categories = [*(feature.categories or []), UNKNOWN]
    rows = len(block)
    counts = [
        int(n) for n in np.rint(block.sum(axis=0, dtype=np.float64) if rows else np.zeros(len(columns)))
    ]
    shares = {c: n / rows if rows else 0.0 for c, n in zip(categories, counts, strict=True)}
    default = feature.default if isinstance(feature.default, str) else None
    at_default = None
    if default is not None:
        at_default = counts[categories.index(default) if default in categories else -1]
    shift = None
    if rows and all(column in reference for column in columns):
        expected = {c: reference[column].mean for c, column in zip(categories, columns, strict=True)}
        shift = class_psi(expected, dict(zip(categories, counts, strict=True)))
    return FeatureProfile(
        name=feature.name,
        kind="categorical",
        shares=shares,
        at_default=at_default,
        unknown=counts[-1],
        shift=shift,
    )
