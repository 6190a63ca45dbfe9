"""Training logic: estimators from the spec, holdout split, metrics, reference statistics. Pure."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.metrics import accuracy_score, balanced_accuracy_score, log_loss
from sklearn.model_selection import HalvingRandomSearchCV, TimeSeriesSplit

from driftloop.algorithms import ESTIMATORS as _ESTIMATORS
from driftloop.contracts import FeatureRow, FeatureStats, Label
from driftloop.spec import AlgorithmSpec, ModelSpec


def build_estimator(algorithm: AlgorithmSpec, seed: int) -> ClassifierMixin:
    """The scikit-learn estimator a spec names, with its parameters and the seed."""
    params = dict(algorithm.params)
    params.setdefault("random_state", seed)
    estimator: ClassifierMixin = _ESTIMATORS[algorithm.name](**params)
    return estimator


def fit(spec: ModelSpec, X: np.ndarray, y: Sequence[Label]) -> tuple[Any, dict[str, Any]]:
    """The fitted estimator the spec asks for, and what a search chose (empty without one).

    With `algorithm.search`, candidates are compared by successive halving on time-ordered folds
    (never training on rows newer than those it is scored on), then the best is refitted on all rows.
    """
    estimator = build_estimator(spec.algorithm, spec.training.seed)
    search_spec = spec.algorithm.search
    if search_spec is None:
        estimator.fit(X, y)
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
    search.fit(X, y)
    chosen = {f"search.best.{k}": v for k, v in search.best_params_.items()}
    return search.best_estimator_, chosen | {
        "search.candidates": search_spec.n_candidates,
        "search.best_score": float(search.best_score_),
    }


def holdout_start(rows: int, fraction: float) -> int:
    """Index of the first holdout row: the newest `fraction` of rows (at least one) is held out."""
    held = max(1, round(rows * fraction))
    return rows - held


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


def dataset_hash(rows: Sequence[FeatureRow]) -> str:
    """A content hash of the window: event ids, times and labels, in order."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(f"{row.event_id}\0{row.event_time.isoformat()}\0{row.label}\n".encode())
    return digest.hexdigest()
