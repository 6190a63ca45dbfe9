"""The one Kafka client factory: every producer, consumer and admin client driftloop opens (with
the security options of `driftloop.connections`), a service's FastStream broker, group-less
readers, dead letters.
Group consumers are `driftloop.fastpath.FastPath` loops, declared by `driftloop.service`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from faststream.kafka import KafkaBroker
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from prometheus_client import REGISTRY
from pydantic import BaseModel

from driftloop.connections import faststream_security, kafka_options
from driftloop.contracts import DeadLetter, InvalidInput
from driftloop.metrics import OFFSET_GAPS
from driftloop.settings import ServiceSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BATCH_BYTES = 512 * 1024
DEAD_LETTER_KEEP_BYTES = 64 * 1024


def producer(bootstrap: str, options: Mapping[str, Any] | None = None, **tuning: Any) -> AIOKafkaProducer:
    """A producer: acks=all, without idempotence (tansu, the embedded broker, has no InitProducerId;
    consumers are idempotent instead). `options`: `driftloop.connections.kafka_options`; `tuning`:
    aiokafka's other arguments (client_id, linger_ms, max_batch_size)."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, **(options or {}), **tuning
    )


def consumer(bootstrap: str, options: Mapping[str, Any] | None = None, **tuning: Any) -> AIOKafkaConsumer:
    """A consumer whose offsets only driftloop commits (no auto-commit). `options`:
    `driftloop.connections.kafka_options`; `tuning`: aiokafka's other arguments (group_id, ...)."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, **(options or {}), **tuning
    )


def make_broker(settings: ServiceSettings, service: str) -> KafkaBroker:
    """A service's FastStream Kafka broker (`driftloop.service.Service.broker`): the producer of its
    occasional events outside any batch, and the client `/readyz` asks whether the broker answers.
    driftloop's defaults: acks=all, no idempotence, FastStream's metrics."""
    return KafkaBroker(
        settings.kafka_bootstrap,
        client_id=f"driftloop-{service}",
        # tansu (the embedded broker) has no InitProducerId; consumers are idempotent instead.
        enable_idempotence=False,
        acks="all",
        linger_ms=2,
        max_batch_size=MAX_BATCH_BYTES + 64 * 1024,
        logger=logging.getLogger(f"driftloop.{service}.broker"),
        log_level=logging.DEBUG,
        middlewares=[KafkaPrometheusMiddleware(registry=REGISTRY, app_name=service)],
        security=faststream_security(settings),
    )


def triage(
    service: str, records: Sequence[ConsumerRecord], parse: Callable[[ConsumerRecord], T]
) -> tuple[list[T], list[DeadLetter]]:
    """Parse every record; each one that raises `InvalidInput` becomes a dead letter instead."""
    parsed: list[T] = []
    dead: list[DeadLetter] = []
    for record in records:
        try:
            parsed.append(parse(record))
        except InvalidInput as exc:
            dead.append(dead_letter(service, record, exc.reason, exc.detail))
    return parsed, dead


def encode(model: BaseModel) -> bytes:
    """Serialise a contract to JSON bytes, exactly as the model dumps it."""
    return orjson.dumps(model.model_dump(mode="json"))


def dead_letter(
    service: str, record: ConsumerRecord, reason: str, detail: str, error_type: str | None = None
) -> DeadLetter:
    """A dead-letter record for a rejected input, keeping its bytes (up to 64 KiB), key, timestamp
    and headers. `detail` is made valid, printable UTF-8 (a record's lone surrogates escaped)."""
    value = record.value or b""
    return DeadLetter(
        service=service,
        reason=reason,
        detail=detail.encode("utf-8", "backslashreplace").decode("utf-8")[:2000],
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        original=_b64(value[:DEAD_LETTER_KEEP_BYTES]),
        original_size=len(value),
        original_key=None if record.key is None else _b64(record.key[:DEAD_LETTER_KEEP_BYTES]),
        original_timestamp=record.timestamp if isinstance(record.timestamp, int) else None,
        original_headers=[
            (str(name).encode("utf-8", "backslashreplace").decode("utf-8"), _b64(header or b""))
            for name, header in (record.headers or ())
        ],
        error_type=error_type,
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


async def ensure_topics(settings: ServiceSettings, names: Sequence[str]) -> None:
    """Create topics that do not exist yet; existing ones are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, **kafka_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in dict.fromkeys(names) if n not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [
                        NewTopic(
                            n,
                            settings.topics.partitions(n, settings.kafka_partitions),
                            1,
                            topic_configs=settings.topics.configs(n),
                        )
                        for n in missing
                    ]
                )
            log.info("created topics %s", missing)
    finally:
        await admin.close()


async def group_lag(
    bootstrap: str, groups: Mapping[str, Sequence[str]], options: Mapping[str, Any] | None = None
) -> dict[str, int]:
    """Records each consumer group has yet to commit on the topics it reads (`groups`: group ->
    topics): the end of every partition minus the group's committed offset there (the start of
    the partition where it committed nothing yet). What the broker says, not what a member last
    saw. A consumer of each group that never subscribes reads its offsets without joining it; the
    ends are the high-water marks of a fetch (tansu answers a ListOffsets for the latest offset
    wrongly)."""
    options = options or {}
    # fetches of a few bytes: only their high-water marks are read
    ends = consumer(bootstrap, options, fetch_max_wait_ms=20, max_partition_fetch_bytes=1024)
    readers = {group: consumer(bootstrap, options, group_id=group) for group in groups}
    try:
        for client in (ends, *readers.values()):
            await client.start()
        partitions = {
            topic: [TopicPartition(topic, p) for p in sorted(ends.partitions_for_topic(topic) or ())]
            for topic in {t for topics in groups.values() for t in topics}
        }
        every = [tp for tps in partitions.values() for tp in tps]
        starts = await ends.beginning_offsets(every)
        committed = {  # before the ends: on a busy topic, the lag errs on the high side
            group: {tp: await readers[group].committed(tp) for topic in topics for tp in partitions[topic]}
            for group, topics in groups.items()
        }
        newest: dict[
            TopicPartition, int
        ] = {}  # where the fetches start: the furthest any group got, so they read little
        for offsets in committed.values():
            for tp, at in offsets.items():
                newest[tp] = max(newest.get(tp, starts[tp]), starts[tp] if at is None else at)
        highwater = await _highwaters(ends, newest)
        return {
            group: sum(max(0, highwater[tp] - max(starts[tp], at or 0)) for tp, at in offsets.items())
            for group, offsets in committed.items()
        }
    finally:
        for client in (ends, *readers.values()):
            await client.stop()


async def _highwaters(
    consumer: AIOKafkaConsumer, start: Mapping[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """The high-water mark of every partition, from fetches of one record at `start`."""
    partitions = list(start)
    consumer.assign(partitions)
    for tp, offset in start.items():
        consumer.seek(tp, offset)
    deadline = time.monotonic() + 10
    while any(consumer.highwater(tp) is None for tp in partitions) and time.monotonic() < deadline:
        await consumer.getmany(timeout_ms=50, max_records=1)
    return {tp: consumer.highwater(tp) or 0 for tp in partitions}


async def _assign_all(
    bootstrap: str, topic: str, fetch_max_wait_ms: int, options: Mapping[str, Any] | None
) -> AIOKafkaConsumer:
    reader = consumer(bootstrap, options, fetch_max_wait_ms=fetch_max_wait_ms)
    await reader.start()
    partitions = reader.partitions_for_topic(topic)
    if not partitions:
        await reader.topics()  # fresh metadata (a topic created since the client started)
        partitions = reader.partitions_for_topic(topic) or {0}
    reader.assign([TopicPartition(topic, p) for p in sorted(partitions)])
    return reader


async def read_from_start(
    bootstrap: str, topic: str, fetch_max_wait_ms: int = 50, options: Mapping[str, Any] | None = None
) -> AIOKafkaConsumer:
    """A group-less consumer positioned at the start of every partition of `topic` (`options`:
    `driftloop.connections.kafka_options`)."""
    consumer = await _assign_all(bootstrap, topic, fetch_max_wait_ms, options)
    await consumer.seek_to_beginning(*consumer.assignment())
    return consumer


async def moved_back(consumer: AIOKafkaConsumer) -> set[TopicPartition]:
    """Seek a consumer back to the start of every assigned partition whose log now ends before its
    position, and say which: the topic was deleted and created again, or the broker lost it (tansu
    keeps topics in memory). Such a fetch gets no error, just nothing, until the new log grows past
    the old position. Call it when a fetch comes back empty (`TruncationWatch`)."""
    moved = set()
    for tp in consumer.assignment():
        highwater = consumer.highwater(tp)
        if highwater is not None and await consumer.position(tp) > highwater:
            log.warning("%s ends at %d, before the position: reading it again from its start", tp, highwater)
            await consumer.seek_to_beginning(tp)
            moved.add(tp)
    return moved


Fetched = dict[TopicPartition, list[ConsumerRecord]]


def _gap(records: Sequence[ConsumerRecord], expected: int, start: int = 0) -> int | None:
    """The index (from `start`) of the first record past a gap in offsets (`start` itself: that
    record is past `expected`), or None when the records follow on from `expected` without one
    (or go back: a rewind).

    >>> from types import SimpleNamespace as R
    >>> [_gap([R(offset=o) for o in offsets], 3) for offsets in ([3, 4], [5, 6], [3, 4, 7], [1, 2])]
    [None, 0, 2, None]
    >>> _gap([R(offset=o) for o in (3, 6, 7, 9)], 6, start=1)
    3
    """
    first = records[start].offset
    if first > expected:
        return start
    if records[-1].offset - first + 1 == len(records) - start:  # one run: the usual case, no loop
        return None
    return next(
        (i for i in range(start + 1, len(records)) if records[i].offset > records[i - 1].offset + 1), None
    )


class GapGuard:
    """Reads a consumer's partitions without skipping records that a broker made readable late.

    A partition's offsets follow one another on a topic without compaction or transactions, so a
    fetch that begins past the offset after the last record read, or has a hole among its records
    (a fetch holds several of the broker's batches), skipped some. tansu 0.6 (the embedded broker)
    does that when producers append to one partition at once: it can serve a later batch before an
    earlier one is readable, and a consumer that takes it never sees the earlier one (`make
    bench-broker` counts them). The records from the hole on are set aside and the partition is
    read again from the hole, for up to `wait_s` (with `pause_s` between reads); a hole that
    outlasts it is real (a transaction's marker on Apache Kafka) and is passed with a warning.
    Topics in `compacted` have holes by design: not checked. Going back (a rewind, a topic read
    again from its start) is no hole. After a new assignment: `reset`, then `expect` where the
    partitions resume."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        wait_s: float = 0.25,
        name: str = "",
        compacted: Collection[str] = (),
        pause_s: float = 0.005,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.consumer = consumer
        self.wait_s = wait_s
        self.name = name  # the consumer's label in `driftloop_consumer_offset_gaps_total`
        self.compacted = frozenset(compacted)
        self.pause_s = pause_s
        self.clock = clock
        self.expected: dict[TopicPartition, int] = {}  # the offset after the last record read
        self._holes: dict[TopicPartition, tuple[int, float]] = {}  # (offset, first seen) of a hole

    def reset(self) -> None:
        """Forget where every partition was (its assignment changes)."""
        self.expected.clear()
        self._holes.clear()

    def expect(self, positions: Mapping[TopicPartition, int]) -> None:
        """Partitions resume at `positions` (what lies before is no hole), unless read since the
        `reset`: a fetch may come before the assignment's positions are known."""
        for tp, offset in positions.items():
            self.expected.setdefault(tp, offset)

    async def from_positions(self) -> None:
        """Expect every assigned partition at the consumer's position (a reader about to start)."""
        self.expect({tp: await self.consumer.position(tp) for tp in self.consumer.assignment()})

    def checked(self, fetched: Fetched) -> tuple[Fetched, bool]:
        """`fetched` up to the first hole of each partition that may still fill (the partition
        sought back to it), and whether any was sought back."""
        kept: Fetched = {}
        sought = False
        for tp, records in fetched.items():
            if not records:
                continue
            if tp.topic in self.compacted:
                kept[tp] = records
                continue
            upto = self._check(tp, records)
            sought |= upto < len(records)
            if upto:
                kept[tp] = records[:upto]
        return kept, sought

    def _check(self, tp: TopicPartition, records: list[ConsumerRecord]) -> int:
        """How many of a partition's records to keep (all, or up to a hole sought back to)."""
        expected, start = self.expected.get(tp, records[0].offset), 0
        while (cut := _gap(records, expected, start)) is not None:
            hole = expected if cut == start else records[cut - 1].offset + 1
            where, since = self._holes.get(tp, (hole, self.clock()))
            since = since if where == hole else self.clock()
            if self.clock() - since < self.wait_s:
                self._holes[tp] = (hole, since)
                self.consumer.seek(tp, hole)
                self.expected[tp] = hole
                OFFSET_GAPS.labels(self.name, "reread").inc()
                return cut
            OFFSET_GAPS.labels(self.name, "passed").inc()
            log.warning("%s: offsets %d-%d of %s did not come in %.2f s; going on", self.name, hole,
                        records[cut].offset - 1, tp, self.wait_s)  # fmt: skip
            self._holes.pop(tp, None)
            expected, start = records[cut].offset, cut
        self._holes.pop(tp, None)
        self.expected[tp] = records[-1].offset + 1
        return len(records)

    async def getmany(self, timeout_ms: int, max_records: int | None = None) -> Fetched:
        """The consumer's `getmany`, checked; a short pause when a partition is read again (the
        broker answers at once, with the later batch, until the earlier one is readable)."""
        kept, sought = self.checked(
            await self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        )
        if sought and self.pause_s:
            await asyncio.sleep(self.pause_s)
        return kept


class TruncationWatch:
    """`moved_back` after every empty fetch, and at least every `every_s` seconds: one
    partition past its end gets nothing while the others flow, so fetches are not always empty."""

    def __init__(
        self, consumer: AIOKafkaConsumer, every_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.consumer = consumer
        self.every_s = every_s
        self.clock = clock
        self.last = clock()

    async def fetched(self, count: int) -> bool:
        """Call after each fetch with its record count; True when a partition was sought back."""
        return bool(await self.moved(count))

    async def moved(self, count: int) -> set[TopicPartition]:
        """`fetched`, telling which partitions were sought back."""
        now = self.clock()
        if count and now - self.last < self.every_s:
            return set()
        self.last = now
        return await moved_back(self.consumer)


async def tail_from_end(
    bootstrap: str, topic: str, fetch_max_wait_ms: int = 20, options: Mapping[str, Any] | None = None
) -> AIOKafkaConsumer:
    """A group-less consumer positioned at the current end of every partition of `topic`."""
    consumer = await _assign_all(bootstrap, topic, fetch_max_wait_ms, options)
    assigned = list(consumer.assignment())
    await consumer.seek_to_end(*assigned)
    for tp in assigned:  # resolve positions now, so nothing produced from here on is missed
        await consumer.position(tp)
    return consumer


class TopicFollower:
    """Replays a topic from its start without a consumer group (`catch_up`: before a service's
    loops start), then follows it in the background: every record goes to `take`, in order. A
    topic the broker lost (emptied, created again) is read anew from its start and `truncated`
    is told. Subclasses: the lifecycle and the spec followers."""

    compacted = False  # a compacted topic has holes in its offsets by design (`GapGuard`)

    def __init__(
        self, bootstrap: str, topic: str, options: Mapping[str, Any] | None = None, fetch_wait_ms: int = 50
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.options = options  # `driftloop.connections.kafka_options`
        self.fetch_wait_ms = fetch_wait_ms  # such topics are quiet: a long wait spares the broker fetches
        self._consumer: AIOKafkaConsumer | None = None  # the replay's, until handed over
        self._following: Following | None = None  # `start`: following this topic alone
        self._guard: GapGuard | None = None  # the replay's

    async def take(self, record: ConsumerRecord) -> None:
        """Handle one record."""
        raise NotImplementedError

    def guarded_not(self) -> list[str]:
        """The topics a `GapGuard` must not check: this one when it is compacted."""
        return [self.topic] if self.compacted else []

    async def truncated(self) -> None:
        """The broker lost the topic; it is being read again from its start."""

    async def _drain(self, timeout_ms: int) -> int:
        assert self._guard is not None
        batches = await self._guard.getmany(timeout_ms=timeout_ms, max_records=500)
        count = 0
        for records in batches.values():
            for record in records:
                await self.take(record)
                count += 1
        return count

    async def catch_up(self) -> None:
        """Replay every record already on the topic, then return."""
        self._consumer = await read_from_start(self.bootstrap, self.topic, self.fetch_wait_ms, self.options)
        self._guard = GapGuard(self._consumer, name=f"follow {self.topic}", compacted=self.guarded_not())
        await self._guard.from_positions()
        partitions = list(self._consumer.assignment())
        end = await self._consumer.end_offsets(partitions)
        while any([await self._consumer.position(tp) < end[tp] for tp in partitions]):
            await self._drain(200)

    async def start(self) -> None:
        """Catch up, then follow in the background (a `Following` of this one topic)."""
        self._following = Following([self])
        await self._following.start()

    async def hand_over(self) -> dict[TopicPartition, int]:
        """After `catch_up`: stop reading, and say where each partition would go on (`Following`
        goes on from there with one consumer for one or several topics)."""
        assert self._consumer is not None, "caught up"
        positions = {tp: await self._consumer.position(tp) for tp in self._consumer.assignment()}
        await self.close()
        return positions

    async def close(self) -> None:
        """Stop this follower's own consumer (the replay's), if it has one."""
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer, self._guard = None, None

    async def stop(self) -> None:
        if self._following is not None:
            following, self._following = self._following, None
            await following.stop()
        await self.close()


class Following:
    """Followers of quiet topics (a service's specs, its lifecycle) that replay their topics one
    after the other, in the order given, then follow all of them with one consumer: one fetch loop
    for the broker instead of one per topic (each fetch costs the embedded broker the same, records
    or not). Records of one topic reach its follower in order; the topics interleave as they come."""

    def __init__(self, followers: Sequence[TopicFollower]) -> None:
        self.followers = list(followers)
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        positions: dict[TopicPartition, int] = {}
        try:
            for follower in self.followers:
                await follower.catch_up()
                positions.update(await follower.hand_over())
        except BaseException:
            await self.stop()
            raise
        if not self.followers:
            return
        first = self.followers[0]
        wait = min(f.fetch_wait_ms for f in self.followers)
        self._consumer = consumer(first.bootstrap, first.options, fetch_max_wait_ms=wait)
        try:
            await self._consumer.start()
            self._consumer.assign(list(positions))
            for tp, offset in positions.items():
                self._consumer.seek(tp, offset)
        except BaseException:
            await self.stop()
            raise
        name = "follow " + ", ".join(f.topic for f in self.followers)
        guard = GapGuard(
            self._consumer, name=name, compacted=[t for f in self.followers for t in f.guarded_not()]
        )
        guard.expect(positions)
        self._task = asyncio.create_task(self._follow(guard), name=name)

    async def _follow(self, guard: GapGuard) -> None:
        assert self._consumer is not None
        by_topic = {f.topic: f for f in self.followers}
        wait = min(f.fetch_wait_ms for f in self.followers)
        watch = TruncationWatch(self._consumer)  # one topic may be lost while the other flows
        while True:
            try:
                batches = await guard.getmany(timeout_ms=wait, max_records=500)
                for tp, records in batches.items():
                    for record in records:
                        await by_topic[tp.topic].take(record)
                for topic in {tp.topic for tp in await watch.moved(sum(map(len, batches.values())))}:
                    await by_topic[topic].truncated()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("following %s failed; retrying", ", ".join(by_topic))
                await asyncio.sleep(1)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        for follower in self.followers:
            await follower.close()  # one still replaying (a failed start) stops its own consumer
