"""Follow `models.lifecycle` from its first event, so a (re)started service knows every champion.

The registry's state changes are all events; a service that needs the champion replays them at
start-up (`catch_up`, before it serves) and then keeps following them in the background. A follower
that finds no champion for a model it serves, or sees the topic lost (the broker lost it, or it
expired), asks the registry to announce its models again (`AnnounceModel` on `models.commands`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import ConsumerRecord
from prometheus_client import Counter
from pydantic import ValidationError

from driftloop.connections import kafka_options
from driftloop.contracts import LIFECYCLE, AnnounceModel, LifecycleEvent, ModelPromoted, ModelRolledBack
from driftloop.fastpath import BatchSender, Output
from driftloop.faults import backoff_s, describe, is_transient
from driftloop.kafka import TopicFollower
from driftloop.settings import ServiceSettings

log = logging.getLogger(__name__)

LIFECYCLE_ERRORS = Counter(
    "driftloop_lifecycle_errors_total",
    "Lifecycle events a service's handler failed on and skipped (it keeps what it served), by event.",
    ["event"],
)

LifecycleHandler = Callable[[LifecycleEvent], Awaitable[None]]


@dataclass(frozen=True)
class AskRegistry:
    """Sends `AnnounceModel` commands for `models` to the registry's command topic."""

    bootstrap: str
    topic: str
    models: Collection[str]  # e.g. the service's book of specs: the models in force when it asks
    options: Mapping[str, Any] | None = None  # `driftloop.connections.kafka_options`

    async def __call__(self, models: Collection[str], reason: str) -> None:
        commands = [AnnounceModel(command_id=uuid.uuid4().hex, model=m, reason=reason) for m in models]
        sender = await BatchSender.connect(self.bootstrap, "driftloop-lifecycle", **(self.options or {}))
        try:
            await sender.send([Output(self.topic, None, c.model_dump_json().encode()) for c in commands])
        finally:
            await sender.stop()
        log.info("asked the registry to announce %s: %s", sorted(models), reason)


class LifecycleFollower(TopicFollower):
    """Replays and then follows the lifecycle topic, calling `handler` for every event in order;
    with `ask`, asks the registry to announce the models it found no champion for."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        handler: LifecycleHandler,
        options: Mapping[str, Any] | None = None,
        ask: AskRegistry | None = None,
        fetch_wait_ms: int = 50,
    ) -> None:
        super().__init__(bootstrap, topic, options, fetch_wait_ms)
        self.handler = handler
        self.ask = ask
        self.serving: set[str] = set()  # models a champion was announced for

    async def take(self, record: ConsumerRecord) -> None:
        try:
            event = LIFECYCLE.validate_json(record.value or b"")
        except ValidationError as exc:
            log.warning("ignoring malformed lifecycle event at %s: %s", record.offset, exc)
            return
        if await self._handle(event, record.offset) and isinstance(event, ModelPromoted | ModelRolledBack):
            self.serving.add(event.model)  # a skipped event leaves the model to ask for

    async def _handle(self, event: LifecycleEvent, offset: int) -> bool:
        """Hand one event to the handler (True once it took it): retried while an infrastructure
        fault lasts; an event the handler fails on otherwise is logged, counted and skipped
        (False), so one bad event (or a handler's bug on it) never stops the service from starting
        or following the others."""
        failures = 0
        while True:
            try:
                await self.handler(event)
                return True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_transient(exc):
                    LIFECYCLE_ERRORS.labels(event.event).inc()
                    log.error("skipping lifecycle event %s (offset %d): %s", event.event, offset,
                              describe(exc), exc_info=exc)  # fmt: skip
                    return False
                failures += 1
                log.warning("lifecycle event %s: %s; retrying", event.event, describe(exc))
                await asyncio.sleep(backoff_s(failures))

    async def catch_up(self) -> None:
        """Replay every event already on the topic, then ask for the champions it did not name."""
        await super().catch_up()
        if self.ask is not None:
            await self.ask_for(
                [m for m in self.ask.models if m not in self.serving], "no champion at start-up"
            )

    async def truncated(self) -> None:
        if self.ask is not None:
            self.serving.clear()  # the broker lost the topic: have it written again
            await self.ask_for(list(self.ask.models), "topic lost")

    async def ask_for(self, models: Sequence[str], reason: str) -> None:
        """Ask the registry to announce these models (logged, not raised, when it cannot be sent)."""
        if not models or self.ask is None:
            return
        try:
            await self.ask(models, f"{reason} on {self.topic}")
        except Exception:  # serving goes on; the next start or loss asks again
            log.warning("could not ask the registry to announce %s", models, exc_info=True)


def follow_models(
    settings: ServiceSettings, handler: LifecycleHandler, models: Collection[str]
) -> LifecycleFollower:
    """The lifecycle follower of a service that serves or watches `models` (a live collection,
    e.g. its book of specs): it asks the registry to announce any of them it finds no champion for."""
    commands = settings.topics.models_commands
    options = kafka_options(settings)
    ask = AskRegistry(settings.kafka_bootstrap, commands, models, options)
    return LifecycleFollower(
        settings.kafka_bootstrap,
        settings.topics.models_lifecycle,
        handler,
        options,
        ask,
        fetch_wait_ms=settings.kafka_idle_fetch_wait_ms,
    )
