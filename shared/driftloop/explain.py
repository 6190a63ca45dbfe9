"""Why a model decides what it decides, on the ONNX model itself (pure numpy over a
`predict_proba` callable, so any algorithm the spec names is explained the same way).

- **Global importance** of a version, at training time, on its holdout: permutation importance —
  how much accuracy falls when one input's columns are shuffled across rows (the others kept), the
  mean of a few shuffles. An input the model ignores scores 0; the order is the order of reliance.
- **Per-request contributions**, at serving time, for requests that ask (`"explain": true`):
  marginal occlusion — for each input, the predicted class's probability minus its mean when that
  input is replaced by values from its training distribution (the version's reference
  statistics: eleven quantiles for a number, each category by its share for a one-hot input), the
  other inputs held. Positive: the input pushed towards the answer given. It costs one model run
  over `inputs x background` rows per explained request, whatever the algorithm; Kernel SHAP would
  need hundreds of evaluations per input and a dependency that compiles code at import. For a
  model additive in its inputs, the contributions are the SHAP values against the same background.

An input is all the encoded columns it makes (a categorical feature's one-hot block, moved as
one), named as the spec names it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from driftloop.contracts import FeatureStats
from driftloop.spec import ModelSpec

Proba = Callable[[np.ndarray], np.ndarray]
QUANTILES = np.linspace(0.0, 1.0, 11)  # the background of a numeric column, from its percentiles


def input_columns(spec: ModelSpec, names: Sequence[str]) -> list[tuple[str, list[int]]]:
    """Each model input with the indices of its columns among `names` (a model's feature names)."""
    at = {name: i for i, name in enumerate(names)}
    out = []
    for feature in spec.inputs:
        columns = [at[c] for c in feature.columns if c in at]
        if columns:
            out.append((feature.name, columns))
    return out


def permutation_importance(
    proba: Proba,
    X: np.ndarray,
    truth: np.ndarray,
    inputs: Sequence[tuple[str, list[int]]],
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """Mean fall of accuracy when each input's columns are shuffled across the rows of `X`
    (`truth`: the index of each row's true class).

    >>> X = np.array([[0.0, 5.0], [1.0, 5.0]] * 50)
    >>> proba = lambda X: np.stack([1 - X[:, 0], X[:, 0]], axis=1)  # reads column 0 only
    >>> scores = permutation_importance(proba, X, X[:, 0].astype(int), [("a", [0]), ("b", [1])])
    >>> scores["a"] > 0.3, scores["b"]
    (True, 0.0)
    """
    rng = np.random.default_rng(seed)
    base = float((proba(X).argmax(axis=1) == truth).mean())
    out = {}
    for name, columns in inputs:
        falls = []
        for _ in range(repeats):
            shuffled = X.copy()
            shuffled[:, columns] = X[rng.permutation(len(X))][:, columns]
            falls.append(base - float((proba(shuffled).argmax(axis=1) == truth).mean()))
        out[name] = round(float(np.mean(falls)), 6)
    return out


@dataclass(frozen=True)
class Background:
    """Per input, the values it is replaced by and their weights (summing to 1)."""

    inputs: tuple[
        tuple[str, tuple[int, ...], np.ndarray, np.ndarray], ...
    ]  # (name, columns, values, weights)

    @property
    def rows(self) -> int:
        """Model rows one explained request costs (besides its own)."""
        return sum(len(values) for _, _, values, _ in self.inputs)


def background(
    inputs: Sequence[tuple[str, list[int]]], names: Sequence[str], reference: Mapping[str, FeatureStats]
) -> Background:
    """The values each input is replaced by, from the version's training statistics: a numeric
    column's quantiles 0, 10, ..., 100 % (equal weights); a one-hot block's categories, each by
    its share of the training rows. An input without statistics is left out (not explained)."""
    out = []
    for name, columns in inputs:
        stats = [reference.get(names[c]) for c in columns]
        if any(s is None for s in stats):
            continue
        if len(columns) == 1:
            (s,) = stats
            assert s is not None
            if s.percentiles:
                values = np.quantile(np.asarray(s.percentiles), QUANTILES)  # 0, 10, ..., 100 %
            else:
                values = np.asarray([s.min, *s.quantiles, s.max])
            out.append((name, tuple(columns), values.reshape(-1, 1), np.full(len(values), 1 / len(values))))
        else:  # a one-hot block: each category's vector, weighted by how often it was on
            shares = np.clip(np.asarray([s.mean for s in stats if s is not None]), 0.0, None)
            if shares.sum() <= 0:
                continue
            out.append((name, tuple(columns), np.eye(len(columns)), shares / shares.sum()))
    return Background(tuple(out))


def contributions(
    proba: Proba, X: np.ndarray, predicted: np.ndarray, back: Background
) -> list[dict[str, float]]:
    """Per row of `X` (the index of its predicted class in `predicted`), each input's contribution
    to that class's probability: the probability minus its weighted mean over the background.
    One model run for all the rows.

    >>> proba = lambda X: np.stack([1 - X[:, 0], X[:, 0]], axis=1)
    >>> back = Background((("a", (0,), np.array([[0.0], [1.0]]), np.array([0.5, 0.5])),
    ...                    ("b", (1,), np.array([[0.0], [9.0]]), np.array([0.5, 0.5]))))
    >>> contributions(proba, np.array([[0.9, 3.0]]), np.array([1]), back)
    [{'a': 0.4, 'b': 0.0}]
    """
    if not back.inputs or not len(X):
        return [{} for _ in range(len(X))]
    blocks = []
    for _, columns, values, _ in back.inputs:
        block = np.repeat(X, len(values), axis=0)  # row r's copies are rows r*k .. r*k + k - 1
        block[:, list(columns)] = np.tile(values, (len(X), 1))
        blocks.append(block)
    p = proba(np.vstack([X, *blocks]))
    rows = np.arange(len(X))
    own = p[rows, predicted]
    out: list[dict[str, float]] = [{} for _ in range(len(X))]
    start = len(X)
    for name, _, values, weights in back.inputs:
        k = len(values)
        replaced = p[start : start + len(X) * k].reshape(len(X), k, -1)[rows, :, predicted]
        start += len(X) * k
        for r, value in enumerate((own - replaced @ weights).tolist()):
            out[r][name] = round(value, 6)
    return out
