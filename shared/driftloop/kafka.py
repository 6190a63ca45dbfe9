"""The one Kafka client factory: FastStream brokers, batch subscribers, topic admin, dead letters."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from prometheus_client import REGISTRY
from pydantic import BaseModel

from driftloop.connections import faststream_security, kafka_options
from driftloop.contracts import DeadLetter, InvalidInput
from driftloop.metrics import DEAD_LETTERS, count, next_offsets, record_lag, timed_batch
from driftloop.settings import ServiceSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BATCH_BYTES = 512 * 1024
RETRY_BACKOFF_S = 1.0
DEAD_LETTER_KEEP_BYTES = 64 * 1024


def make_broker(settings: ServiceSettings, service: str) -> KafkaBroker:
    """A FastStream Kafka broker with driftloop's defaults (acks=all, no idempotence, metrics)."""
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


def batch_subscriber(
    broker: KafkaBroker,
    settings: ServiceSettings,
    *topics: str,
    group_id: str,
    consumes: type[BaseModel] | tuple[type[BaseModel], ...],
) -> Any:
    """Subscribe to topics in batches, committing only after the handler returns (at-least-once).

    The handler gets raw records, so a malformed one is dead-lettered instead of failing the batch;
    an exception (an infrastructure fault) rewinds the batch, which is then delivered again.
    """
    kinds = consumes if isinstance(consumes, tuple) else (consumes,)
    names = ", ".join(f"`{k.__name__}` (schemas/json/{k.__name__}.json)" for k in kinds)
    return broker.subscriber(
        *topics,
        group_id=group_id,
        batch=True,
        max_records=settings.kafka_max_records,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        batch_timeout_ms=settings.kafka_fetch_max_wait_ms,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        ack_policy=AckPolicy.NACK_ON_ERROR,
        description=(
            f"Batches of {names}; invalid records are dead-lettered, the rest handled, "
            "then offsets committed."
        ),
    )


def documented_consumer(
    bootstrap: str, topic: str, group_id: str | None, payload: Any, name: str, description: str
) -> KafkaBroker:
    """A broker that is never started, holding one subscription for a service's AsyncAPI
    document: what it consumes with aiokafka directly (the hot path, lifecycle followers), which
    FastStream would not otherwise know of. `payload`: a contract, or a union of them (`name`)."""
    documented = KafkaBroker(bootstrap)

    async def consume(message: Any) -> None:  # never subscribed: it only carries the schema
        raise NotImplementedError

    consume.__annotations__ = {"message": payload, "return": None}
    documented.subscriber(topic, group_id=group_id, title=f"{topic}:{name}", description=description)(consume)
    return documented


async def run_batch(
    service: str,
    topic: str,
    message: Any,
    handle: Callable[[Sequence[ConsumerRecord]], Awaitable[None]],
) -> None:
    """Handle one consumed batch, timed; on a fault, back off before the batch is redelivered."""
    records = records_of(message)
    with timed_batch(service, topic, len(records)):
        try:
            await handle(records)
            record_lag(service, getattr(message, "consumer", None), next_offsets(records))
        except Exception:
            count(service, topic, "error", len(records))
            log.exception("%s: batch of %d from %s failed; redelivering", service, len(records), topic)
            await asyncio.sleep(RETRY_BACKOFF_S)
            raise


def records_of(message: Any) -> tuple[ConsumerRecord, ...]:
    """The raw consumer records behind a FastStream Kafka message (batch or single)."""
    raw = message.raw_message
    return tuple(raw) if isinstance(raw, tuple | list) else (raw,)


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


def dead_letter(service: str, record: ConsumerRecord, reason: str, detail: str) -> DeadLetter:
    """A dead-letter record for a rejected input, keeping its original bytes (up to 64 KiB)."""
    value = record.value or b""
    return DeadLetter(
        service=service,
        reason=reason,
        detail=detail[:2000],
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        original=base64.b64encode(value[:DEAD_LETTER_KEEP_BYTES]).decode("ascii"),
        original_size=len(value),
    )


async def publish_all(broker: KafkaBroker, topic: str, messages: Sequence[BaseModel]) -> None:
    """Publish contracts to one topic in size-bounded batches; wait for the broker's acks."""
    chunk: list[bytes] = []
    size = 0
    for message in messages:
        body = encode(message)
        if chunk and size + len(body) > MAX_BATCH_BYTES:
            await broker.publish_batch(*chunk, topic=topic)
            chunk, size = [], 0
        chunk.append(body)
        size += len(body) + 64
    if chunk:
        await broker.publish_batch(*chunk, topic=topic)


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


async def _assign_all(
    bootstrap: str, topic: str, fetch_max_wait_ms: int, options: Mapping[str, Any] | None
) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=fetch_max_wait_ms,
        **(options or {}),
    )
    await consumer.start()
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        await consumer.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic) or {0}
    consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
    return consumer


async def read_from_start(
    bootstrap: str, topic: str, fetch_max_wait_ms: int = 50, options: Mapping[str, Any] | None = None
) -> AIOKafkaConsumer:
    """A group-less consumer positioned at the start of every partition of `topic` (`options`:
    `driftloop.connections.kafka_options`)."""
    consumer = await _assign_all(bootstrap, topic, fetch_max_wait_ms, options)
    await consumer.seek_to_beginning(*consumer.assignment())
    return consumer


async def follow_truncation(consumer: AIOKafkaConsumer) -> bool:
    """Seek a consumer back to the start of every assigned partition whose log now ends before its
    position: the topic was deleted and created again, or the broker lost it (tansu keeps topics in
    memory). Such a fetch gets no error, just nothing, until the new log grows past the old
    position. True when it moved. Call it when a fetch comes back empty."""
    moved = False
    for tp in consumer.assignment():
        highwater = consumer.highwater(tp)
        if highwater is not None and await consumer.position(tp) > highwater:
            log.warning("%s ends at %d, before the position: reading it again from its start", tp, highwater)
            await consumer.seek_to_beginning(tp)
            moved = True
    return moved


class TruncationWatch:
    """`follow_truncation` after every empty fetch, and at least every `every_s` seconds: one
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
        now = self.clock()
        if count and now - self.last < self.every_s:
            return False
        self.last = now
        return await follow_truncation(self.consumer)


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


class Bus:
    """The publishing port handlers get injected: contracts to topics, rejects to the DLQ."""

    def __init__(self, broker: KafkaBroker, service: str, dlq_topic: str) -> None:
        self.broker = broker
        self.service = service
        self.dlq_topic = dlq_topic

    async def publish(self, topic: str, messages: Sequence[BaseModel]) -> None:
        await publish_all(self.broker, topic, messages)

    async def dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Publish dead letters and count them by reason."""
        await publish_all(self.broker, self.dlq_topic, letters)
        for letter in letters:
            DEAD_LETTERS.labels(self.service, letter.reason).inc()
