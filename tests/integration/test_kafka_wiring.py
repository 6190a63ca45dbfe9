"""Shared Kafka wiring against a real broker: topic creation, outputs larger than a producer batch."""

from aiokafka.admin import AIOKafkaAdminClient

from driftloop.contracts import Observation
from driftloop.fastpath import BatchSender, Output
from driftloop.kafka import encode, ensure_topics
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
