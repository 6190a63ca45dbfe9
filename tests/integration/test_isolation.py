"""The stream loop on a real broker: a record its handler fails on is found, dead-lettered with its
bytes, key, timestamp and headers, and every other record of its partition is handled and
committed; a restarted consumer does not see it again."""

from __future__ import annotations

import base64

import orjson
from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition

from driftloop.contracts import DeadLetter
from driftloop.fastpath import PROCESSING_FAILED, FastPath, Handled, Output
from driftloop.kafka import ensure_topics
from driftloop.metrics import DEAD_LETTERS, Tally
from driftloop.settings import ServiceSettings
from tests.conftest import wait_for
from tests.helpers import collect


class Handler:
    """Echoes each record's value to `out`; fails on any batch holding the poison record."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.handled: list[bytes] = []
        self.calls = 0

    async def handle(self, records: list[ConsumerRecord]) -> Handled:
        self.calls += 1
        if any(r.value == b"poison" for r in records):
            raise KeyError("a field the validation let through")
        tally = Tally()
        tally.inc(_Seen(self.handled, [r.value for r in records]))
        return Handled([Output(self.topic, r.key, r.value) for r in records], tally=tally)


class _Seen:
    def __init__(self, into: list[bytes], values: list[bytes]) -> None:
        self.into, self.values = into, values

    def inc(self, amount: float) -> None:  # applied once the batch is committed
        self.into.extend(self.values)


async def test_a_poison_record_is_isolated_on_a_real_broker(kafka_bootstrap, topics):
    settings = ServiceSettings(kafka_bootstrap=kafka_bootstrap, topics=topics, kafka_partitions=1)
    source, out = topics.events_raw, topics.events_validated
    await ensure_topics(settings, [source, out, topics.events_dlq])
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for i in range(300):
            value = b"poison" if i == 137 else b"ok-%d" % i
            await producer.send(source, value, key=b"k%d" % i, headers=[("trace", b"t%d" % i)],
                                timestamp_ms=1_700_000_000_000 + i)  # fmt: skip
        await producer.flush()
    finally:
        await producer.stop()
    before = DEAD_LETTERS.labels("test", PROCESSING_FAILED)._value.get()

    handler = Handler(out)
    loop = FastPath(settings, "test", source, "isolation-test")
    await loop.start(handler.handle)
    try:
        await wait_for(lambda: len(handler.handled) == 299, 30, "every other record handled")
        await wait_for(lambda: loop.committed.get(next(iter(loop.committed), None), 0) == 300, 10, "commit")
    finally:
        await loop.stop()

    assert sorted(handler.handled) == sorted(b"ok-%d" % i for i in range(300) if i != 137)
    (letter,) = await collect(kafka_bootstrap, topics.events_dlq, DeadLetter, 1)
    assert (letter.source_topic, letter.source_offset, letter.reason) == (source, 137, PROCESSING_FAILED)
    assert letter.error_type == "KeyError" and "validation let through" in letter.detail
    assert base64.b64decode(letter.original) == b"poison"
    assert base64.b64decode(letter.original_key or "") == b"k137"
    assert letter.original_timestamp == 1_700_000_000_137
    assert [(k, base64.b64decode(v)) for k, v in letter.original_headers] == [("trace", b"t137")]
    assert DEAD_LETTERS.labels("test", PROCESSING_FAILED)._value.get() == before + 1
    echoed = await collect(kafka_bootstrap, out, _Raw, 300, timeout=2)
    assert len(echoed) == 299  # each other record once: none repeated by the search

    # a consumer of the same group starts after the poison record: its offset was committed
    again = Handler(out)
    later = FastPath(settings, "test", source, "isolation-test")
    await later.start(again.handle)
    try:  # assigned, and a fetch answered (the partition's end is known): nothing came
        partition = TopicPartition(source, 0)
        await wait_for(lambda: later.committed.get(partition) == 300, 30, "the group's offset")
        await wait_for(lambda: later.consumer.highwater(partition) == 300, 10, "a fetch")
    finally:
        await later.stop()
    assert again.handled == [] and again.calls == 0


class _Raw:
    @staticmethod
    def validate_json(raw: bytes) -> bytes:
        return orjson.loads(b'"' + raw + b'"') and raw
