"""Champion holder (verified load, warm-up, atomic swap) and the online-store reader."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from prometheus_client import Counter

from driftloop.artifacts import ArtifactIntegrityError, ArtifactStore, OnnxClassifier
from driftloop.contracts import (
    LifecycleEvent,
    ModelAwaitingApproval,
    ModelPromoted,
    ModelRolledBack,
    ModelServingFailed,
)
from driftloop.explain import background, input_columns
from driftloop.faults import is_transient
from driftloop.features import FeatureSet
from driftloop.metrics import MODEL_VERSION
from driftloop.spec import ModelSpec
from driftloop.specbook import SpecBook
from driftloop_inference.domain import Lineup, ServingModel

log = logging.getLogger(__name__)

LOAD_FAILURES = Counter(
    "driftloop_inference_model_load_failures_total",
    "Champion artifacts refused or not loadable (for now: an unreachable object store), by model.",
    ["model"],
)


class ModelHolder:
    """The models in service. `lineup` is replaced as a whole between batches, so a batch sees one
    consistent set of champions and challengers; loading and warming happen off the hot path."""

    def __init__(self, specs: SpecBook, artifacts: ArtifactStore) -> None:
        self.specs = specs
        self.artifacts = artifacts
        self.lineup = Lineup()
        self.refused: list[ModelServingFailed] = []  # to publish on the lifecycle topic
        self._unavailable: set[tuple[str, int]] = set()  # versions reported unloadable for now

    async def on_lifecycle(self, event: LifecycleEvent) -> None:
        serves = isinstance(event, ModelPromoted | ModelRolledBack | ModelAwaitingApproval)
        if not serves or event.model not in self.specs:
            return
        assert isinstance(event, ModelPromoted | ModelRolledBack | ModelAwaitingApproval)
        champions, challengers = dict(self.lineup.champions), dict(self.lineup.challengers)
        role = challengers if isinstance(event, ModelAwaitingApproval) else champions
        current = role.get(event.model)
        if current is not None and current.version == event.version:
            return
        known = [m for m in (champions.get(event.model), challengers.get(event.model)) if m]
        loaded = next((m for m in known if m.version == event.version), None)
        if loaded is None:
            try:
                loaded = await self._load(event)
            except Exception as exc:
                LOAD_FAILURES.labels(event.model).inc()
                failed = ModelServingFailed(
                    model=event.model, version=event.version, service="inference",
                    artifact=event.artifact, reason=f"{type(exc).__name__}: {exc}"[:500],
                )  # fmt: skip
                if is_transient(exc):  # the store is unreachable: the follower retries the event
                    log.warning(
                        "cannot load %s v%s yet, keeping what serves: %s", event.model, event.version, exc
                    )
                    if (event.model, event.version) not in self._unavailable:
                        self._unavailable.add((event.model, event.version))
                        self.refused.append(failed)
                    raise
                log.error("refusing %s v%s, keeping what serves: %s", event.model, event.version, exc)
                self.refused.append(failed)
                return
        self._unavailable.discard((event.model, event.version))
        role[event.model] = loaded
        if (
            role is champions
            and event.model in challengers
            and challengers[event.model].version == event.version
        ):
            del challengers[event.model]  # the challenger was approved
        self.lineup = Lineup(champions, challengers)
        if role is champions:
            MODEL_VERSION.labels("inference", event.model).set(event.version)
        log.info("%s v%s now serves as %s", event.model, event.version,
                 "champion" if role is champions else "challenger")  # fmt: skip

    def _spec(self, event: ModelPromoted | ModelRolledBack | ModelAwaitingApproval) -> ModelSpec:
        """The spec the version was trained with, when this service knows it; else the one in force."""
        pinned = self.specs.at(event.model, event.spec_version) if event.spec_version else None
        if pinned is None and event.spec_version:
            log.warning("%s v%s: spec version %s unknown here, using the one in force",
                        event.model, event.version, event.spec_version)  # fmt: skip
        return pinned or self.specs[event.model]

    async def _load(self, event: ModelPromoted | ModelRolledBack | ModelAwaitingApproval) -> ServingModel:
        feature_set = FeatureSet(self._spec(event))
        if event.feature_names != feature_set.names:
            raise ArtifactIntegrityError("artifact's features differ from the spec's")
        data = await self.artifacts.get(event.artifact)
        return await asyncio.to_thread(self._build, event, feature_set, data)

    @staticmethod
    def _build(
        event: ModelPromoted | ModelRolledBack | ModelAwaitingApproval, feature_set: FeatureSet, data: bytes
    ) -> ServingModel:
        classifier = OnnxClassifier(data, event.classes, event.feature_names)
        classifier.predict_proba(np.zeros((1, len(feature_set.names)), dtype=np.float32))  # warm it up
        inputs = input_columns(feature_set.spec, feature_set.names)
        explained = background(inputs, feature_set.names, event.reference_stats)
        return ServingModel(event.model, event.version, classifier, feature_set, explained)
