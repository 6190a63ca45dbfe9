"""Feature definitions: one code path turns raw values into model inputs, for training and serving.

`FeatureSet.row` is the only encoder; `FeatureSet.matrix` stacks its rows, so a training row and a
serving row built from the same raw values are identical by construction (tests check it too).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from itertools import chain
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from driftloop.contracts import InvalidInput
from driftloop.spec import UNKNOWN, FeatureSpec, ModelSpec

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
    """Validated raw values of every model input by name, defaults filled in; raises `InvalidInput`."""
    return check_values(spec.inputs, features)


def check_values(specs: Sequence[FeatureSpec], features: Mapping[str, Any]) -> dict[str, float | str]:
    """Validated raw values of the given features by name, defaults filled in; raises `InvalidInput`."""
    clean: dict[str, float | str] = {}
    for feature in specs:
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


def _getter(names: Sequence[str]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    if not names:
        return lambda raw: ()
    if len(names) == 1:
        name = names[0]
        return lambda raw: (raw[name],)
    return operator.itemgetter(*names)  # type: ignore[return-value]


def _absent(feature: FeatureSpec) -> Any:
    """What `check_features` uses for a missing value; None (refused) when it is required."""
    if feature.default is not None:
        return feature.default
    if feature.required:
        return None
    return 0.0 if feature.type == "numeric" else UNKNOWN


class Checker:
    """`check_features` over many rows at once. Rows whose values are all of their plain types
    (numbers for numeric features, strings for categorical ones) are range-checked as one numpy
    matrix; the others go through `check_features`, which also words their error."""

    def __init__(self, features: Sequence[FeatureSpec]) -> None:
        self.features = list(features)
        self.numeric = [f for f in features if f.type == "numeric"]
        self.categorical = [f for f in features if f.type == "categorical"]
        self._pick_numeric = _getter([f.name for f in self.numeric])
        self._pick_categorical = _getter([f.name for f in self.categorical])
        self._absent_numeric = [(f.name, _absent(f)) for f in self.numeric]
        self._absent_categorical = [(f.name, _absent(f)) for f in self.categorical]
        low, high = [], []
        for f in self.numeric:
            clipped = f.transform == "clip"  # clipped features are never out of range
            lowest = -np.inf if f.min is None or clipped else f.min
            if f.transform == "log1p":  # log1p needs x > -1
                lowest = max(lowest, float(np.nextafter(-1.0, 0.0)))
            low.append(lowest)
            high.append(np.inf if f.max is None or clipped else f.max)
        self._low, self._high = np.array(low), np.array(high)

    def _plain(self, raw: Mapping[str, Any]) -> tuple[tuple[Any, ...], tuple[Any, ...]] | None:
        try:
            numbers, strings = self._pick_numeric(raw), self._pick_categorical(raw)
        except KeyError:  # absent values take their defaults, as in `check_features`
            numbers = tuple(raw.get(name, absent) for name, absent in self._absent_numeric)
            strings = tuple(raw.get(name, absent) for name, absent in self._absent_categorical)
        except TypeError:
            return None
        if set(map(type, numbers)) <= _NUMBERS and set(map(type, strings)) <= {str}:
            return numbers, strings
        return None

    def screen(
        self, raws: Sequence[Mapping[str, Any]]
    ) -> tuple[np.ndarray, list[tuple[Any, ...]], list[int], list[int]]:
        """(numeric values as a float64 matrix, categorical values, of the rows that passed the
        vector check, their indices; the indices of the others, for `check_features`)."""
        numbers: list[tuple[Any, ...]] = []
        strings: list[tuple[Any, ...]] = []
        index: list[int] = []
        rest: list[int] = []
        pick_numeric, pick_categorical = self._pick_numeric, self._pick_categorical
        for i, raw in enumerate(raws):  # the usual row: every value there; types checked below
            try:
                if type(raw) is not dict:
                    raise TypeError
                numbers.append(pick_numeric(raw))
                strings.append(pick_categorical(raw))
                index.append(i)
            except (KeyError, TypeError):
                del numbers[len(index) :]
                rest.append(i)
        plain = set(map(type, chain.from_iterable(numbers))) <= _NUMBERS and set(
            map(type, chain.from_iterable(strings))
        ) <= {str}
        if rest or not plain:  # absent values take defaults; other types are looked at row by row
            numbers, strings, index, rest = [], [], [], []
            for i, raw in enumerate(raws):
                row = self._plain(raw) if isinstance(raw, Mapping) else None
                if row is None:
                    rest.append(i)
                else:
                    numbers.append(row[0])
                    strings.append(row[1])
                    index.append(i)
        X = np.array(numbers, dtype=np.float64).reshape(len(numbers), len(self.numeric))
        ok = np.all(np.isfinite(X) & (self._low <= X) & (self._high >= X), axis=1)
        if ok.all():
            return X, strings, index, rest
        good = ok.tolist()
        rest = sorted(rest + [i for i, g in zip(index, good, strict=True) if not g])
        return (
            X[ok],
            [s for s, g in zip(strings, good, strict=True) if g],
            [i for i, g in zip(index, good, strict=True) if g],
            rest,
        )

    def check_columns(
        self, raws: Sequence[Mapping[str, Any]]
    ) -> tuple[np.ndarray, list[tuple[Any, ...]], list[int], dict[int, InvalidInput]]:
        """The valid rows' values as columns — numeric values as a float64 matrix in `numeric`
        order, categorical values as tuples in `categorical` order — with their indices, in order;
        and the errors of the others by index: exactly what `check_features` gives row by row (a
        property test holds them equal)."""
        X, strings, index, rest = self.screen(raws)
        errors: dict[int, InvalidInput] = {}
        slow: list[tuple[int, dict[str, float | str]]] = []
        for i in rest:
            try:
                slow.append((i, check_values(self.features, raws[i])))
            except InvalidInput as exc:
                errors[i] = exc
        if slow:  # merged in index order
            numbers = np.array([[clean[f.name] for f in self.numeric] for _, clean in slow], dtype=np.float64)
            strings += [tuple(clean[f.name] for f in self.categorical) for _, clean in slow]
            index += [i for i, _ in slow]
            order = sorted(range(len(index)), key=index.__getitem__)
            X = np.vstack([X, numbers.reshape(len(slow), len(self.numeric))])[order]
            strings = [strings[k] for k in order]
            index = [index[k] for k in order]
        return X, strings, index, errors

    def rows(self, X: np.ndarray, strings: Sequence[tuple[Any, ...]]) -> list[dict[str, float | str]]:
        """Checked columns (`check_columns`) as one dict of values by feature name per row."""
        numeric = [f.name for f in self.numeric]
        categorical = [f.name for f in self.categorical]
        out: list[dict[str, float | str]] = []
        for numbers, words in zip(X.tolist(), strings, strict=True):
            values: dict[str, float | str] = dict(zip(numeric, numbers, strict=True))
            if categorical:
                values.update(zip(categorical, words, strict=True))
            out.append(values)
        return out

    def check_many(
        self, raws: Sequence[Mapping[str, Any]]
    ) -> tuple[dict[int, dict[str, float | str]], dict[int, InvalidInput]]:
        """`check_columns` with each valid row as a dict, by index."""
        X, strings, index, errors = self.check_columns(raws)
        return dict(zip(index, self.rows(X, strings), strict=True)), errors


class FeatureSet:
    """The encoder of one model spec: raw values in, a float vector out."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.checker = Checker(spec.inputs)
        self.names: list[str] = []
        numeric_columns: list[int] = []
        self._blocks: list[
            tuple[int, dict[str, int], int]
        ] = []  # (first column, category → offset, unknown offset)
        for feature in spec.inputs:
            if feature.type == "numeric":
                numeric_columns.append(len(self.names))
                self.names.append(feature.name)
            else:
                assert feature.categories is not None
                offsets = {c: k for k, c in enumerate(feature.categories)}
                self._blocks.append((len(self.names), offsets, len(feature.categories)))
                self.names += feature.columns
        self._numeric_columns = np.array(numeric_columns, dtype=np.intp)
        numeric = self.checker.numeric  # transforms, as vectors over the numeric columns
        self._clip_low = np.array(
            [f.min if f.transform == "clip" else -np.inf for f in numeric], dtype=np.float64
        )
        self._clip_high = np.array(
            [f.max if f.transform == "clip" else np.inf for f in numeric], dtype=np.float64
        )
        self._log1p = np.array([f.transform == "log1p" for f in numeric], dtype=bool)
        self._buckets = [(j, np.asarray(f.buckets)) for j, f in enumerate(numeric) if f.buckets is not None]

    def encode_checked(self, X: np.ndarray, strings: Sequence[tuple[Any, ...]]) -> np.ndarray:
        """Encode checked columns of the inputs (`Checker.check_columns` of `spec.inputs`): apply
        the transforms to the numeric values and one-hot encode the categories (float64). `X` is
        transformed in place."""
        with np.errstate(divide="ignore", invalid="ignore"):  # such rows were refused
            X[:, self._log1p] = np.log1p(X[:, self._log1p])
        X = np.clip(X, self._clip_low, self._clip_high)
        for j, edges in self._buckets:
            X[:, j] = np.searchsorted(edges, X[:, j], side="right")
        out = np.zeros((len(X), len(self.names)), dtype=np.float64)
        out[:, self._numeric_columns] = X
        rows = np.arange(len(X))
        for k, (first, offsets, unknown) in enumerate(self._blocks):
            hot = np.fromiter((offsets.get(s[k], unknown) for s in strings), dtype=np.intp, count=len(X))
            out[rows, first + hot] = 1.0
        return out

    def encode_many(
        self, raws: Sequence[Mapping[str, Any]], dtype: type[np.floating[Any]] | None = np.float32
    ) -> tuple[np.ndarray, list[int], dict[int, InvalidInput]]:
        """Validate and encode raw rows at once: (matrix of the valid rows, their indices, errors by index).

        Gives exactly what `check_features` and a row-by-row encoding give (a property test holds it to
        the test oracle `tests/oracles.py`):
        checked as columns (`Checker.check_columns`), encoded as numpy matrices (`encode_checked`).
        The matrix is float32 as models take it, or float64 with `dtype=None`.
        """
        X, strings, index, errors = self.checker.check_columns(raws)
        encoded = self.encode_checked(X, strings)
        return (encoded if dtype is None else encoded.astype(dtype)), index, errors

    def from_named(self, rows: Iterable[Mapping[str, float]]) -> np.ndarray:
        """Stack already-encoded named rows (as in `features.computed`) in this set's column order."""
        return np.asarray([[r[n] for n in self.names] for r in rows], dtype=np.float32).reshape(
            -1, len(self.names)
        )


def time_parts(spec: ModelSpec, at: datetime) -> dict[str, float]:
    """The spec's time-part inputs of a moment: a training row's event time, a request's arrival.

    >>> from datetime import UTC
    >>> from driftloop.spec import ModelSpec
    >>> spec = ModelSpec.model_validate({"name": "m", "features": [{"name": "x", "type": "numeric"}],
    ...     "time_parts": [{"name": "hour", "part": "hour"},
    ...                    {"name": "local_day", "part": "day_of_week", "timezone": "Asia/Tokyo"}],
    ...     "label": {"classes": [0, 1]}, "algorithm": {"name": "logistic_regression"}})
    >>> time_parts(spec, datetime(2026, 11, 22, 20, 30, tzinfo=UTC))  # a Sunday; Monday in Tokyo
    {'hour': 20.0, 'local_day': 0.0}
    """
    out = {}
    for part in spec.time_parts:
        local = at.astimezone(ZoneInfo(part.timezone))
        value = {
            "minute": local.minute,
            "hour": local.hour,
            "day_of_week": local.weekday(),
            "day_of_month": local.day,
            "month": local.month,
        }[part.part]
        out[part.name] = float(value)
    return out


def missing_features(spec: ModelSpec, features: Mapping[str, Any]) -> list[str]:
    """Required features without a value or a default."""
    return [
        f.name for f in spec.features if f.required and f.default is None and features.get(f.name) is None
    ]
