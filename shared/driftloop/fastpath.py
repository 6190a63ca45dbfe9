"""The stream loop every service consumes its topics with, on aiokafka directly: consume a batch,
handle it, produce the outputs as broker batches (one per partition), wait for their
acknowledgement, run the batch's effects, commit, then count.

A service declares its loops once (`driftloop.service`); FastStream serves its HTTP endpoints,
and this loop reads the topics (FastStream's one-message-at-a-time subscribers are far below a
batched consumer: docs/adr/0001).
At-least-once: offsets are committed only after the outputs are acknowledged, and a rebalance waits
for the batch in flight, so partitions change hands between batches, never inside one.

Failures (`driftloop.faults`): a batch that fails on an infrastructure fault (the broker, Redis, a
full disk) is rewound and retried after a growing pause until it succeeds; it is never dead-lettered.
Any other exception is suspected to come from a record: the batch is handled once more on its own,
then split in halves, each handled and committed before the next, until the record that fails
alone is found; that record is dead-lettered (`processing_failed`, with the exception, its source
and its bytes) and the rest flows. Metrics of a batch (`Handled.tally`, and its records by topic
and outcome: ok, rejected, or what the handler reports) are applied after its commit, so a batch
handled several times counts once. A consumer that cannot commit while records
wait for it is *stalled*: its `health()` says so, and `/readyz` turns 503 after
`DRIFTLOOP_STALL_AFTER_S`.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from pydantic import BaseModel

from driftloop import kafka
from driftloop.checkpoint import Checkpoint
from driftloop.connections import kafka_options
from driftloop.contracts import DeadLetter
from driftloop.faults import backoff_s, describe, is_transient
from driftloop.kafka import GapGuard, TruncationWatch, dead_letter, encode
from driftloop.metrics import (
    BATCH_FAILURES,
    BATCH_SECONDS,
    BATCH_SIZE,
    CONSUMER_LAG,
    DEAD_LETTERS,
    HOP_SECONDS,
    MESSAGES,
    STALLED,
    Tally,
    observe_many,
)
from driftloop.partitioning import positive_murmur2
from driftloop.settings import ServiceSettings

log = logging.getLogger(__name__)

STAMPED_LONG_AGO_S = 3600.0  # a record timestamp older than this is an event time, not a send time
PROCESSING_FAILED = "processing_failed"  # the reason of a record that failed its handler alone
OK, REJECTED = "ok", "rejected"  # outcomes of a record in `driftloop_messages_total`
NO_HEADERS: list[tuple[str, bytes]] = []  # read only: the producer's batch builder takes a list


def tune_gc(gen0_threshold: int = 50_000) -> None:
    """Freeze what start-up allocated and collect young objects less often.

    Batch handlers allocate thousands of short-lived dicts per batch; with CPython's default
    threshold (700) the cyclic collector ran many times per batch and took ~35% of the inference
    handler's time. Reference counting still frees acyclic garbage at once.
    """
    gc.freeze()
    gc.set_threshold(gen0_threshold, 50, 50)


class Output(NamedTuple):  # a tuple: one is built per message
    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()  # e.g. the W3C trace context (`driftloop.tracing`)


@dataclass(frozen=True)
class Handled:
    """A handler's outputs, and what goes with them. `then`: effects that must not happen unless
    the outputs are out, like an idempotent append (after the acknowledgement, before the commit;
    sync or async). `alongside`: an effect already under way that the outputs do not depend on (an
    idempotent store write): awaited with the send, so the commit waits for it and its failure
    fails the batch, while the next batch is handled (the loop's checkpoint follows it). `tally`:
    metric changes, applied once the offsets are committed. `committed`: runs after the commit.
    `outcomes`: how many of the batch's records of a topic were not handled as usual ("rejected",
    "duplicate"): the loop counts the rest "ok" in `driftloop_messages_total`."""

    outputs: Sequence[Output]
    then: Callable[[], Awaitable[None] | None] | None = None
    alongside: asyncio.Future[Any] | None = None
    tally: Tally | None = None
    committed: Callable[[], None] | None = None
    stages: Mapping[str, float] | None = None  # seconds of named parts of the handling (`HOP_SECONDS`)
    outcomes: Mapping[tuple[str, str], int] | None = None  # (topic, outcome) -> records not "ok"


Handler = Callable[[Sequence[ConsumerRecord]], Awaitable[Sequence[Output] | Handled]]


class Outbox:
    """What a handler sends for one batch, built as it goes: contracts to topics, dead letters,
    the records handled otherwise than as usual, and the batch's metric changes (`handled()` turns
    it into the loop's `Handled`)."""

    def __init__(self, dlq_topic: str, outputs: list[Output] | None = None) -> None:
        self.dlq_topic = dlq_topic
        self.outputs: list[Output] = outputs if outputs is not None else []  # the hot paths build theirs
        self.tally = Tally()
        self.outcomes: Counter[tuple[str, str]] = Counter()

    def publish(
        self, topic: str, messages: Sequence[BaseModel], key: Callable[[Any], str] | None = None
    ) -> None:
        """Send contracts to `topic` (keyed by `key(message)`) with the batch's outputs."""
        self.outputs += [Output(topic, key(m).encode() if key else None, encode(m)) for m in messages]

    def dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Send dead letters, counted by reason once the batch is committed."""
        for letter in letters:
            self.tally.inc(DEAD_LETTERS.labels(letter.service, letter.reason))
            self.outcomes[letter.source_topic, REJECTED] += 1
        self.outputs += [Output(self.dlq_topic, None, encode(letter)) for letter in letters]

    def count(self, topic: str, outcome: str, n: int) -> None:
        """`n` records of `topic` were handled otherwise than as usual (e.g. "duplicate")."""
        if n < 0:
            raise ValueError(f"a count of {n} {outcome} records of {topic}")
        if n:
            self.outcomes[topic, outcome] += n

    def handled(self, **effects: Any) -> Handled:
        """The loop's `Handled`: these outputs, tally and outcomes, with `effects` (`then`, ...)."""
        return Handled(self.outputs, tally=self.tally, outcomes=self.outcomes, **effects)


class RecordTooLarge(ValueError):
    """An output larger than a producer batch may hold: the record that caused it is at fault."""


class BatchSender:
    """Produces outputs as one broker batch per (topic, partition): the fast way to publish."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self._partitions: dict[str, list[int]] = {}
        self._pending: set[asyncio.Future[Any]] = set()  # batches sent and not yet answered

    @classmethod
    async def connect(cls, bootstrap: str, client_id: str, **options: Any) -> BatchSender:
        """`options`: `driftloop.connections.kafka_options`."""
        sender = kafka.producer(
            bootstrap, options, client_id=client_id, linger_ms=1, max_batch_size=1024 * 1024
        )
        await sender.start()
        return cls(sender)

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
        for topic in {o.topic for o in outputs} - self._partitions.keys():
            self._partitions[topic] = sorted(await self.producer.partitions_for(topic))
        keyed = [o.key for o in outputs if o.key is not None]
        hashes = iter(positive_murmur2(keyed).tolist() if keyed else ())  # as every client partitions
        for i, output in enumerate(outputs):
            ordered = self._partitions[output.topic]
            index = i if output.key is None else next(hashes)
            by_partition.setdefault((output.topic, ordered[index % len(ordered)]), []).append(output)
        futures = []
        for (topic, partition), items in by_partition.items():
            batch = self.producer.create_batch()
            for key, value, headers in (
                (i.key, i.value, list(i.headers) if i.headers else NO_HEADERS) for i in items
            ):
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    futures.append(await self.producer.send_batch(batch, topic, partition=partition))
                    batch = self.producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                        raise RecordTooLarge(f"an output of {len(value)} bytes to {topic}")
            futures.append(await self.producer.send_batch(batch, topic, partition=partition))
        self._pending.update(futures)
        for future in futures:
            future.add_done_callback(self._answered)
        answers = await asyncio.gather(*map(asyncio.shield, futures), return_exceptions=True)
        errors = [a for a in answers if isinstance(a, BaseException)]
        if errors:
            raise errors[0]

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
        self.loop.revoking = True  # a search for a bad record stops at its next part
        try:
            async with self.loop.in_flight:  # the batch being handled finishes first
                failed = await self.loop.settle()  # and every handled batch is committed or comes again
        finally:
            self.loop.revoking = False
        if failed is not None:
            self.loop.rewind([failed])
        self.loop.reset()

    async def on_partitions_assigned(self, assigned: object) -> None:
        self.loop.generation += 1  # positions now come from the group: older batches are not rewound
        self.loop.gaps.reset()  # before any await: fetches of the new assignment may come meanwhile
        await self.loop.assigned(list(assigned))  # type: ignore[call-overload]
        log.info("%s assigned %s", self.loop.group_id, sorted(str(tp) for tp in assigned))  # type: ignore[attr-defined]


@dataclass
class _Batch:
    records: list[ConsumerRecord]
    generation: int  # of the partition assignment it was fetched under
    firsts: dict[TopicPartition, int]  # offset of each partition's first record
    nexts: dict[TopicPartition, int]  # and the offset after its last: what to commit
    seconds: float = 0.0  # handling time
    fetched_at: float = 0.0  # wall clock (seconds) when fetched, to compare with record timestamps
    clock: dict[str, float] = field(default_factory=dict)  # perf_counter at fetched, handled, sending
    number: int = 0  # in the loop's checkpoint (`Checkpoint.begin`)
    counts: dict[str, int] = field(default_factory=dict)  # records by topic
    done: asyncio.Task[None] | None = None  # outputs sent, `then` run, offsets committed
    error: BaseException | None = None  # why `done` failed

    @classmethod
    def of(cls, fetched: Mapping[TopicPartition, list[ConsumerRecord]], generation: int) -> _Batch:
        """A batch of what one fetch returned (each partition's records in offset order)."""
        fetched = {tp: records for tp, records in fetched.items() if records}
        counts: dict[str, int] = {}
        for tp, records in fetched.items():
            counts[tp.topic] = counts.get(tp.topic, 0) + len(records)
        return cls(
            [r for records in fetched.values() for r in records],
            generation,
            {tp: records[0].offset for tp, records in fetched.items()},
            {tp: records[-1].offset + 1 for tp, records in fetched.items()},
            counts=counts,
        )

    @classmethod
    def of_records(cls, records: Sequence[ConsumerRecord], generation: int) -> _Batch:
        """A batch of records in any order: each partition from its lowest offset to its highest."""
        firsts: dict[TopicPartition, int] = {}
        nexts: dict[TopicPartition, int] = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            firsts[tp] = min(record.offset, firsts.get(tp, record.offset))
            nexts[tp] = max(record.offset + 1, nexts.get(tp, 0))
        return cls(list(records), generation, firsts, nexts, counts=Counter(r.topic for r in records))


@dataclass(frozen=True)
class Health:
    """How a consumer keeps up: what `/readyz` and `driftloop status` show."""

    consumer: str
    lag: int  # records between the committed offsets and the partitions' ends
    stalled_s: float  # seconds without a commit while records wait (0 when keeping up)
    failures: int  # failed attempts in a row
    last_error: str | None  # the latest failure, while it lasts


class FastPath:
    """Consume `topics` in group `group_id` and hand each batch to a handler returning outputs.

    Pipelined one batch deep (`pipelined`): while batch N's outputs wait for their
    acknowledgement (then its `then` runs and its offsets are committed), batch N+1 is fetched and
    handled; N+1's outputs go out only once N is settled, so effects and commits stay in batch
    order. Not pipelined, each batch is sent and committed before the next is handled. A failure
    rewinds to the first unsettled record, or isolates a bad record (module docstring). What a
    handler must know about batches not yet committed (claims, memos, effects under way) it keeps
    in the loop's `checkpoint` (`driftloop.checkpoint`), which the loop tells of every batch begun
    and committed, and of every rewind or change of partitions.
    `lock`: shared by loops of one service whose batches must not interleave (it is held while a
    batch is handled, and, not pipelined, until it is committed). A loop that goes
    `settings.stall_after_s` without a commit while records wait reports itself stalled;
    `may_block`: its handler may legitimately take longer (e.g. a training run), so it is stalled
    only while it fails. `background`: no request waits on this loop (the monitor, the training
    store), so its fetches wait longer (`kafka_idle_fetch_wait_ms`) and after a small batch it
    lingers (`kafka_background_linger_ms`) to let records gather."""

    def __init__(
        self,
        settings: ServiceSettings,
        service: str,
        topics: str | Sequence[str],
        group_id: str,
        checkpoint: Checkpoint | None = None,
        *,
        name: str | None = None,
        pipelined: bool = True,
        lock: asyncio.Lock | None = None,
        may_block: bool = False,
        background: bool = False,
    ) -> None:
        self.settings = settings
        self.service = service
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.name = name or "+".join(self.topics)  # the consumer's label in metrics and logs
        self.group_id = group_id
        self.checkpoint = checkpoint if checkpoint is not None else Checkpoint()
        self.pipelined = pipelined
        self.in_flight = lock or asyncio.Lock()
        self.may_block = may_block
        self.background = background
        self.linger_s = settings.kafka_background_linger_ms / 1000 if background else 0.0
        self._fetched = 0  # records the last fetch returned
        self.consumer: AIOKafkaConsumer
        self.gaps: GapGuard  # reads again what a broker served out of order
        self.sender: BatchSender
        self._task: asyncio.Task[None] | None = None
        self._sending: _Batch | None = None
        self.generation = 0  # partition assignments so far
        self.committed: dict[TopicPartition, int] = {}  # what this loop committed (or found committed)
        self.failures = 0  # failed attempts in a row
        self.last_error: str | None = None
        self._progress = time.monotonic()  # last commit, or last time nothing waited
        self._lag = 0
        self.revoking = False  # a rebalance waits for the batch in flight: finish it soon
        STALLED.labels(service, self.name).set_function(self._reported_stall_s)  # as of each scrape

    async def start(self, handle: Handler) -> None:
        """Connect (clients need the running event loop), join the group, start consuming."""
        settings, service = self.settings, self.service
        consumer = kafka.consumer(
            settings.kafka_bootstrap,
            kafka_options(settings),
            group_id=self.group_id,
            client_id=f"driftloop-{service}-{self.name}",
            auto_offset_reset="earliest",
            fetch_max_wait_ms=settings.kafka_idle_fetch_wait_ms
            if self.background
            else settings.kafka_fetch_max_wait_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        )
        sender = await BatchSender.connect(
            settings.kafka_bootstrap, f"driftloop-{service}-{self.name}", **kafka_options(settings)
        )
        self.attach(consumer, sender)
        await self.consumer.start()
        self.consumer.subscribe(self.topics, listener=_DrainOnRevoke(self))
        tune_gc()
        self._task = asyncio.create_task(self._run(handle), name=f"stream-{self.name}")

    def attach(self, consumer: AIOKafkaConsumer, sender: BatchSender) -> None:
        """The clients this loop reads and writes with."""
        self.consumer, self.sender = consumer, sender
        topics = self.settings.topics
        compacted = [t for t in self.topics if topics.configs(t).get("cleanup.policy") == "compact"]
        self.gaps = GapGuard(consumer, self.settings.kafka_gap_wait_ms / 1000, self.name, compacted)

    async def stop(self) -> None:
        """Finish the batch in flight, commit, and leave the group."""
        if self._task is not None:
            self.revoking = True  # a search for a bad record stops at the next part
            async with self.in_flight:
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            await self.settle()  # a failure here is redelivered to the next owner
            await self.consumer.stop()
            await self.sender.stop()

    def health(self) -> Health:
        """Lag, stall and the latest failure, as of the last fetch."""
        return Health(self.name, self._lag, self._reported_stall_s(), self.failures, self.last_error)

    def stalled(self) -> str | None:
        """Why this consumer is not keeping up (for `/readyz`), or None."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            return f"{self.name}: its loop ended: {describe(self._task.exception() or RuntimeError())}"
        stalled_s = self._reported_stall_s()
        if stalled_s < self.settings.stall_after_s:
            return None
        why = f"{self.name}: no commit for {stalled_s:.0f} s with {self._lag} records waiting"
        return f"{why}; last error: {self.last_error}" if self.last_error else why

    def _reported_stall_s(self) -> float:
        """Seconds without a commit while records wait or batches fail; a loop whose handler may
        take long (`may_block`) counts only while it fails."""
        if not (self._lag or self.failures) or (self.may_block and not self.failures):
            return 0.0
        return max(0.0, time.monotonic() - self._progress)

    def reset(self) -> None:
        """Records may come again: the checkpoint drops what it held for uncommitted batches."""
        self.checkpoint.rewound()

    async def assigned(self, partitions: Sequence[TopicPartition]) -> None:
        """Learn where newly assigned partitions resume (for the lag): the group's committed
        offset, else the log's start (`auto_offset_reset=earliest`)."""
        self.committed = {}
        found = {}
        try:
            for tp in partitions:
                offset = await self.consumer.committed(tp)
                if offset is None:
                    offset = (await self.consumer.beginning_offsets([tp]))[tp]
                found[tp] = offset
        except Exception:  # the lag shows up after the first commit instead
            log.debug("%s: no committed offsets for the lag yet", self.name, exc_info=True)
        for tp, offset in found.items():  # a batch may have been committed meanwhile: it is newer
            self.committed.setdefault(tp, offset)
        self.gaps.expect(self.committed)
        self._progress = time.monotonic()

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
        except Exception as exc:
            if self._sending is not batch:  # another waiter took care of it
                return None
            batch.error = exc
            return batch
        finally:
            if self._sending is batch and batch.done.done():
                self._sending = None

    async def _finish(self, batch: _Batch, handled: Handled) -> None:
        batch.clock["sending"] = time.perf_counter()
        if handled.alongside is None:
            await self.sender.send(handled.outputs)
        elif self.failures:  # retrying: the effect first, so an outage does not resend every time
            await handled.alongside
            await self.sender.send(handled.outputs)
        else:
            await asyncio.gather(self.sender.send(handled.outputs), handled.alongside)
        batch.clock["acknowledged"] = time.perf_counter()
        if handled.then is not None:
            effect = handled.then()
            if inspect.isawaitable(effect):
                await effect
        await self._commit(batch.nexts)
        try:  # committed: nothing after this may bring the batch back
            BATCH_SIZE.labels(self.service, self.name).observe(len(batch.records))
            BATCH_SECONDS.labels(self.service, self.name).observe(batch.seconds)
            if handled.tally is not None:
                handled.tally.apply()
            if handled.committed is not None:
                handled.committed()
            self.checkpoint.committed(batch.number)
        except Exception:
            log.exception("%s %s: after a commit", self.service, self.name)
        try:
            self._count(batch.counts, handled.outcomes or {})
        except Exception:  # nor may a count
            log.exception("%s %s: counting a batch", self.service, self.name)
        try:
            self._observe_hops(batch, handled.stages)
        except Exception:  # a latency figure must never cost a batch its bookkeeping
            log.exception("%s %s: timing a batch", self.service, self.name)

    def _count(self, counts: Mapping[str, int], outcomes: Mapping[tuple[str, str], int]) -> None:
        """Count a committed batch's records by topic and outcome: those not reported otherwise "ok".
        An outcome beyond the records the batch has of its topic is a handler's error: logged, and
        the batch's records of that topic are counted as they are without it."""
        usual = dict(counts)
        for (topic, outcome), n in outcomes.items():
            if n > usual.get(topic, 0):
                log.error("%s %s: %d %s records of %s reported, beyond the batch's", self.service,
                          self.name, n, outcome, topic)  # fmt: skip
                continue
            MESSAGES.labels(self.service, topic, outcome).inc(n)
            usual[topic] -= n
        for topic, n in usual.items():
            if n:
                MESSAGES.labels(self.service, topic, OK).inc(n)

    def _observe_hops(self, batch: _Batch, stages: Mapping[str, float] | None) -> None:
        """Where the time of every record of a committed batch went (`HOP_SECONDS`)."""
        clock, n = batch.clock, len(batch.records)
        if n == 0 or "handled" not in clock or "acknowledged" not in clock:
            return  # a batch handled on the way to isolating a bad record: not a record's usual path
        committed, now = time.perf_counter(), time.time()
        stamps = np.fromiter((r.timestamp or 0 for r in batch.records), np.float64, n) / 1000
        recent = stamps >= now - STAMPED_LONG_AGO_S  # older: an application stamped its own time
        hop = HOP_SECONDS.labels
        service, name = self.service, self.name
        observe_many(hop(service, name, "queued"), np.maximum(0.0, batch.fetched_at - stamps[recent]))
        observe_many(hop(service, name, "total"), np.maximum(0.0, now - stamps[recent]))
        waiting = (clock["handling"] - clock["fetched"]) + (clock["sending"] - clock["handled"])
        for label, seconds in (
            ("waiting", waiting),
            ("handling", batch.seconds),
            ("acknowledged", clock["acknowledged"] - clock["sending"]),
            ("committed", committed - clock["acknowledged"]),
            *(stages or {}).items(),
        ):
            observe_many(hop(service, name, label), [max(0.0, seconds)], times=n)

    async def _commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        await self.consumer.commit(dict(offsets))
        self.committed.update(offsets)
        self.failures, self.last_error = 0, None
        self._progress = time.monotonic()

    def _observe_lag(self) -> None:
        """Lag of every assigned partition from the committed offset and the high watermark; the
        stall clock restarts when nothing waits."""
        total = 0
        for tp in self.consumer.assignment():
            highwater, committed = self.consumer.highwater(tp), self.committed.get(tp)
            if highwater is None or committed is None:
                continue
            lag = max(0, highwater - committed)
            total += lag
            CONSUMER_LAG.labels(self.service, tp.topic, str(tp.partition)).set(lag)
        self._lag = total
        if not total and not self.failures:
            self._progress = time.monotonic()

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
        self.reset()

    async def _run(self, handle: Handler) -> None:
        watch = TruncationWatch(self.consumer)
        while True:
            try:
                await self._step(handle, watch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a fetch, a seek, a handler's reset: retried, never the end
                self._failed(exc, 0)
                await asyncio.sleep(backoff_s(self.failures))
                continue
            if self.linger_s and 0 < self._fetched < self.settings.kafka_max_records // 2:
                await asyncio.sleep(self.linger_s)  # not behind: let the next batch gather

    async def _step(self, handle: Handler, watch: TruncationWatch) -> None:
        """Fetch one batch and handle it (or settle the batch being sent, when nothing came)."""
        fetched = await self.gaps.getmany(
            timeout_ms=self.settings.kafka_fetch_max_wait_ms, max_records=self.settings.kafka_max_records
        )
        fetched_at, fetched_clock = time.time(), time.perf_counter()
        self._fetched = sum(map(len, fetched.values()))
        generation = self.generation  # a rebalance may come at any await from here on
        self._observe_lag()
        if not fetched:
            if self._sending is not None:  # idle: do not hold a commit back
                async with self.in_flight:
                    failed = await self.settle()
                    if failed is not None:
                        await self._recover(handle, [failed], failed.error)
                        return
            await watch.fetched(0)
            return
        await watch.fetched(sum(map(len, fetched.values())))  # a partition past its end
        batch = _Batch.of(fetched, generation)
        batch.fetched_at, batch.clock["fetched"] = fetched_at, fetched_clock
        async with self.in_flight:
            if batch.generation != self.generation:
                return  # fetched before a rebalance: positions now come from the group's commits
            try:
                batch.number = self.checkpoint.begin()
                started = batch.clock["handling"] = time.perf_counter()
                handled = self._handled(await handle(batch.records))
                batch.clock["handled"] = time.perf_counter()
                batch.seconds = batch.clock["handled"] - started
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failed = await self.settle()
                if failed is None:
                    await self._recover(handle, [batch], exc)
                else:  # the earlier batch's failure first: this one comes after it anyway
                    await self._recover(handle, [failed, batch], failed.error)
                return
            failed = await self.settle()
            if failed is not None:  # this batch comes again after the failed one
                await self._recover(handle, [failed, batch], failed.error)
                return
            if self.pipelined:
                batch.done = asyncio.create_task(self._finish(batch, handled))
                self._sending = batch
                return
            try:
                await self._finish(batch, handled)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._recover(handle, [batch], exc)

    def _handled(self, result: Sequence[Output] | Handled) -> Handled:
        """A handler's answer as `Handled`; its effect alongside is the checkpoint's to follow."""
        handled = result if isinstance(result, Handled) else Handled(result)
        if handled.alongside is not None:
            self.checkpoint.effect(handled.alongside)
        return handled

    def _failed(self, exc: BaseException | None, records: int) -> None:
        transient = exc is not None and is_transient(exc)
        BATCH_FAILURES.labels(self.service, self.name, "transient" if transient else "record").inc()
        self.failures += 1
        self.last_error = describe(exc, 300) if exc is not None else "unknown"
        if self.failures == 1 or self.failures % 20 == 0:  # the trace once, then every 20th
            log.error(
                "%s %s: a batch of %d failed (%d in a row)",
                self.service, self.name, records, self.failures, exc_info=exc,
            )  # fmt: skip
        else:
            log.warning("%s %s: failed again (%d in a row): %s", self.service, self.name,
                        self.failures, self.last_error)  # fmt: skip

    async def _recover(self, handle: Handler, batches: Sequence[_Batch], exc: BaseException | None) -> None:
        """After a failure (the lock held): an infrastructure fault rewinds and pauses; anything
        else isolates the records that failed."""
        records = [r for b in batches for r in b.records]
        self._failed(exc, len(records))
        if exc is None or is_transient(exc) or any(b.generation != self.generation for b in batches):
            self.rewind(batches)
            await self._back_off()
            return
        await self._isolate(handle, records)

    async def _back_off(self) -> None:
        await asyncio.sleep(backoff_s(self.failures))

    async def _isolate(self, handle: Handler, records: Sequence[ConsumerRecord]) -> None:
        """Handle `records` once more, then in ever smaller parts, each sent and committed before
        the next, until the record that fails alone is found: it is dead-lettered and the rest
        flows. An infrastructure fault meanwhile rewinds to the part it hit (what came before is
        committed) and pauses."""
        generation = self.generation
        parts = [list(records)]  # a stack: the first part on top
        while parts:
            if self.revoking:  # a rebalance or a stop waits: the rest comes again (rewound)
                self.rewind([_Batch.of_records([r for p in parts for r in p], generation)])
                return
            part = parts.pop()
            batch = _Batch.of_records(part, generation)
            self.reset()
            try:
                batch.number = self.checkpoint.begin()
                started = time.perf_counter()
                handled = self._handled(await handle(part))
                batch.seconds = time.perf_counter() - started
                await self._finish(batch, handled)
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_transient(exc):
                    self._failed(exc, len(part))
                    self.rewind([_Batch.of_records([r for p in (*parts, part) for r in p], generation)])
                    await self._back_off()
                    return
                failure = exc
            if len(part) > 1:
                middle = len(part) // 2
                parts += [part[middle:], part[:middle]]
                continue
            try:
                await self._dead_letter(part[0], failure)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the dead letter could not be sent: retry from this record
                self._failed(exc, 1)
                self.rewind([_Batch.of_records([r for p in (*parts, part) for r in p], generation)])
                await self._back_off()
                return

    async def _dead_letter(self, record: ConsumerRecord, exc: BaseException) -> None:
        letter = dead_letter(
            self.service, record, PROCESSING_FAILED, describe(exc), error_type=type(exc).__name__
        )
        await self.sender.send([Output(self.settings.topics.events_dlq, None, encode(letter))])
        await self._commit({TopicPartition(record.topic, record.partition): record.offset + 1})
        DEAD_LETTERS.labels(self.service, PROCESSING_FAILED).inc()
        MESSAGES.labels(self.service, record.topic, REJECTED).inc()
        log.error(
            "%s %s: dead-lettered %s[%d]@%d, which fails alone: %s",
            self.service, self.name, record.topic, record.partition, record.offset, letter.detail,
        )  # fmt: skip
