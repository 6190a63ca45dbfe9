"""Follow `models.lifecycle` from its first event, so a (re)started service knows every champion.

The registry's state changes are all events; a service that needs the champion replays them at
start-up (`catch_up`, before it serves) and then keeps following them in the background.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from driftloop.contracts import LIFECYCLE, LifecycleEvent
from driftloop.kafka import follow_truncation, read_from_start

log = logging.getLogger(__name__)

LifecycleHandler = Callable[[LifecycleEvent], Awaitable[None]]


class LifecycleFollower:
    """Replays and then follows the lifecycle topic, calling `handler` for every event in order."""

    def __init__(
        self, bootstrap: str, topic: str, handler: LifecycleHandler, options: Mapping[str, Any] | None = None
    ) -> None:
        self.bootstrap = bootstrap
        self.options = options  # `driftloop.connections.kafka_options`
        self.topic = topic
        self.handler = handler
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def _drain(self, timeout_ms: int) -> int:
        assert self._consumer is not None
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=500)
        count = 0
        for records in batches.values():
            for record in records:
                try:
                    event = LIFECYCLE.validate_json(record.value or b"")
                except ValidationError as exc:
                    log.warning("ignoring malformed lifecycle event at %s: %s", record.offset, exc)
                    continue
                await self.handler(event)
                count += 1
        return count

    async def catch_up(self) -> None:
        """Replay every event already on the topic, then return."""
        self._consumer = await read_from_start(self.bootstrap, self.topic, options=self.options)
        partitions = list(self._consumer.assignment())
        end = await self._consumer.end_offsets(partitions)

        async def behind() -> bool:
            assert self._consumer is not None
            return any([await self._consumer.position(tp) < end[tp] for tp in partitions])

        while await behind():
            await self._drain(200)

    async def _follow(self) -> None:
        while True:
            try:
                if not await self._drain(500) and self._consumer is not None:
                    await follow_truncation(self._consumer)  # the broker lost the topic
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lifecycle follower failed; retrying")
                await asyncio.sleep(1)

    async def start(self) -> None:
        """Catch up, then follow in the background."""
        await self.catch_up()
        self._task = asyncio.create_task(self._follow(), name=f"follow-{self.topic}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()
