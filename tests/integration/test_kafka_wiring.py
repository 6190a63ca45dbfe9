"""Shared Kafka wiring against a real broker: topic creation, size-bounded batch publishing."""

from aiokafka.admin import AIOKafkaAdminClient
from faststream.kafka import KafkaBroker

from driftloop.contracts import Observation
from driftloop.kafka import Bus, ensure_topics, make_broker
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


async def test_large_batches_are_published_completely(kafka_bootstrap, topics):
    settings = ServiceSettings(kafka_bootstrap=kafka_bootstrap, topics=topics)
    await ensure_topics(settings, [topics.events_raw])
    broker: KafkaBroker = make_broker(settings, "test")
    messages = [
        Observation(event_id=f"e{i}", model="sea", features={"x0": i, "pad": "p" * 300}) for i in range(3000)
    ]
    async with broker:
        await broker.start()
        await Bus(broker, "test", topics.events_dlq).publish(topics.events_raw, messages)
    got = await collect(kafka_bootstrap, topics.events_raw, Observation, 3000)
    assert sorted(o.event_id for o in got) == sorted(m.event_id for m in messages)
