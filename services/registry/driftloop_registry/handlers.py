"""Registry use cases: register a trained candidate, gate it, promote or reject, serve read queries."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import ConsumerRecord
from prometheus_client import Counter

from driftloop.artifacts import ArtifactIntegrityError, ArtifactStore
from driftloop.contracts import (
    LIFECYCLE,
    ModelPromoted,
    ModelRejected,
    ModelTrained,
    parse,
)
from driftloop.kafka import Bus, triage
from driftloop.metrics import MODEL_VERSION
from driftloop.settings import Topics
from driftloop.spec import ModelSpec
from driftloop_registry.adapters import RegistryRepository
from driftloop_registry.domain import gate

SERVICE = "registry"
log = logging.getLogger(__name__)

DECISIONS = Counter(
    "driftloop_registry_decisions_total",
    "Gate decisions by model and outcome (promoted, rejected, awaiting_approval).",
    ["model", "outcome"],
)


class Registry:
    def __init__(
        self,
        specs: Mapping[str, ModelSpec],
        repo: RegistryRepository,
        artifacts: ArtifactStore,
        bus: Bus,
        topics: Topics,
    ) -> None:
        self.specs = specs
        self.repo = repo
        self.artifacts = artifacts
        self.bus = bus
        self.topics = topics

    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        candidates, dead = triage(SERVICE, records, lambda r: parse(ModelTrained, r.value, self.specs))
        await self.bus.dead_letters(dead)
        for trained in candidates:
            await self.register(trained)

    async def register(self, trained: ModelTrained) -> None:
        """Version, gate and announce a candidate. A redelivered run re-announces its decision."""
        known = await self.repo.version_of_run(trained.model, trained.run_id)
        if known is not None:
            existing = await self.repo.get_version(trained.model, known)
            if existing and existing.get("event"):
                await self.bus.publish(
                    self.topics.models_lifecycle, [LIFECYCLE.validate_python(existing["event"])]
                )
            return
        spec = self.specs[trained.model]
        version = await self.repo.next_version(trained.model)
        aliases = await self.repo.aliases(trained.model)
        previous = aliases.get("champion")
        try:
            self.artifacts.get(trained.artifact)
            decision = gate(spec, trained)
            blessed, reason = decision.blessed, decision.reason
        except ArtifactIntegrityError as exc:
            blessed, reason = False, f"artifact refused: {exc}"

        event: ModelPromoted | ModelRejected | None
        if not blessed:
            status, event = (
                "rejected",
                ModelRejected(model=trained.model, version=version, reason=reason),
            )
        elif spec.gate.auto_promote:
            status = "champion"
            event = ModelPromoted(
                model=trained.model,
                version=version,
                artifact=trained.artifact,
                classes=trained.classes,
                feature_names=trained.feature_names,
                previous_version=previous,
                reason=f"{trained.reason}: {reason}",
            )
        else:
            status, event = "awaiting_approval", None
        record: dict[str, Any] = {
            "version": version,
            "status": status,
            "decision": reason,
            "trained": trained.model_dump(mode="json"),
            "event": event.model_dump(mode="json") if event else None,
        }
        await self.repo.save_version(trained.model, trained.run_id, record)
        if isinstance(event, ModelPromoted):
            await self.repo.set_alias(trained.model, "champion", version)
            if previous is not None:
                await self._mark(trained.model, previous, "archived")
            MODEL_VERSION.labels(SERVICE, trained.model).set(version)
        if event is not None:
            await self.bus.publish(self.topics.models_lifecycle, [event])
        DECISIONS.labels(trained.model, status if status != "champion" else "promoted").inc()
        log.info("%s v%s: %s (%s)", trained.model, version, status, reason)

    async def _mark(self, model: str, version: int, status: str) -> None:
        record = await self.repo.get_version(model, version)
        if record is not None and record["status"] == "champion":
            record["status"] = status
            await self.repo.save_version(model, record["trained"]["run_id"], record)

    # ------------------------------------------------------------------ read side

    async def list_models(self) -> list[dict[str, Any]]:
        out = []
        for model in sorted(set(await self.repo.models()) | set(self.specs)):
            versions = await self.repo.versions(model)
            out.append(
                {
                    "model": model,
                    "aliases": await self.repo.aliases(model),
                    "versions": len(versions),
                    "declared": model in self.specs,
                }
            )
        return out

    async def list_versions(self, model: str) -> list[dict[str, Any]]:
        return [_summary(r) for r in await self.repo.versions(model)]

    async def card(self, model: str, version: int) -> dict[str, Any] | None:
        return await self.repo.get_version(model, version)


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    trained = record["trained"]
    return {
        "version": record["version"],
        "status": record["status"],
        "decision": record["decision"],
        "reason": trained["reason"],
        "algorithm": trained["algorithm"],
        "metrics": trained["candidate_metrics"],
        "champion_metrics": trained["champion_metrics"],
        "rows": trained["dataset"]["rows"],
        "sha256": trained["artifact"]["sha256"],
        "trained_at": trained["trained_at"],
    }
