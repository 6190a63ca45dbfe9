"""The ingest service's wiring on FastStream's in-memory broker: good records flow, bad ones are
dead-lettered, duplicates are dropped."""

import base64

import orjson
from faststream.kafka import TestKafkaBroker

from driftloop.contracts import DeadLetter, Observation
from driftloop_ingest.app import create_app
from driftloop_ingest.settings import IngestSettings
from tests.conftest import ROOT


async def test_ingest_validates_dead_letters_and_dedupes(tmp_path):
    settings = IngestSettings(models_dir=ROOT / "models", offline_dir=tmp_path)
    app = create_app(settings)
    (broker,) = app.brokers
    validated, dead = [], []

    @broker.subscriber(settings.topics.events_validated)
    async def on_validated(body: dict) -> None:
        validated.append(Observation.model_validate(body))

    @broker.subscriber(settings.topics.events_dlq)
    async def on_dead(body: dict) -> None:
        dead.append(DeadLetter.model_validate(body))

    good = {"event_id": "e1", "model": "sea", "features": {"x0": 1, "x1": 2, "x2": 3}, "label": 1}
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish_batch(
            orjson.dumps(good), b"{oops", orjson.dumps(good), topic=settings.topics.events_raw
        )
        await test_broker.publish(orjson.dumps(good), topic=settings.topics.events_raw)

    assert [o.event_id for o in validated] == ["e1"]
    assert len(dead) == 1 and dead[0].reason == "malformed_json"
    assert base64.b64decode(dead[0].original) == b"{oops"
    assert dead[0].source_topic == settings.topics.events_raw
