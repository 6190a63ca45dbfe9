"""Registry use cases: register and gate trained candidates; carry out promote, approve, rollback and
tag commands; answer read queries. Every change is a lifecycle event and a rewritten model card."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import ConsumerRecord
from prometheus_client import Counter

from driftloop.artifacts import ArtifactIntegrityError, ArtifactStore
from driftloop.contracts import (
    LIFECYCLE,
    REGISTRY_COMMAND,
    AnnounceModel,
    ApproveModel,
    LifecycleEvent,
    ModelAwaitingApproval,
    ModelCommandRefused,
    ModelPromoted,
    ModelRejected,
    ModelRolledBack,
    ModelTagged,
    ModelTrained,
    PromoteModel,
    RegistryCommand,
    RollbackModel,
    TagModel,
    parse,
)
from driftloop.fastpath import Handled, Outbox
from driftloop.gate import Decision, Evidence, gate
from driftloop.kafka import triage
from driftloop.metrics import MODEL_VERSION
from driftloop.settings import Topics
from driftloop.spec import ModelSpec
from driftloop_registry import domain
from driftloop_registry.adapters import CardWriter, RegistryRepository

SERVICE = "registry"
log = logging.getLogger(__name__)

EVENTS = Counter(
    "driftloop_registry_events_total",
    "Lifecycle events emitted, by model and event (ModelPromoted, ModelRejected, ...).",
    ["model", "event"],
)


class Refused(Exception):
    """A command that cannot be carried out; the reason goes back as `ModelCommandRefused`."""


class Registry:
    def __init__(
        self,
        specs: Mapping[str, ModelSpec],
        repo: RegistryRepository,
        artifacts: ArtifactStore,
        cards: CardWriter,
        topics: Topics,
    ) -> None:
        self.specs = specs
        self.repo = repo
        self.artifacts = artifacts
        self.cards = cards
        self.topics = topics

    # ------------------------------------------------------------------ trained candidates

    async def handle(self, records: Sequence[ConsumerRecord]) -> Handled:
        """Register, gate and announce trained candidates (one change at a time: the service's two
        loops share one lock, and each batch is sent and committed before the next is handled, so
        an announcement never follows a promotion it did not see)."""
        candidates, dead = triage(SERVICE, records, lambda r: parse(ModelTrained, r.value, self.specs))
        out = Outbox(self.topics.events_dlq)
        out.dead_letters(dead)
        for trained in candidates:
            await self.register(trained, out)
        return out.handled()

    async def register(self, trained: ModelTrained, out: Outbox) -> None:
        """Version, gate and announce a candidate. A run registered before re-announces its
        decision, then what serves now (a later change may have replaced what it decided)."""
        version = await self.repo.reserve_version(trained.model, trained.run_id)
        existing = await self.repo.get_version(trained.model, version)
        if existing and existing["events"]:
            out.publish(self.topics.models_lifecycle, [LIFECYCLE.validate_python(existing["events"][0])])
            await self.announce(trained.model, out)
            return
        spec = self.specs[trained.model]
        try:
            self.artifacts.get(trained.artifact)
            decision = gate(spec, Evidence.of(trained))
        except ArtifactIntegrityError as exc:
            decision = Decision(False, f"artifact refused: {exc}")
        record: dict[str, Any] = {
            "version": version,
            "blessed": decision.blessed,
            "decision": decision.reason,
            "trained": trained.model_dump(mode="json"),
            "tags": {},
            "events": [],
        }
        reason = f"{trained.reason}: {decision.reason}"
        event: LifecycleEvent
        command_id = trained.command_id
        if not decision.blessed:
            event = ModelRejected(model=trained.model, version=version, reason=reason, command_id=command_id)
        elif spec.gate.auto_promote:
            event = await self._serve(record, ModelPromoted, reason, command_id)
        else:
            await self.repo.set_alias(trained.model, "challenger", version)
            event = ModelAwaitingApproval(
                model=trained.model,
                version=version,
                artifact=trained.artifact,
                classes=trained.classes,
                feature_names=trained.feature_names,
                previous_version=(await self.repo.aliases(trained.model)).get("champion"),
                reason=reason,
                command_id=command_id,
            )
        await self._commit(record, event, out)

    # ------------------------------------------------------------------ commands

    async def handle_commands(self, records: Sequence[ConsumerRecord]) -> Handled:
        """Carry out operator commands and announcements, in order (see `handle` on ordering)."""
        commands, dead = triage(SERVICE, records, lambda r: parse(REGISTRY_COMMAND, r.value, self.specs))
        out = Outbox(self.topics.events_dlq)
        out.dead_letters(dead)
        for command in commands:
            if isinstance(command, AnnounceModel):
                await self.announce(command.model, out)
            else:
                await self.execute(command, out)
        return out.handled()

    async def announce(self, model: str, out: Outbox) -> list[LifecycleEvent]:
        """Publish again the recorded events that put the current champion and challenger in place.
        Carried out every time it is asked: followers ignore a version they already serve."""
        aliases = await self.repo.aliases(model)
        events: list[LifecycleEvent] = []
        for alias in domain.PLACED_BY:
            record = await self.repo.get_version(model, aliases[alias]) if alias in aliases else None
            placed = domain.placing_event(record["events"], alias) if record else None
            if placed is not None:
                events.append(LIFECYCLE.validate_python(placed))
        out.publish(self.topics.models_lifecycle, events)
        log.info("announced %s: %s", model, [f"{e.event} v{e.version}" for e in events] or "nothing serves")
        return events

    async def execute(self, command: RegistryCommand, out: Outbox) -> LifecycleEvent:
        """Carry out a command once; a redelivered command re-announces its first outcome."""
        done = await self.repo.command_outcome(command.command_id)
        if done is not None:  # its first outcome, then what serves now (a later change may differ)
            event = LIFECYCLE.validate_python(done)
            out.publish(self.topics.models_lifecycle, [event])
            await self.announce(command.model, out)
            return event
        try:
            event = await self._apply(command, out)
        except Refused as exc:
            version = getattr(command, "version", None) or getattr(command, "to_version", None) or 0
            event = ModelCommandRefused(
                model=command.model, version=version, reason=str(exc), command_id=command.command_id
            )
            out.publish(self.topics.models_lifecycle, [event])
            out.tally.inc(EVENTS.labels(command.model, event.event))
        await self.repo.save_command_outcome(command.command_id, event.model_dump(mode="json"))
        log.info("%s %s: %s", command.command, command.model, event.event)
        return event

    async def _apply(self, command: RegistryCommand, out: Outbox) -> LifecycleEvent:
        model, why = command.model, f"{command.command} by operator: {command.reason}"
        aliases = await self.repo.aliases(model)
        event: LifecycleEvent
        if isinstance(command, PromoteModel | ApproveModel):
            record = await self._blessed(model, command.version)
            if isinstance(command, ApproveModel) and aliases.get("challenger") != command.version:
                raise Refused(f"v{command.version} is not awaiting approval")
            if aliases.get("champion") == command.version:
                raise Refused(f"v{command.version} is already the champion")
            event = await self._serve(record, ModelPromoted, why, command.command_id)
        elif isinstance(command, RollbackModel):
            current = aliases.get("champion")
            target = command.to_version or domain.rollback_target(
                await self.repo.champion_history(model), current
            )
            if target is None or target == current:
                raise Refused("there is no earlier champion to roll back to")
            record = await self._blessed(model, target)
            event = await self._serve(record, ModelRolledBack, why, command.command_id)
        else:
            assert isinstance(command, TagModel)
            record = await self._existing(model, command.version)
            tags = {**record["tags"], **command.tags}
            record["tags"] = {k: v for k, v in tags.items() if v}
            event = ModelTagged(
                model=model, version=command.version, reason=why, tags=record["tags"],
                command_id=command.command_id,
            )  # fmt: skip
        await self._commit(record, event, out)
        return event

    async def _existing(self, model: str, version: int) -> dict[str, Any]:
        record = await self.repo.get_version(model, version)
        if record is None:
            raise Refused(f"{model} has no version {version}")
        return record

    async def _blessed(self, model: str, version: int) -> dict[str, Any]:
        record = await self._existing(model, version)
        if not record["blessed"]:
            raise Refused(f"v{version} failed the gate and cannot serve: {record['decision']}")
        return record

    async def _serve(
        self,
        record: dict[str, Any],
        kind: type[ModelPromoted] | type[ModelRolledBack],
        reason: str,
        command_id: str | None,
    ) -> ModelPromoted | ModelRolledBack:
        """Make a version champion: artifact re-checked, aliases and champion history updated."""
        trained = ModelTrained.model_validate(record["trained"])
        try:
            self.artifacts.get(trained.artifact)
        except ArtifactIntegrityError as exc:
            raise Refused(f"artifact refused: {exc}") from exc
        aliases = await self.repo.aliases(trained.model)
        event = kind(
            model=trained.model,
            version=record["version"],
            artifact=trained.artifact,
            classes=trained.classes,
            feature_names=trained.feature_names,
            previous_version=aliases.get("champion"),
            reason=reason,
            command_id=command_id,
            reference_stats=trained.reference_stats,
            prediction_shares=trained.prediction_shares,
            data_until=trained.dataset.last_event_time,
        )
        await self.repo.set_alias(trained.model, "champion", record["version"])
        if aliases.get("challenger") == record["version"]:
            await self.repo.set_alias(trained.model, "challenger", None)
        await self.repo.push_champion(trained.model, record["version"])
        MODEL_VERSION.labels(SERVICE, trained.model).set(record["version"])
        return event

    async def _commit(self, record: dict[str, Any], event: LifecycleEvent, out: Outbox) -> None:
        """Record the event on its version, rewrite the card, then announce it."""
        model = record["trained"]["model"]
        record["events"].append(event.model_dump(mode="json"))
        await self.repo.save_version(model, record)
        card = await self.card(model, record["version"])
        if card is not None:
            self.cards.write(model, record["version"], card, domain.render_card(card, card["status"]))
        out.publish(self.topics.models_lifecycle, [event])
        out.tally.inc(EVENTS.labels(model, event.event))
        log.info("%s v%s: %s (%s)", model, record["version"], event.event, event.reason)

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
        aliases = await self.repo.aliases(model)
        history = await self.repo.champion_history(model)
        out = []
        for record in await self.repo.versions(model):
            trained = record["trained"]
            out.append(
                {
                    "version": record["version"],
                    "status": domain.status(record["version"], record["blessed"], aliases, history),
                    "decision": record["decision"],
                    "reason": trained["reason"],
                    "algorithm": trained["algorithm"],
                    "metrics": trained["candidate_metrics"],
                    "champion_metrics": trained["champion_metrics"],
                    "rows": trained["dataset"]["rows"],
                    "dataset_version": trained["dataset"]["version"],
                    "sha256": trained["artifact"]["sha256"],
                    "tags": record["tags"],
                    "trained_at": trained["trained_at"],
                }
            )
        return out

    async def card(self, model: str, version: int) -> dict[str, Any] | None:
        """A version's full record (lineage, decision, tags, event history) and current status."""
        record = await self.repo.get_version(model, version)
        if record is None:
            return None
        aliases = await self.repo.aliases(model)
        history = await self.repo.champion_history(model)
        state = domain.status(version, record["blessed"], aliases, history)
        return {**record, "status": state, "aliases": [a for a, v in aliases.items() if v == version]}
