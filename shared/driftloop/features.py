"""Feature definitions: one code path turns raw values into model inputs, for training and serving.

`FeatureSet.row` is the only encoder; `FeatureSet.matrix` stacks its rows, so a training row and a
serving row built from the same raw values are identical by construction (tests check it too).
"""

from __future__ import annotations

import bisect
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from driftloop.contracts import InvalidInput
from driftloop.spec import FeatureSpec, ModelSpec

UNKNOWN = "__unknown__"
_NUMBERS = frozenset({float, int})


def _check_one(spec: FeatureSpec, value: Any) -> float | str:
    if spec.type == "numeric":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput("wrong_type", f"{spec.name} must be a number, got {value!r:.80}")
        number = float(value)
        if not math.isfinite(number):
            raise InvalidInput("not_finite", f"{spec.name} is {number}")
        if (spec.min is not None and number < spec.min and spec.transform != "clip") or (
            spec.max is not None and number > spec.max and spec.transform != "clip"
        ):
            raise InvalidInput("out_of_range", f"{spec.name}={number} outside [{spec.min}, {spec.max}]")
        if spec.transform == "log1p" and number <= -1:
            raise InvalidInput("out_of_range", f"{spec.name}={number} is not > -1 for log1p")
        return number
    if not isinstance(value, str):
        raise InvalidInput("wrong_type", f"{spec.name} must be a string, got {value!r:.80}")
    return value


def check_features(spec: ModelSpec, features: Mapping[str, Any]) -> dict[str, float | str]:
    """Validated raw values by feature name, defaults filled in; raises `InvalidInput`."""
    clean: dict[str, float | str] = {}
    for feature in spec.inputs:
        value = features.get(feature.name)
        if value is None:
            if feature.default is not None:
                value = feature.default
            elif feature.required:
                raise InvalidInput("missing_feature", f"{feature.name} is required")
            else:
                value = 0.0 if feature.type == "numeric" else UNKNOWN
        clean[feature.name] = _check_one(feature, value)
    return clean


class FeatureSet:
    """The encoder of one model spec: raw values in, a float vector out."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.names: list[str] = []
        for feature in spec.inputs:
            if feature.type == "numeric":
                self.names.append(feature.name)
            else:
                assert feature.categories is not None
                self.names += [f"{feature.name}={c}" for c in [*feature.categories, UNKNOWN]]
        # bounds and transforms of all-numeric specs, as vectors for `encode_many`
        self._numeric_only = all(f.type == "numeric" for f in spec.inputs)
        names = [f.name for f in spec.inputs]
        self._pick: Callable[[Mapping[str, Any]], tuple[Any, ...]] = (
            operator.itemgetter(*names) if len(names) > 1 else lambda raw: (raw[names[0]],)
        )
        low, high, clip_low, clip_high, log1p = [], [], [], [], []
        for f in spec.inputs:
            clipped = f.transform == "clip"  # clipped features are never out of range
            lowest = -np.inf if f.min is None or clipped else f.min
            if f.transform == "log1p":  # log1p needs x > -1
                lowest = max(lowest, float(np.nextafter(-1.0, 0.0)))
            low.append(lowest)
            high.append(np.inf if f.max is None or clipped else f.max)
            clip_low.append(f.min if clipped and f.min is not None else -np.inf)
            clip_high.append(f.max if clipped and f.max is not None else np.inf)
            log1p.append(f.transform == "log1p")
        self._low, self._high = np.array(low), np.array(high)
        self._clip_low, self._clip_high = np.array(clip_low), np.array(clip_high)
        self._log1p = np.array(log1p, dtype=bool)
        self._buckets = [
            (j, np.asarray(f.buckets)) for j, f in enumerate(spec.inputs) if f.buckets is not None
        ]

    def row(self, clean: Mapping[str, float | str]) -> list[float]:
        """Encode one validated row (from `check_features`)."""
        out: list[float] = []
        for feature in self.spec.inputs:
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

    def named(self, clean: Mapping[str, float | str]) -> dict[str, float]:
        """Encode one validated row as {output name: value}."""
        return dict(zip(self.names, self.row(clean), strict=True))

    def matrix(self, rows: Iterable[Mapping[str, float | str]]) -> np.ndarray:
        """Encode many validated rows into a float32 matrix, one row per input."""
        encoded = [self.row(r) for r in rows]
        if not encoded:
            return np.zeros((0, len(self.names)), dtype=np.float32)
        return np.asarray(encoded, dtype=np.float32)

    def encode_many(
        self, raws: Sequence[Mapping[str, Any]]
    ) -> tuple[np.ndarray, list[int], dict[int, InvalidInput]]:
        """Validate and encode raw rows at once: (matrix of the valid rows, their indices, errors by index).

        Gives exactly what `check_features` + `row` give row by row (a property test checks it), but
        all-numeric rows of plain numbers are checked and transformed as one numpy matrix; any other
        row takes the row-by-row path, which also words its error.
        """
        fast: list[tuple[Any, ...]] = []
        fast_index: list[int] = []
        slow: list[int] = []
        for i, raw in enumerate(raws):
            if self._numeric_only:
                try:
                    values = self._pick(raw)
                except KeyError:
                    values = ()
                if values and set(map(type, values)) <= _NUMBERS:  # not bool, not None, not str
                    fast.append(values)
                    fast_index.append(i)
                    continue
            slow.append(i)
        encoded: dict[int, np.ndarray] = {}
        errors: dict[int, InvalidInput] = {}
        if fast:
            X = np.array(fast, dtype=np.float64)
            within = np.isfinite(X) & (self._low <= X) & (self._high >= X)
            ok: list[bool] = np.all(within, axis=1).tolist()  # type: ignore[assignment]
            with np.errstate(divide="ignore", invalid="ignore"):  # such rows are rejected above
                X[:, self._log1p] = np.log1p(X[:, self._log1p])
            X = np.clip(X, self._clip_low, self._clip_high)
            for j, edges in self._buckets:
                X[:, j] = np.searchsorted(edges, X[:, j], side="right")
            for row, i, good in zip(X, fast_index, ok, strict=True):
                if good:
                    encoded[i] = row
                else:
                    slow.append(i)
        for i in slow:
            try:
                encoded[i] = np.asarray(self.row(check_features(self.spec, raws[i])), dtype=np.float64)
            except InvalidInput as exc:
                errors[i] = exc
        order = sorted(encoded)
        matrix = (
            np.asarray([encoded[i] for i in order], dtype=np.float32)
            if order
            else np.zeros((0, len(self.names)), dtype=np.float32)
        )
        return matrix, order, errors

    def from_named(self, rows: Iterable[Mapping[str, float]]) -> np.ndarray:
        """Stack already-encoded named rows (as in `features.computed`) in this set's column order."""
        return np.asarray([[r[n] for n in self.names] for r in rows], dtype=np.float32).reshape(
            -1, len(self.names)
        )


def decode_stored(spec: ModelSpec, stored: Mapping[str, str]) -> dict[str, float | str]:
    """Raw values read back from the online store (strings) in the spec's types; unknown keys dropped."""
    out: dict[str, float | str] = {}
    for feature in spec.features:
        if feature.name in stored:
            value = stored[feature.name]
            out[feature.name] = float(value) if feature.type == "numeric" else value
    return out


HISTORY_FIELD = "_history"  # an entity's recent events for aggregates, in its online-store hash


def online_key(model: str, entity_id: str) -> str:
    """Redis key of an entity's latest raw features in the online store."""
    return f"online:{model}:{entity_id}"


def missing_features(spec: ModelSpec, features: Mapping[str, Any]) -> list[str]:
    """Required features without a value or a default."""
    return [
        f.name for f in spec.features if f.required and f.default is None and features.get(f.name) is None
    ]
