"""Fitting a candidate, pure: estimators from the spec, recency weights, the holdout split, metrics,
the paired comparison with the champion, reference statistics. The trainer and the backtest both
call it."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.metrics import accuracy_score, balanced_accuracy_score, log_loss
from sklearn.model_selection import HalvingRandomSearchCV, TimeSeriesSplit

from driftloop.algorithms import ESTIMATORS as _ESTIMATORS
from driftloop.contracts import CalibrationTable, FeatureRow, FeatureStats, Label, PairedComparison
from driftloop.estimation import Calibration
from driftloop.spec import AlgorithmSpec, ModelSpec


def build_estimator(algorithm: AlgorithmSpec, seed: int) -> ClassifierMixin:
    """The scikit-learn estimator a spec names, with its parameters and the seed."""
    params = dict(algorithm.params)
    params.setdefault("random_state", seed)
    estimator: ClassifierMixin = _ESTIMATORS[algorithm.name](**params)
    return estimator


def recency_weights(rows: int, half_life: int | None) -> np.ndarray | None:
    """Sample weights that halve every `half_life` rows back from the newest (None: all equal).

    >>> recency_weights(3, 1).tolist()
    [0.25, 0.5, 1.0]
    """
    if half_life is None:
        return None
    age = np.arange(rows - 1, -1, -1, dtype=np.float64)
    return np.power(0.5, age / half_life)


def fit(
    spec: ModelSpec, X: np.ndarray, y: Sequence[Label], weights: np.ndarray | None = None
) -> tuple[Any, dict[str, Any]]:
    """The fitted estimator the spec asks for, and what a search chose (empty without one).

    With `algorithm.search`, candidates are compared by successive halving on time-ordered folds
    (never training on rows newer than those it is scored on), then the best is refitted on all rows.
    `weights` (recency weighting) go to the estimator's `sample_weight`.
    """
    estimator = build_estimator(spec.algorithm, spec.training.seed)
    search_spec = spec.algorithm.search
    fit_params = {} if weights is None else {"sample_weight": weights}
    if search_spec is None:
        estimator.fit(X, y, **fit_params)
        return estimator, {}
    search = HalvingRandomSearchCV(
        estimator,
        search_spec.param_distributions,
        n_candidates=search_spec.n_candidates,
        cv=TimeSeriesSplit(n_splits=search_spec.cv),
        scoring="neg_log_loss" if spec.gate.metric == "log_loss" else spec.gate.metric,
        random_state=spec.training.seed,
        refit=True,
        n_jobs=1,
    )
    search.fit(X, y, **fit_params)
    chosen = {f"search.best.{k}": v for k, v in search.best_params_.items()}
    return search.best_estimator_, chosen | {
        "search.candidates": search_spec.n_candidates,
        "search.best_score": float(search.best_score_),
    }


@dataclass(frozen=True)
class Candidate:
    """A fitted candidate: the estimator, its parameters (with what a search and the window choice
    chose), the rows it was fitted on (`fitted_from` up to the holdout at `cut`) and its
    probabilities on the holdout (columns in `classes` order)."""

    estimator: Any
    params: dict[str, Any]
    classes: list[Label]
    fitted_from: int
    cut: int
    proba: np.ndarray


def classes_of(estimator: Any) -> list[Label]:
    """A fitted estimator's classes as plain values, in probability-column order."""
    return [c.item() if hasattr(c, "item") else c for c in estimator.classes_]


def train_candidate(spec: ModelSpec, X: np.ndarray, y: Sequence[Label]) -> Candidate:
    """Fit the spec's candidate on a window (rows in event-time order): the newest rows are held
    out; with `retrain.window_choices`, one fit per window size before them, the best on the
    holdout kept. Recency weights apply to each fit."""
    cut = holdout_start(len(y), spec.training.holdout_fraction, spec.gate.min_holdout_rows)
    sizes = sorted({min(cut, size) for size in spec.retrain.window_choices or [cut]})
    best: Candidate | None = None
    best_score = -np.inf
    for size in sizes:
        start = cut - size
        weights = recency_weights(size, spec.retrain.recency_half_life_rows)
        estimator, chosen = fit(spec, X[start:cut], y[start:cut], weights)
        classes = classes_of(estimator)
        proba = estimator.predict_proba(X[cut:])
        score = float(row_scores(spec.gate.metric, y[cut:], proba, classes).mean()) if len(sizes) > 1 else 0.0
        if best is None or score > best_score:
            params = chosen | ({"window.rows": size, "window.holdout_score": score} if len(sizes) > 1 else {})
            best, best_score = Candidate(estimator, params, classes, start, cut, proba), score
    assert best is not None
    return best


def refit(spec: ModelSpec, candidate: Candidate, X: np.ndarray, y: Sequence[Label]) -> Any:
    """The candidate fitted again on its rows and the holdout (`training.refit_with_holdout`)."""
    start = candidate.fitted_from
    weights = recency_weights(len(y) - start, spec.retrain.recency_half_life_rows)
    estimator, _ = fit(spec, X[start:], y[start:], weights)
    return estimator


def holdout_start(rows: int, fraction: float, at_least: int = 1) -> int:
    """Index of the first holdout row: the newest `fraction` of rows is held out, but at least
    `at_least` rows (and at least one), and never more than half of them (at least one is fitted).

    >>> holdout_start(1000, 0.2), holdout_start(1000, 0.2, at_least=300), holdout_start(400, 0.2, 300)
    (800, 700, 200)
    """
    held = max(1, round(rows * fraction), min(at_least, rows // 2))
    return max(1, rows - held) if rows > 1 else rows


def metrics(y_true: Sequence[Label], proba: np.ndarray, classes: Sequence[Label]) -> dict[str, float]:
    """Accuracy, balanced accuracy and log loss of probabilities whose columns follow `classes`."""
    predicted = [classes[i] for i in proba.argmax(axis=1)]
    truth = list(y_true)
    clipped = np.clip(proba, 1e-7, 1 - 1e-7)
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(truth, predicted)),
        "log_loss": float(
            log_loss(truth, clipped / clipped.sum(axis=1, keepdims=True), labels=list(classes))
        ),
    }


def row_scores(
    metric: str, y_true: Sequence[Label], proba: np.ndarray, classes: Sequence[Label]
) -> np.ndarray:
    """Each row's share of the metric, oriented so that higher is better: their mean is the
    accuracy, the balanced accuracy (a row counts inversely to its class's frequency), or minus
    the log loss. Two models' scores on the same rows give a paired comparison.

    >>> row_scores("accuracy", [0, 1], np.array([[0.9, 0.1], [0.8, 0.2]]), [0, 1]).tolist()
    [1.0, 0.0]
    """
    truth = [str(t) for t in y_true]
    column = {str(c): i for i, c in enumerate(classes)}
    index = np.array([column.get(t, -1) for t in truth])
    if metric == "log_loss":
        clipped = np.clip(proba, 1e-7, 1 - 1e-7)
        clipped = clipped / clipped.sum(axis=1, keepdims=True)
        picked = np.where(index >= 0, clipped[np.arange(len(truth)), np.maximum(index, 0)], 1e-7)
        return np.log(picked)
    correct = (proba.argmax(axis=1) == index).astype(np.float64)
    if metric == "balanced_accuracy":
        counts = {t: truth.count(t) for t in set(truth)}
        return correct * len(truth) / (len(counts) * np.array([counts[t] for t in truth], dtype=np.float64))
    return correct


def compare(
    metric: str,
    y_true: Sequence[Label],
    candidate: np.ndarray,
    champion: np.ndarray,
    classes: Sequence[Label],
) -> PairedComparison:
    """Candidate against champion, row by row on the same rows (probability columns in `classes`
    order): the mean difference of their row scores and its standard error.

    >>> proba = lambda p: np.array([[1 - q, q] for q in p])
    >>> compare("accuracy", [1, 1, 0, 1], proba([.9, .9, .9, .9]), proba([.9, .1, .9, .9]), [0, 1])
    PairedComparison(schema_version=1, rows=4, mean_difference=0.25, std_error=0.25)
    """
    difference = row_scores(metric, y_true, candidate, classes) - row_scores(
        metric, y_true, champion, classes
    )
    n = len(difference)
    error = float(difference.std(ddof=1) / np.sqrt(n)) if n > 1 else 1e6  # one row tells nothing
    return PairedComparison(rows=n, mean_difference=float(difference.mean()) if n else 0.0, std_error=error)


def evaluate(
    metric: str,
    y_holdout: Sequence[Label],
    candidate: np.ndarray,
    champion: np.ndarray | None,
    classes: Sequence[Label],
    unseen: np.ndarray | None = None,
) -> tuple[dict[str, float], dict[str, float] | None, PairedComparison | None]:
    """The candidate's metrics on the holdout; with the champion's probabilities on the same rows,
    both compared (metrics and the paired comparison in the gate `metric`) on the holdout rows the
    champion never saw (`unseen`, a boolean mask; all rows when None; none: a comparison of 0 rows)."""
    scores = metrics(y_holdout, candidate, classes)
    if champion is None:
        return scores, None, None
    if unseen is not None:
        if not unseen.any():  # nothing fair to compare on
            return (
                scores,
                metrics(y_holdout, champion, classes),
                PairedComparison(rows=0, mean_difference=0.0, std_error=0.0),
            )
        y_holdout = [y for y, fresh in zip(y_holdout, unseen, strict=True) if fresh]
        candidate, champion = candidate[unseen], champion[unseen]
    return (
        scores,
        metrics(y_holdout, champion, classes),
        compare(metric, y_holdout, candidate, champion, classes),
    )


def align_columns(proba: np.ndarray, source: Sequence[Label], target: Sequence[Label]) -> np.ndarray:
    """Reorder probability columns from `source` class order to `target` order (0 where absent)."""
    out = np.zeros((proba.shape[0], len(target)), dtype=np.float64)
    position = {str(c): i for i, c in enumerate(source)}
    for j, cls in enumerate(target):
        if str(cls) in position:
            out[:, j] = proba[:, position[str(cls)]]
    return out


def reference_stats(X: np.ndarray, names: Sequence[str]) -> dict[str, FeatureStats]:
    """Per-feature statistics of the training matrix, shipped with the model for drift tests."""
    stats = {}
    for j, name in enumerate(names):
        column = X[:, j].astype(np.float64)
        stats[name] = FeatureStats(
            mean=float(column.mean()),
            std=float(column.std()),
            min=float(column.min()),
            max=float(column.max()),
            quantiles=[float(q) for q in np.quantile(column, np.linspace(0.1, 0.9, 9))],
            percentiles=[float(q) for q in np.quantile(column, np.linspace(0, 1, 101))],
        )
    return stats


def prediction_shares(proba: np.ndarray, classes: Sequence[Label]) -> dict[str, float]:
    """Share of each class among the argmax predictions (the reference for prediction drift)."""
    counts = np.bincount(proba.argmax(axis=1), minlength=len(classes)) / max(1, len(proba))
    return {str(c): float(share) for c, share in zip(classes, counts, strict=True)}


def holdout_calibration(proba: np.ndarray, classes: Sequence[Label], y: Sequence[Label]) -> Calibration:
    """The calibration of the top-class probability on a holdout (probabilities of a model that
    did not see it; columns in `classes` order).

    >>> fitted = holdout_calibration(np.array([[0.9, 0.1], [0.2, 0.8]]), [0, 1], [0, 0])
    >>> fitted.accuracy, fitted.rows, fitted.overall
    ((0.0, 1.0), 2, 0.5)
    """
    predicted = [str(classes[i]) for i in proba.argmax(axis=1)]
    correct = np.array([p == str(label) for p, label in zip(predicted, y, strict=True)])
    return Calibration.fit(proba.max(axis=1), correct)


def calibration(proba: np.ndarray, classes: Sequence[Label], y: Sequence[Label]) -> CalibrationTable:
    """`holdout_calibration` as it goes on the events and the card."""
    return CalibrationTable.model_validate(holdout_calibration(proba, classes, y).as_dict())


def dataset_hash(rows: Sequence[FeatureRow]) -> str:
    """A content hash of the window: event ids, times and labels, in order."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(f"{row.event_id}\0{row.event_time.isoformat()}\0{row.label}\n".encode())
    return digest.hexdigest()
