"""ingest → feature on a real broker and redis-server: validation, dead letters, dedup, stores."""

import base64

import orjson
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from driftloop.contracts import DeadLetter, FeatureRow, Observation
from driftloop.features import online_key
from driftloop.store import RowStore
from driftloop_feature.app import create_app as feature_app
from driftloop_feature.settings import FeatureSettings
from driftloop_ingest.app import create_app as ingest_app
from driftloop_ingest.settings import IngestSettings
from tests.conftest import ROOT, wait_for
from tests.helpers import collect


async def test_observations_flow_to_features_and_stores(kafka_bootstrap, redis_url, topics, tmp_path):
    common = {
        "kafka_bootstrap": kafka_bootstrap,
        "redis_url": redis_url,
        "topics": topics,
        "models_dir": ROOT / "models",
    }
    ingest = ingest_app(IngestSettings(**common, offline_dir=tmp_path / "offline"))
    feature = feature_app(FeatureSettings(**common))
    good = [
        {
            "event_id": f"e{i}",
            "model": "sea",
            "features": {"x0": i % 10, "x1": 1, "x2": 2},
            "label": i % 2,
            "entity_id": f"user-{i % 3}",
        }
        for i in range(50)
    ]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=False)
    async with ingest, feature:
        await producer.start()
        try:
            for payload in good:
                await producer.send_and_wait(topics.events_raw, orjson.dumps(payload))
            bad = await producer.send_and_wait(topics.events_raw, b'{"event_id": "x", "model": 1}')
            for payload in good[:10]:  # a producer retry / redelivery of the first ten
                await producer.send_and_wait(topics.events_raw, orjson.dumps(payload))
        finally:
            await producer.stop()
        rows = await collect(kafka_bootstrap, topics.features_computed, FeatureRow, 50)
        dead = await collect(kafka_bootstrap, topics.events_dlq, DeadLetter, 1)
        store = RowStore(tmp_path / "offline")
        await wait_for(lambda: store.count("sea") == 50, what="the offline store to hold 50 rows")
        redis = Redis.from_url(redis_url)
        try:
            stored = await redis.hgetall(online_key("sea", "user-1"))
        finally:
            await redis.aclose()

    assert sorted(r.event_id for r in rows) == sorted(p["event_id"] for p in good)
    assert rows[0].features.keys() == {"x0", "x1", "x2"}
    again = await collect(kafka_bootstrap, topics.features_computed, FeatureRow, 60, timeout=2)
    assert len(again) == 50, "a redelivered observation produced a second feature row"
    assert store.count("sea") == 50
    assert Observation.model_validate_json(store.window("sea", last_n=1)[0]).model == "sea"
    assert [d.reason for d in dead] == ["invalid_schema"]
    assert (dead[0].source_partition, dead[0].source_offset) == (bad.partition, bad.offset)
    assert base64.b64decode(dead[0].original) == b'{"event_id": "x", "model": 1}'
    assert stored[b"x1"] == b"1.0" and b"_event_time" in stored
