"""Test helpers: small real data and a real ONNX model built through the training code."""

from __future__ import annotations

import itertools

import numpy as np

from driftloop import datasets
from driftloop.features import FeatureSet, check_features
from driftloop.spec import AlgorithmSpec, ModelSpec
from driftloop_training.adapters import convert
from driftloop_training.domain import build_estimator


def sea_rows(n: int, variant: int = 0, seed: int = 1) -> list[tuple[dict, int]]:
    return list(itertools.islice(datasets.sea(variant, seed), n))


def sea_onnx(
    spec: ModelSpec,
    n: int = 600,
    algorithm: str = "logistic_regression",
    variant: int = 0,
    shuffle_labels: bool = False,
) -> tuple[bytes, list, list[str]]:
    """Fit `algorithm` on SEA rows and convert it: (onnx bytes, classes, feature names)."""
    rows = sea_rows(n, variant)
    feature_set = FeatureSet(spec)
    X = feature_set.matrix(check_features(spec, x) for x, _ in rows)
    y = np.array([label for _, label in rows])
    if shuffle_labels:
        y = np.random.default_rng(0).permutation(y)
    estimator = build_estimator(AlgorithmSpec(name=algorithm), seed=0)
    estimator.fit(X, y)
    return convert(estimator, X.shape[1]), [int(c) for c in estimator.classes_], feature_set.names


async def collect(bootstrap: str, topic: str, model_cls, count: int, timeout: float = 20.0) -> list:
    """Read `topic` from its start until `count` messages parse as `model_cls` (or time out)."""
    import asyncio
    import time

    from driftloop.kafka import read_from_start

    parse = getattr(model_cls, "model_validate_json", None) or model_cls.validate_json
    consumer = await read_from_start(bootstrap, topic)
    found = []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                found += [parse(r.value) for r in records]
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    return found
