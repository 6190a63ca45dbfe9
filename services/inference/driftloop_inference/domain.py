"""Scoring a batch of requests: validation, one matrix and one model run per model. Pure but for
the ONNX session it is handed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from driftloop.artifacts import OnnxClassifier
from driftloop.contracts import InvalidInput, PredictionRequest, PredictionResult
from driftloop.features import FeatureSet, check_features
from driftloop.spec import ModelSpec


@dataclass(frozen=True)
class ServingModel:
    """A loaded, warmed champion: swapped in whole, never mutated."""

    model: str
    version: int
    classifier: OnnxClassifier
    feature_set: FeatureSet


def error_result(request_id: str, model: str, error: str, version: int = 0) -> PredictionResult:
    return PredictionResult(request_id=request_id, model=model, model_version=version, error=error)


def score(
    requests: Sequence[PredictionRequest],
    specs: Mapping[str, ModelSpec],
    serving: Mapping[str, ServingModel],
) -> list[PredictionResult]:
    """One result per request, in request order; invalid ones carry `error`."""
    results: list[PredictionResult | None] = [None] * len(requests)
    pending: dict[str, list[tuple[int, dict[str, float | str]]]] = {}
    for i, request in enumerate(requests):
        spec = specs.get(request.model)
        if spec is None:
            results[i] = error_result(request.request_id, request.model, "unknown_model")
            continue
        if request.model not in serving:
            results[i] = error_result(request.request_id, request.model, "no_champion")
            continue
        try:
            pending.setdefault(request.model, []).append((i, check_features(spec, request.features)))
        except InvalidInput as exc:
            results[i] = error_result(request.request_id, request.model, str(exc))
    for model, rows in pending.items():
        current = serving[model]
        proba = current.classifier.predict_proba(current.feature_set.matrix(r for _, r in rows))
        classes = current.classifier.classes
        for (i, _), p in zip(rows, proba, strict=True):
            best = int(p.argmax())
            results[i] = PredictionResult(
                request_id=requests[i].request_id,
                model=model,
                model_version=current.version,
                prediction=classes[best],
                probabilities={str(c): round(float(v), 6) for c, v in zip(classes, p, strict=True)},
            )
    return [r for r in results if r is not None]
