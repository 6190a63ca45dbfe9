"""Scoring a batch of requests: validation, one matrix and one model run per model. Pure but for
the ONNX session it is handed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from driftloop.artifacts import OnnxClassifier
from driftloop.contracts import PredictionRequest, result_json
from driftloop.features import FeatureSet
from driftloop.spec import ModelSpec


@dataclass(frozen=True)
class ServingModel:
    """A loaded, warmed champion: swapped in whole, never mutated."""

    model: str
    version: int
    classifier: OnnxClassifier
    feature_set: FeatureSet


def score(
    requests: Sequence[PredictionRequest],
    specs: Mapping[str, ModelSpec],
    serving: Mapping[str, ServingModel],
) -> list[dict[str, Any]]:
    """One result (a `PredictionResult` dict) per request, in request order; invalid ones carry `error`."""
    results: list[dict[str, Any] | None] = [None] * len(requests)
    by_model: dict[str, list[int]] = {}
    for i, request in enumerate(requests):
        if request.model not in specs:
            results[i] = result_json(request.request_id, request.model, 0, error="unknown_model")
        elif request.model not in serving:
            results[i] = result_json(request.request_id, request.model, 0, error="no_champion")
        else:
            by_model.setdefault(request.model, []).append(i)
    for model, indices in by_model.items():
        current = serving[model]
        X, valid, errors = current.feature_set.encode_many([requests[i].features for i in indices])
        for position, exc in errors.items():
            i = indices[position]
            results[i] = result_json(requests[i].request_id, model, 0, error=str(exc))
        proba = np.round(current.classifier.predict_proba(X).astype(np.float64), 6)
        best = proba.argmax(axis=1)
        classes = current.classifier.classes
        labels = [str(c) for c in classes]
        for position, p, b in zip(valid, proba.tolist(), best.tolist(), strict=True):
            i = indices[position]
            results[i] = result_json(
                requests[i].request_id,
                model,
                current.version,
                prediction=classes[b],
                probabilities=dict(zip(labels, p, strict=True)),
            )
    return [r for r in results if r is not None]
