"""The hot-path Kafka loop, on aiokafka directly: consume a batch, handle it, produce the outputs as
broker batches (one per partition), wait for their acknowledgement, then commit.

FastStream wires everything else; this loop is for topics where per-message overhead matters
(`../shared/PLATFORM.md`: batched aiokafka reaches ~150k msg/s here, FastStream's default ~0.5k).
At-least-once: offsets are committed only after the outputs are acknowledged, and a rebalance waits
for the batch in flight, so partitions change hands between batches, never inside one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.partitioner import murmur2
from faststream.kafka import KafkaBroker
from pydantic import BaseModel

from driftloop.connections import kafka_options
from driftloop.contracts import DeadLetter
from driftloop.kafka import TruncationWatch, documented_consumer, encode
from driftloop.metrics import DEAD_LETTERS, count, record_lag, timed_batch
from driftloop.runtime import tune_gc
from driftloop.settings import ServiceSettings

log = logging.getLogger(__name__)


class Output(NamedTuple):  # a tuple: one is built per message
    topic: str
    key: bytes | None
    value: bytes


@dataclass(frozen=True)
class Handled:
    """A handler's outputs, and what to do once the broker has acknowledged them (before the
    commit): effects that must not happen unless the outputs are out, like an idempotent append.
    `alongside`: an effect already under way that the outputs do not depend on (an idempotent
    store write): awaited with the send, so the commit waits for it and its failure fails the
    batch, while the next batch is handled."""

    outputs: Sequence[Output]
    then: Callable[[], None] | None = None
    alongside: asyncio.Future[Any] | None = None


Handler = Callable[[Sequence[ConsumerRecord]], Awaitable[Sequence[Output] | Handled]]


def dead_letter_outputs(service: str, topic: str, letters: Sequence[DeadLetter]) -> list[Output]:
    """Dead letters as outputs to the DLQ topic, counted by reason."""
    for letter in letters:
        DEAD_LETTERS.labels(service, letter.reason).inc()
    return [Output(topic, None, encode(letter)) for letter in letters]


class BatchSender:
    """Produces outputs as one broker batch per (topic, partition): the fast way to publish."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self._partitions: dict[str, list[int]] = {}
        self._hashes: dict[bytes, int] = {}  # murmur2 of recent keys: pure Python, and keys repeat
        self._pending: set[asyncio.Future[Any]] = set()  # batches sent and not yet answered

    @classmethod
    async def connect(cls, bootstrap: str, client_id: str, **options: Any) -> BatchSender:
        """`options`: `driftloop.connections.kafka_options`."""
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            acks="all",
            enable_idempotence=False,  # not on tansu; consumers are idempotent instead
            linger_ms=1,
            max_batch_size=1024 * 1024,
            **options,
        )
        await producer.start()
        return cls(producer)

    async def stop(self) -> None:
        await self.producer.stop()

    async def send(self, outputs: Sequence[Output]) -> None:
        """Send outputs as one broker batch per (topic, partition) and wait for every answer; raise
        the first error once every batch is answered. A batch of an earlier send that failed or was
        cancelled is answered before this one goes out: batches of one sender never overlap on a
        partition (the producer would retry the old one next to the new one — reordered on any
        broker, and on tansu the new one can be acknowledged and lost)."""
        await self.drain()
        by_partition: dict[tuple[str, int], list[Output]] = {}
        for i, output in enumerate(outputs):
            if output.topic not in self._partitions:
                self._partitions[output.topic] = sorted(await self.producer.partitions_for(output.topic))
            ordered = self._partitions[output.topic]
            if output.key is None:
                partition = ordered[i % len(ordered)]
            else:  # Kafka's murmur2 partitioning, as every client does for keyed records
                partition = ordered[self._hash(output.key) % len(ordered)]
            by_partition.setdefault((output.topic, partition), []).append(output)
        futures = []
        for (topic, partition), items in by_partition.items():
            batch = self.producer.create_batch()
            for item in items:
                if batch.append(key=item.key, value=item.value, timestamp=None) is None:
                    futures.append(await self.producer.send_batch(batch, topic, partition=partition))
                    batch = self.producer.create_batch()
                    batch.append(key=item.key, value=item.value, timestamp=None)
            futures.append(await self.producer.send_batch(batch, topic, partition=partition))
        self._pending.update(futures)
        for future in futures:
            future.add_done_callback(self._answered)
        answers = await asyncio.gather(*map(asyncio.shield, futures), return_exceptions=True)
        errors = [a for a in answers if isinstance(a, BaseException)]
        if errors:
            raise errors[0]

    def _hash(self, key: bytes) -> int:
        hashed = self._hashes.get(key)
        if hashed is None:
            if len(self._hashes) >= 100_000:
                self._hashes.clear()
            hashed = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return hashed

    def _answered(self, future: asyncio.Future[Any]) -> None:
        self._pending.discard(future)
        if not future.cancelled():
            future.exception()  # seen here: a send cancelled meanwhile still raises its first error

    async def drain(self) -> None:
        """Wait until every batch sent so far is answered (acknowledged or failed)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)


class _DrainOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: FastPath) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked: object) -> None:
        async with self.loop.in_flight:  # the batch being handled finishes first
            failed = await self.loop.settle()  # and every handled batch is committed or comes again
        if failed is not None:
            self.loop.rewind([failed])
        if self.loop.reset is not None:
            self.loop.reset()

    async def on_partitions_assigned(self, assigned: object) -> None:
        self.loop.generation += 1  # positions now come from the group: older batches are not rewound
        log.info("%s assigned %s", self.loop.group_id, sorted(str(tp) for tp in assigned))  # type: ignore[attr-defined]


@dataclass
class _Batch:
    records: list[ConsumerRecord]
    generation: int  # of the partition assignment it was fetched under
    firsts: dict[TopicPartition, int]  # offset of each partition's first record
    nexts: dict[TopicPartition, int]  # and the offset after its last: what to commit
    done: asyncio.Task[None] | None = None  # outputs sent, `then` run, offsets committed

    @classmethod
    def of(cls, fetched: Mapping[TopicPartition, list[ConsumerRecord]], generation: int) -> _Batch:
        """A batch of what one fetch returned (each partition's records in offset order)."""
        fetched = {tp: records for tp, records in fetched.items() if records}
        return cls(
            [r for records in fetched.values() for r in records],
            generation,
            {tp: records[0].offset for tp, records in fetched.items()},
            {tp: records[-1].offset + 1 for tp, records in fetched.items()},
        )


class FastPath:
    """Consume `topic` in group `group_id` and hand each batch to a handler returning outputs.

    Pipelined one batch deep: while batch N's outputs wait for their acknowledgement (then its
    `then` runs and its offsets are committed), batch N+1 is fetched and handled; N+1's outputs go
    out only once N is settled, so effects and commits stay in batch order. A failure rewinds to
    the first unsettled record. `reset` runs whenever records may come again (a rewind) or
    partitions change hands (after the last commit): a handler drops there what it holds about
    unsettled batches or about its partitions."""

    def __init__(
        self,
        settings: ServiceSettings,
        service: str,
        topic: str,
        group_id: str,
        reset: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.service = service
        self.topic = topic
        self.group_id = group_id
        self.reset = reset
        self.in_flight = asyncio.Lock()
        self.consumer: AIOKafkaConsumer
        self.sender: BatchSender
        self._task: asyncio.Task[None] | None = None
        self._sending: _Batch | None = None
        self.generation = 0  # partition assignments so far

    def describe(self, payload: type[BaseModel]) -> KafkaBroker:
        """This loop's subscription, for the service's AsyncAPI document (`documented_consumer`)."""
        return documented_consumer(
            self.settings.kafka_bootstrap,
            self.topic,
            self.group_id,
            payload,
            payload.__name__,
            f"Batches of `{payload.__name__}` (schemas/json/{payload.__name__}.json) read by the "
            "hot-path loop (driftloop.fastpath): invalid records are dead-lettered, outputs "
            "acknowledged, then offsets committed.",
        )

    async def start(self, handle: Handler) -> None:
        """Connect (clients need the running event loop), join the group, start consuming."""
        settings, service = self.settings, self.service
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=self.group_id,
            client_id=f"driftloop-{service}-fastpath",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
            **kafka_options(settings),
        )
        self.sender = await BatchSender.connect(
            settings.kafka_bootstrap, f"driftloop-{service}-fastpath", **kafka_options(settings)
        )
        await self.consumer.start()
        self.consumer.subscribe([self.topic], listener=_DrainOnRevoke(self))
        tune_gc()
        self._task = asyncio.create_task(self._run(handle), name=f"fastpath-{self.topic}")

    async def stop(self) -> None:
        """Finish the batch in flight, commit, and leave the group."""
        if self._task is not None:
            async with self.in_flight:
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            await self.settle()  # a failure here is redelivered to the next owner
            await self.consumer.stop()
            await self.sender.stop()

    async def settle(self) -> _Batch | None:
        """Wait for the batch being sent; the batch if that failed (its records must come again).
        A waiter cancelled meanwhile (a stop) leaves the batch to finish: its outputs may be out
        already, so its offsets must still be committed."""
        batch = self._sending
        if batch is None or batch.done is None:
            return None
        try:
            await asyncio.shield(batch.done)
            return None
        except asyncio.CancelledError:
            raise
        except Exception:
            if self._sending is not batch:  # another waiter took care of it
                return None
            count(self.service, self.topic, "error", len(batch.records))
            log.exception("%s: sending a batch of %d failed", self.service, len(batch.records))
            return batch
        finally:
            if self._sending is batch and batch.done.done():
                self._sending = None

    async def _finish(self, batch: _Batch, handled: Handled) -> None:
        if handled.alongside is None:
            await self.sender.send(handled.outputs)
        else:
            await asyncio.gather(self.sender.send(handled.outputs), handled.alongside)
        if handled.then is not None:
            handled.then()
        await self.consumer.commit(batch.nexts)
        record_lag(self.service, self.consumer, batch.nexts)

    def rewind(self, batches: Sequence[_Batch]) -> None:
        """Seek every partition back to the first record of the earliest of `batches`, and reset.
        A batch fetched before the latest assignment is not sought: the group has set positions
        since (from the committed offsets), and its offsets may not even exist any more (a topic
        the broker lost and created again)."""
        positions: dict[TopicPartition, int] = {}
        for batch in (b for b in batches if b.generation == self.generation):
            for tp, offset in batch.firsts.items():
                positions[tp] = min(offset, positions.get(tp, offset))
        assigned = self.consumer.assignment()
        for tp, offset in positions.items():
            if tp in assigned:
                self.consumer.seek(tp, offset)
        if self.reset is not None:
            self.reset()

    async def _run(self, handle: Handler) -> None:
        watch = TruncationWatch(self.consumer)
        while True:
            batches = await self.consumer.getmany(
                timeout_ms=self.settings.kafka_fetch_max_wait_ms, max_records=self.settings.kafka_max_records
            )
            if not batches:
                failed = await self.settle()  # idle: do not hold a commit back
                if failed is not None:
                    await self._retry([failed])
                else:
                    await watch.fetched(0)
                continue
            await watch.fetched(sum(map(len, batches.values())))  # a partition past its end
            batch = _Batch.of(batches, self.generation)
            async with self.in_flight:
                try:
                    with timed_batch(self.service, self.topic, len(batch.records)):
                        result = await handle(batch.records)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    count(self.service, self.topic, "error", len(batch.records))
                    log.exception("%s: batch of %d failed", self.service, len(batch.records))
                    failed = await self.settle()
                    await self._retry([batch] if failed is None else [failed, batch])
                    continue
                failed = await self.settle()
                if failed is not None:  # this batch comes again after the failed one
                    await self._retry([failed, batch])
                    continue
                handled = result if isinstance(result, Handled) else Handled(result)
                batch.done = asyncio.create_task(self._finish(batch, handled))
                self._sending = batch

    async def _retry(self, batches: Sequence[_Batch]) -> None:
        """Rewind to the failed records and pause before they come again."""
        self.rewind(batches)
        await asyncio.sleep(1.0)
