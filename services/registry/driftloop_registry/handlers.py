"""Registry use cases: register and gate trained candidates; carry out promote, approve, rollback and
tag commands; answer read queries. Every change is a lifecycle event and a rewritten model card."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeAlias

from aiokafka import ConsumerRecord
from prometheus_client import Counter, Gauge

from driftloop.artifacts import ArtifactIntegrityError, ArtifactStore
from driftloop.contracts import (
    LIFECYCLE,
    REGISTRY_COMMAND,
    AnnounceModel,
    ApproveModel,
    LifecycleEvent,
    ModelCommandRefused,
    ModelPromoted,
    ModelRejected,
    ModelRolledBack,
    ModelSpecApplied,
    ModelTrained,
    PromoteModel,
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
from driftloop.specbook import SpecBook, check_spec_event, spec_key
from driftloop_registry import domain
from driftloop_registry.adapters import CardWriter
from driftloop_registry.domain import ModelVersion, Refused, RegistryRepository

Change: TypeAlias = tuple[ModelVersion, LifecycleEvent]  # a version and the event that changed it

SERVICE = "registry"
log = logging.getLogger(__name__)

EVENTS = Counter(
    "driftloop_registry_events_total",
    "Lifecycle events emitted, by model and event (ModelPromoted, ModelRejected, ...).",
    ["model", "event"],
)
IMPORTANCE = Gauge(
    "driftloop_registry_champion_feature_importance",
    "The champion's global importance of each input: accuracy lost on its holdout when the input is "
    "shuffled (its top drivers), by model and input.",
    ["model", "input"],
)


Command: TypeAlias = PromoteModel | ApproveModel | RollbackModel | TagModel  # what `execute` carries out


_DRIVERS: dict[str, set[str]] = {}  # the inputs exported for each model's champion


def _drivers(model: str, importance: Mapping[str, float]) -> None:
    """Export a new champion's importance (the inputs of the one before it go)."""
    for name in _DRIVERS.get(model, set()) - set(importance):
        IMPORTANCE.remove(model, name)
    for name, value in importance.items():
        IMPORTANCE.labels(model, name).set(value)
    _DRIVERS[model] = set(importance)


class Registry:
    """Registers trained candidates and carries out commands on `ModelVersion`s: each change is
    stored, written into the version's card and announced on `models.lifecycle`."""

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
        self.commands: dict[type[Command], Callable[[Any, str], Awaitable[Change]]] = {
            PromoteModel: self._promote,
            ApproveModel: self._promote,
            RollbackModel: self._rollback,
            TagModel: self._tag,
        }

    # ------------------------------------------------------------------ spec versions

    async def keep_specs(self, records: Sequence[ConsumerRecord]) -> Handled:
        """Keep every spec event of `models.specs` (`/v1/specs`), in a consumer group of its own so
        each record is looked at once; a record no service can use is dead-lettered with why."""
        out = Outbox(self.topics.events_dlq)
        events, dead = triage(SERVICE, records, lambda r: check_spec_event(r.value)[0])
        out.dead_letters(dead)
        for event in events:  # keyed by version and time: a version applied again is kept again
            when = event.applied_at if isinstance(event, ModelSpecApplied) else event.retired_at
            key = f"{spec_key(event).decode()}@{when.isoformat()}"
            await self.repo.keep_spec_event(event.model, key, event.model_dump(mode="json"))
        return out.handled()

    async def spec_history(self, model: str) -> list[dict[str, Any]]:
        """The model's spec versions and retirements, oldest first, the one in force marked."""
        in_force = self.specs.version_of(model) if isinstance(self.specs, SpecBook) else None
        history = await self.repo.spec_events(model)
        latest = max((i for i, e in enumerate(history) if e.get("version") == in_force), default=None)
        return [
            {**event, "in_force": in_force is not None and i == latest} for i, event in enumerate(history)
        ]

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

    def _trained_with(self, trained: ModelTrained) -> ModelSpec | None:
        """The spec a candidate was trained with (its gate), when this registry saw that version;
        else the one in force; None once the model is retired."""
        if isinstance(self.specs, SpecBook) and trained.spec_version:
            pinned = self.specs.at(trained.model, trained.spec_version)
            if pinned is not None and trained.model in self.specs:
                return pinned
        return self.specs.get(trained.model)

    async def register(self, trained: ModelTrained, out: Outbox) -> None:
        """Version, gate and announce a candidate. A run registered before re-announces its
        decision, then what serves now (a later change may have replaced what it decided)."""
        number = await self.repo.reserve_version(trained.model, trained.run_id)
        existing = await self.repo.get(trained.model, number)
        first = existing.first_event() if existing is not None else None
        if first is not None:
            out.publish(self.topics.models_lifecycle, [first])
            await self.announce(trained.model, out)
            return
        spec = self._trained_with(trained)
        try:
            await self.artifacts.verify(trained.artifact)
            decision = gate(spec, Evidence.of(trained)) if spec else Decision(False, "its model is retired")
        except ArtifactIntegrityError as exc:
            decision = Decision(False, f"artifact refused: {exc}")
        version = ModelVersion(number, trained, decision.blessed, decision.reason)
        reason = f"{trained.reason}: {decision.reason}"
        event: LifecycleEvent
        command_id = trained.command_id
        if not decision.blessed:
            event = ModelRejected(model=trained.model, version=number, reason=reason, command_id=command_id)
        elif spec is not None and spec.gate.auto_promote:
            event = await self._serve(version, ModelPromoted, reason, command_id)
        else:
            champion = (await self.repo.aliases(trained.model)).get("champion")
            await self.repo.set_alias(trained.model, "challenger", number)
            event = version.await_approval(reason, command_id, champion)
        await self._commit(version, event, out)

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
            version = await self.repo.get(model, aliases[alias]) if alias in aliases else None
            placed = version.placing(alias) if version is not None else None
            if placed is not None:
                events.append(placed)
        out.publish(self.topics.models_lifecycle, events)
        log.info("announced %s: %s", model, [f"{e.event} v{e.version}" for e in events] or "nothing serves")
        return events

    async def execute(self, command: Command, out: Outbox) -> LifecycleEvent:
        """Carry out a command once; a redelivered command re-announces its first outcome."""
        done = await self.repo.command_outcome(command.command_id)
        if done is not None:  # its first outcome, then what serves now (a later change may differ)
            event = LIFECYCLE.validate_python(done)
            out.publish(self.topics.models_lifecycle, [event])
            await self.announce(command.model, out)
            return event
        try:
            why = f"{command.command} by operator: {command.reason}"
            version, event = await self.commands[type(command)](command, why)
            await self._commit(version, event, out)
        except Refused as exc:
            number = getattr(command, "version", None) or getattr(command, "to_version", None) or 0
            event = ModelCommandRefused(
                model=command.model, version=number, reason=str(exc), command_id=command.command_id
            )
            out.publish(self.topics.models_lifecycle, [event])
            out.tally.inc(EVENTS.labels(command.model, event.event))
        await self.repo.save_command_outcome(command.command_id, event.model_dump(mode="json"))
        log.info("%s %s: %s", command.command, command.model, event.event)
        return event

    async def _promote(self, command: PromoteModel | ApproveModel, why: str) -> Change:
        version = await self._existing(command.model, command.version)
        version.servable()
        aliases = await self.repo.aliases(command.model)
        if isinstance(command, ApproveModel) and aliases.get("challenger") != command.version:
            raise Refused(f"v{command.version} is not awaiting approval")
        if aliases.get("champion") == command.version:
            raise Refused(f"v{command.version} is already the champion")
        return version, await self._serve(version, ModelPromoted, why, command.command_id)

    async def _rollback(self, command: RollbackModel, why: str) -> Change:
        current = (await self.repo.aliases(command.model)).get("champion")
        history = await self.repo.champion_history(command.model)
        target = command.to_version or domain.rollback_target(history, current)
        if target is None or target == current:
            raise Refused("there is no earlier champion to roll back to")
        version = await self._existing(command.model, target)
        return version, await self._serve(version, ModelRolledBack, why, command.command_id)

    async def _tag(self, command: TagModel, why: str) -> Change:
        version = await self._existing(command.model, command.version)
        return version, version.retag(command.tags, why, command.command_id)

    async def _existing(self, model: str, number: int) -> ModelVersion:
        version = await self.repo.get(model, number)
        if version is None:
            raise Refused(f"{model} has no version {number}")
        return version

    async def _serve(
        self,
        version: ModelVersion,
        kind: type[ModelPromoted] | type[ModelRolledBack],
        reason: str,
        command_id: str | None,
    ) -> ModelPromoted | ModelRolledBack:
        """Make a version champion: artifact re-checked, aliases and champion history updated."""
        model = version.model
        aliases = await self.repo.aliases(model)
        event = version.serve(kind, reason, command_id, aliases.get("champion"))
        try:
            await self.artifacts.verify(version.trained.artifact)
        except ArtifactIntegrityError as exc:
            raise Refused(f"artifact refused: {exc}") from exc
        await self.repo.set_alias(model, "champion", version.version)
        if aliases.get("challenger") == version.version:
            await self.repo.set_alias(model, "challenger", None)
        await self.repo.push_champion(model, version.version)
        MODEL_VERSION.labels(SERVICE, model).set(version.version)
        _drivers(model, version.trained.importance)
        return event

    async def _commit(self, version: ModelVersion, event: LifecycleEvent, out: Outbox) -> None:
        """Record the event on its version, rewrite the card, then announce it."""
        model = version.model
        version.recorded(event)
        await self.repo.save(version)
        card = await self.card(model, version.version)
        if card is not None:
            self.cards.write(model, version.version, card, domain.render_card(card, card["status"]))
        out.publish(self.topics.models_lifecycle, [event])
        out.tally.inc(EVENTS.labels(model, event.event))
        log.info("%s v%s: %s (%s)", model, version.version, event.event, event.reason)

    # ------------------------------------------------------------------ read side

    async def list_models(self) -> list[dict[str, Any]]:
        out = []
        for model in sorted(set(await self.repo.models()) | set(self.specs)):
            out.append(
                {
                    "model": model,
                    "aliases": await self.repo.aliases(model),
                    "versions": len(await self.repo.numbers(model)),
                    "declared": model in self.specs,
                }
            )
        return out

    async def list_versions(self, model: str) -> list[dict[str, Any]]:
        aliases = await self.repo.aliases(model)
        history = await self.repo.champion_history(model)
        out = []
        for version in await self.repo.versions(model):
            trained = version.trained
            out.append(
                {
                    "version": version.version,
                    "status": version.status(aliases, history),
                    "decision": version.decision,
                    "reason": trained.reason,
                    "algorithm": trained.algorithm,
                    "metrics": trained.candidate_metrics,
                    "champion_metrics": trained.champion_metrics,
                    "rows": trained.dataset.rows,
                    "dataset_version": trained.dataset.version,
                    "sha256": trained.artifact.sha256,
                    "tags": version.tags,
                    "trained_at": trained.model_dump(mode="json", include={"trained_at"})["trained_at"],
                }
            )
        return out

    async def numbers(self, model: str) -> list[int]:
        """The model's version numbers, ascending."""
        return await self.repo.numbers(model)

    async def known(self, model: str) -> bool:
        """Declared by a spec, or has versions."""
        return model in self.specs or bool(await self.repo.numbers(model))

    async def records(self, model: str) -> list[dict[str, Any]]:
        """Every version's full record with its current status, oldest first (the console's)."""
        aliases = await self.repo.aliases(model)
        history = await self.repo.champion_history(model)
        return [
            {
                **v.record(),
                "status": v.status(aliases, history),
                "aliases": [a for a, n in aliases.items() if n == v.version],
            }
            for v in await self.repo.versions(model)
        ]

    async def card(self, model: str, number: int) -> dict[str, Any] | None:
        """A version's full record (lineage, decision, tags, event history) and current status."""
        version = await self.repo.get(model, number)
        if version is None:
            return None
        aliases = await self.repo.aliases(model)
        history = await self.repo.champion_history(model)
        state = version.status(aliases, history)
        return {
            **version.record(),
            "status": state,
            "aliases": [a for a, v in aliases.items() if v == number],
        }
