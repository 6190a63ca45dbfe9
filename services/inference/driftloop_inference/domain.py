"""Scoring a batch of requests: validation, one matrix and one model run per model (and challenger),
shadow and canary routing. Pure but for the ONNX sessions it is handed."""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from driftloop.artifacts import OnnxClassifier
from driftloop.contracts import PredictionRequest, json_object, parse, plain_request, result_json
from driftloop.explain import Background, contributions
from driftloop.features import FeatureSet
from driftloop.spec import ModelSpec


@dataclass(frozen=True, slots=True)
class Request:
    """A `PredictionRequest` as the hot path carries it."""

    request_id: str
    model: str
    features: dict[str, Any]
    entity_id: str | None = None
    filled: bool = False  # some features came from the online store
    explain: bool = False  # the result carries each input's contribution


def read_request(raw: bytes | None) -> Request:
    """A request from its bytes. Plain requests (every field of exactly its contract type) are read
    with orjson alone; anything else goes through the `PredictionRequest` contract, which accepts
    or refuses it with a reason (`InvalidInput`). A property test holds both paths equal."""
    data = json_object(raw)
    if data is not None and plain_request(data):
        return Request(
            data["request_id"], data["model"], data.get("features", {}), data.get("entity_id"),
            explain=data.get("explain", False),
        )  # fmt: skip
    request = parse(PredictionRequest, raw)
    return Request(
        request.request_id, request.model, dict(request.features), request.entity_id, explain=request.explain
    )


@dataclass(frozen=True)
class ServingModel:
    """A loaded, warmed model version: swapped in whole, never mutated."""

    model: str
    version: int
    classifier: OnnxClassifier
    feature_set: FeatureSet
    background: Background | None = None  # what explanations replace each input by (`driftloop.explain`)


@dataclass(frozen=True)
class Lineup:
    """Champions and challengers by model: what one batch is served by."""

    champions: Mapping[str, ServingModel] = field(default_factory=dict)
    challengers: Mapping[str, ServingModel] = field(default_factory=dict)


@dataclass
class Scored:
    results: list[dict[str, Any]]  # to predictions.results, one per request, in request order
    shadow: list[dict[str, Any]]  # to predictions.shadow: the shadow challenger's answers
    stages: dict[str, float] = field(default_factory=dict)  # seconds: validate (inputs), model


def to_canary(request_id: str, share: float) -> bool:
    """Whether a request goes to the canary: a stable hash of its id, so retries land alike.

    >>> to_canary("r-1", 0.0), to_canary("r-1", 1.0)
    (False, True)
    """
    return zlib.crc32(request_id.encode()) % 10_000 < share * 10_000


def _answers(serving: ServingModel, X: np.ndarray, requests: Sequence[Request]) -> list[dict[str, Any]]:
    proba = np.round(serving.classifier.predict_proba(X).astype(np.float64), 6)
    classes = serving.classifier.classes
    labels = [str(c) for c in classes]
    predicted = proba.argmax(axis=1)
    explanations = _explanations(serving, X, predicted, requests)
    return [
        result_json(
            request.request_id,
            serving.model,
            serving.version,
            prediction=classes[best],
            probabilities=dict(zip(labels, p, strict=True)),
            features=request.features if request.filled else None,
            explanation=explanations.get(i),
        )
        for i, (request, p, best) in enumerate(zip(requests, proba.tolist(), predicted.tolist(), strict=True))
    ]


def _explanations(
    serving: ServingModel, X: np.ndarray, predicted: np.ndarray, requests: Sequence[Request]
) -> dict[int, dict[str, float]]:
    """Contributions for the requests that asked, by position (one more model run, theirs only)."""
    asked = [i for i, request in enumerate(requests) if request.explain]
    if not asked or serving.background is None:
        return {}
    proba = serving.classifier.predict_proba
    found = contributions(proba, X[asked], predicted[asked], serving.background)
    return dict(zip(asked, found, strict=True))


def score(requests: Sequence[Request], specs: Mapping[str, ModelSpec], lineup: Lineup) -> Scored:
    """One result per request, in request order (invalid ones carry `error`), plus shadow answers."""
    results: list[dict[str, Any] | None] = [None] * len(requests)
    shadow: list[dict[str, Any]] = []
    by_model: dict[str, list[int]] = {}
    stages = {"validate": 0.0, "model": 0.0}
    for i, request in enumerate(requests):
        if request.model not in specs:
            results[i] = result_json(request.request_id, request.model, 0, error="unknown_model")
        elif request.model not in lineup.champions:
            results[i] = result_json(request.request_id, request.model, 0, error="no_champion")
        else:
            by_model.setdefault(request.model, []).append(i)
    for model, indices in by_model.items():
        champion = lineup.champions[model]
        challenger = lineup.challengers.get(model)
        started = time.perf_counter()
        X, valid, errors = champion.feature_set.encode_many([requests[i].features for i in indices])
        encoded = time.perf_counter()
        stages["validate"] += encoded - started
        for position, exc in errors.items():
            i = indices[position]
            results[i] = result_json(requests[i].request_id, model, 0, error=str(exc))
        served = [indices[p] for p in valid]
        mode = specs[model].serving
        if challenger is not None and challenger.feature_set.names != champion.feature_set.names:
            challenger = None  # trained on other inputs (a spec change): no share until it is promoted
        if challenger is not None and mode.challenger_mode == "canary":
            canary = np.array(
                [to_canary(requests[i].request_id, mode.canary_share) for i in served], dtype=bool
            )
            groups = [(champion, ~canary), (challenger, canary)]
        else:
            groups = [(champion, np.ones(len(served), dtype=bool))]
        for serving, mask in groups:
            chosen = [i for i, m in zip(served, mask.tolist(), strict=True) if m]
            if chosen:
                answers = _answers(serving, X[mask], [requests[i] for i in chosen])
                for i, answer in zip(chosen, answers, strict=True):
                    results[i] = answer
        if challenger is not None and mode.challenger_mode == "shadow" and served:
            shadow += _answers(challenger, X, [requests[i] for i in served])
        stages["model"] += time.perf_counter() - encoded
    return Scored([r for r in results if r is not None], shadow, stages)
