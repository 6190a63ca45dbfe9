"""Training logic: estimators from the spec, holdout split, metrics, reference statistics. Pure."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score, log_loss

from driftloop.contracts import FeatureRow, FeatureStats, Label
from driftloop.spec import AlgorithmSpec

_ESTIMATORS: dict[str, Any] = {
    "logistic_regression": LogisticRegression,
    "random_forest": RandomForestClassifier,
    "gradient_boosting": GradientBoostingClassifier,
    "hist_gradient_boosting": HistGradientBoostingClassifier,
}


def build_estimator(algorithm: AlgorithmSpec, seed: int) -> ClassifierMixin:
    """The scikit-learn estimator a spec names, with its parameters and the seed."""
    params = dict(algorithm.params)
    params.setdefault("random_state", seed)
    estimator: ClassifierMixin = _ESTIMATORS[algorithm.name](**params)
    return estimator


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
        )
    return stats


def dataset_hash(rows: Sequence[FeatureRow]) -> str:
    """A content hash of the window: event ids, times and labels, in order."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(f"{row.event_id}\0{row.event_time.isoformat()}\0{row.label}\n".encode())
    return digest.hexdigest()
