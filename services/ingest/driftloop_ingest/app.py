"""Wiring of the ingest service: `events.raw` → `events.validated` + offline store (+ `events.dlq`)."""

from __future__ import annotations

from datetime import timedelta

from faststream.asgi import AsgiFastStream
from faststream.kafka.annotations import KafkaMessage

from driftloop.contracts import DeadLetter, Observation
from driftloop.kafka import Bus, batch_subscriber, ensure_topics, make_broker, run_batch
from driftloop.runtime import Readiness, build_app, run_service
from driftloop.spec import load_specs
from driftloop.store import RowStore
from driftloop_ingest.handlers import SERVICE, IngestHandler
from driftloop_ingest.settings import IngestSettings


def create_app(settings: IngestSettings) -> AsgiFastStream:
    broker = make_broker(settings, SERVICE)
    topics = settings.topics
    store = RowStore(settings.offline_dir)
    handler = IngestHandler(
        load_specs(settings.models_dir),
        store,
        Bus(broker, SERVICE, topics.events_dlq),
        topics,
        timedelta(seconds=settings.max_future_s),
    )

    @batch_subscriber(broker, settings, topics.events_raw, group_id=settings.group_id, consumes=Observation)
    async def on_events_raw(message: KafkaMessage) -> None:
        await run_batch(SERVICE, topics.events_raw, message, handler.handle)

    broker.publisher(topics.events_validated, title="to_events_validated", schema=Observation)
    broker.publisher(topics.events_dlq, title="to_events_dlq", schema=DeadLetter)

    async def create_topics() -> None:
        await ensure_topics(
            settings,
            [topics.events_raw, topics.events_validated, topics.events_dlq],
        )

    async def close_store() -> None:
        store.close()

    return build_app(SERVICE, broker, Readiness(), on_startup=[create_topics], on_shutdown=[close_store])


def main() -> None:
    run_service(IngestSettings, create_app)


if __name__ == "__main__":
    main()
