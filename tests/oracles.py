"""Test oracles: plain, row-by-row versions of what the platform does vectorised. They are never
used by the platform; tests hold its fast paths equal to them."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping

import numpy as np

from driftloop.features import FeatureSet


def row(feature_set: FeatureSet, clean: Mapping[str, float | str]) -> list[float]:
    """Encode one validated row (from `check_features`), one feature at a time: what
    `FeatureSet.encode_many` must give for it."""
    out: list[float] = []
    for feature in feature_set.spec.inputs:
        value = clean[feature.name]
        if feature.type == "numeric":
            number = float(value)
            if feature.transform == "log1p":
                number = math.log1p(number)
            elif feature.transform == "clip":
                assert feature.min is not None and feature.max is not None
                number = min(max(number, feature.min), feature.max)
            elif feature.transform == "bucketize":
                assert feature.buckets is not None
                number = float(bisect.bisect_right(feature.buckets, number))
            out.append(number)
        else:
            assert feature.categories is not None
            known = value in feature.categories
            out += [1.0 if value == c else 0.0 for c in feature.categories]
            out.append(0.0 if known else 1.0)
    return out


def named(feature_set: FeatureSet, clean: Mapping[str, float | str]) -> dict[str, float]:
    """One validated row encoded as {output name: value}."""
    return dict(zip(feature_set.names, row(feature_set, clean), strict=True))


def matrix(feature_set: FeatureSet, rows: Iterable[Mapping[str, float | str]]) -> np.ndarray:
    """Many validated rows encoded into a float32 matrix, one row per input."""
    encoded = [row(feature_set, r) for r in rows]
    if not encoded:
        return np.zeros((0, len(feature_set.names)), dtype=np.float32)
    return np.asarray(encoded, dtype=np.float32)
