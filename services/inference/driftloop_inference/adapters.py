"""Champion holder (verified load, warm-up, atomic swap) and the online-store reader."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from driftloop.artifacts import ArtifactIntegrityError, ArtifactStore, OnnxClassifier
from driftloop.contracts import LifecycleEvent, ModelPromoted, ModelRolledBack
from driftloop.features import FeatureSet, online_key
from driftloop.metrics import MODEL_VERSION
from driftloop.spec import ModelSpec
from driftloop_inference.domain import ServingModel

log = logging.getLogger(__name__)

LOAD_FAILURES = Counter(
    "driftloop_inference_model_load_failures_total",
    "Champion artifacts refused or unloadable, by model.",
    ["model"],
)


class ModelHolder:
    """The models in service. `serving` is replaced as a whole, so a batch sees one consistent set."""

    def __init__(self, specs: Mapping[str, ModelSpec], artifacts: ArtifactStore) -> None:
        self.specs = specs
        self.artifacts = artifacts
        self.serving: dict[str, ServingModel] = {}

    async def on_lifecycle(self, event: LifecycleEvent) -> None:
        if not isinstance(event, ModelPromoted | ModelRolledBack) or event.model not in self.specs:
            return
        current = self.serving.get(event.model)
        if current is not None and current.version == event.version:
            return
        try:
            loaded = await asyncio.to_thread(self._load, event)
        except (ArtifactIntegrityError, Exception) as exc:
            LOAD_FAILURES.labels(event.model).inc()
            log.error("refusing %s v%s, keeping the current model: %s", event.model, event.version, exc)
            return
        self.serving = {**self.serving, event.model: loaded}
        MODEL_VERSION.labels("inference", event.model).set(event.version)
        log.info("now serving %s v%s", event.model, event.version)

    def _load(self, event: ModelPromoted | ModelRolledBack) -> ServingModel:
        feature_set = FeatureSet(self.specs[event.model])
        if event.feature_names != feature_set.names:
            raise ArtifactIntegrityError("artifact's features differ from the spec's")
        classifier = OnnxClassifier(self.artifacts.get(event.artifact), event.classes, event.feature_names)
        classifier.predict_proba(feature_set.matrix([]))  # warm the session before it serves
        return ServingModel(event.model, event.version, classifier, feature_set)


class OnlineFeatures:
    """Reads stored entity features, one pipelined round trip per batch."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def fetch(self, keys: Sequence[tuple[str, str]]) -> list[dict[str, str] | None]:
        """Stored raw features per (model, entity_id); None where absent or Redis is down."""
        if not keys:
            return []
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for model, entity in keys:
                    pipe.hgetall(online_key(model, entity))
                found = await asyncio.wait_for(pipe.execute(), timeout=1.0)
        except (RedisError, TimeoutError, OSError) as exc:
            log.warning("online store unavailable: %s", exc)
            return [None] * len(keys)
        return [{k.decode(): v.decode() for k, v in row.items()} if row else None for row in found]
