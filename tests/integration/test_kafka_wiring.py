"""Shared Kafka wiring against a real broker: topic creation, outputs larger than a producer batch."""

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from driftloop.contracts import Observation
from driftloop.fastpath import BatchSender, Output
from driftloop.kafka import encode, ensure_topics, group_lag
from driftloop.settings import ServiceSettings
from tests.helpers import collect


async def test_topics_are_created_once_with_control_topics_kept_in_order(kafka_bootstrap, topics):
    settings = ServiceSettings(kafka_bootstrap=kafka_bootstrap, topics=topics, kafka_partitions=3)
    await ensure_topics(settings, topics.all())
    await ensure_topics(settings, topics.all())  # idempotent
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        described = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(topics.all())}
    finally:
        await admin.close()
    assert described[topics.models_lifecycle] == 1
    assert described[topics.training_requests] == 1
    assert described[topics.predictions_requests] == 3


async def test_outputs_larger_than_a_producer_batch_are_sent_completely(kafka_bootstrap, topics):
    settings = ServiceSettings(kafka_bootstrap=kafka_bootstrap, topics=topics)
    await ensure_topics(settings, [topics.events_raw])
    messages = [
        Observation(event_id=f"e{i}", model="sea", features={"x0": i, "pad": "p" * 1000}) for i in range(3000)
    ]  # ~3 MB: several broker batches of at most 1 MB per partition
    sender = await BatchSender.connect(kafka_bootstrap, "test")
    try:
        await sender.send([Output(topics.events_raw, m.event_id.encode(), encode(m)) for m in messages])
    finally:
        await sender.stop()
    got = await collect(kafka_bootstrap, topics.events_raw, Observation, 3000)
    assert sorted(o.event_id for o in got) == sorted(m.event_id for m in messages)


async def test_group_lag_is_what_a_group_has_left_to_commit(kafka_bootstrap, topics):
    settings = ServiceSettings(kafka_bootstrap=kafka_bootstrap, topics=topics, kafka_partitions=3)
    source, other = topics.events_raw, topics.events_validated
    await ensure_topics(settings, [source, other])
    sender = await BatchSender.connect(kafka_bootstrap, "test")
    try:
        await sender.send([Output(source, str(i).encode(), b"x") for i in range(100)])
        await sender.send([Output(other, str(i).encode(), b"y") for i in range(7)])
    finally:
        await sender.stop()
    group = f"g-{source}"
    # a group that committed nothing has every record left, on each topic it reads
    assert await group_lag(kafka_bootstrap, {group: [source]}) == {group: 100}
    assert await group_lag(kafka_bootstrap, {group: [source, other]}) == {group: 107}
    consumer = AIOKafkaConsumer(
        source, bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False,
        auto_offset_reset="earliest",
    )  # fmt: skip
    await consumer.start()
    try:
        read = 0
        while read < 60:
            batches = await consumer.getmany(timeout_ms=500, max_records=60 - read)
            read += sum(len(records) for records in batches.values())
        await consumer.commit()
    finally:
        await consumer.stop()
    assert await group_lag(kafka_bootstrap, {group: [source], "nobody": [other]}) == {group: 40, "nobody": 7}
