"""Wiring of the ingest service: `events.raw` → `events.validated` + offline store (+ `events.dlq`).
`events.raw` (payload `Observation`) is consumed by the hot-path loop (`driftloop.fastpath`,
aiokafka batches), not by FastStream."""

from __future__ import annotations

from datetime import timedelta

from faststream.asgi import AsgiFastStream

from driftloop.contracts import DeadLetter, Observation
from driftloop.fastpath import FastPath
from driftloop.kafka import ensure_topics, make_broker
from driftloop.runtime import Readiness, build_app, model_specs, run_service
from driftloop.store import RowStore
from driftloop_ingest.handlers import SERVICE, IngestHandler
from driftloop_ingest.settings import IngestSettings


def create_app(settings: IngestSettings) -> AsgiFastStream:
    broker = make_broker(settings, SERVICE)
    topics = settings.topics
    catalog = model_specs(SERVICE, settings)
    store = RowStore(
        settings.offline_dir,
        partition_days=settings.store_partition_days,
        min_free_bytes=settings.store_min_free_mb * 2**20,
    )
    handler = IngestHandler(catalog.specs, store, topics, timedelta(seconds=settings.max_future_s))
    hot_path = FastPath(settings, SERVICE, topics.events_raw, settings.group_id, reset=handler.reset)

    broker.publisher(topics.events_validated, title="to_events_validated", schema=Observation)
    broker.publisher(topics.events_dlq, title="to_events_dlq", schema=DeadLetter)

    async def start() -> None:
        await ensure_topics(settings, [topics.events_raw, topics.events_validated, topics.events_dlq])
        await hot_path.start(handler.handle)

    async def stop() -> None:
        await hot_path.stop()
        store.close()

    documented = hot_path.describe(Observation)  # consumed outside FastStream
    return build_app(
        SERVICE,
        broker,
        Readiness(consumers=[hot_path], specs=catalog),
        on_startup=[start],
        on_shutdown=[stop],
        documented=documented,
    )


def main() -> None:
    run_service(IngestSettings, create_app)


if __name__ == "__main__":
    main()
