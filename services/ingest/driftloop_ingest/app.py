"""Wiring of the ingest service: `events.raw` → `events.validated` + offline store (+ `events.dlq`)."""

from __future__ import annotations

from datetime import timedelta

from driftloop.connections import object_store
from driftloop.contracts import Observation
from driftloop.runtime import ServiceApp, build_app, follow_specs, service_main
from driftloop.service import Service, consumes
from driftloop.store import RowStore
from driftloop_ingest.adapters import OfflineExport
from driftloop_ingest.handlers import SERVICE, IngestHandler
from driftloop_ingest.settings import IngestSettings


def create_app(settings: IngestSettings) -> ServiceApp:
    topics = settings.topics
    specs = follow_specs(SERVICE, settings)
    store = RowStore(
        settings.offline_dir,
        partition_days=settings.store_partition_days,
        min_free_bytes=settings.store_min_free_mb * 2**20,
    )
    export = OfflineExport(store, object_store(settings))
    handler = IngestHandler(specs.book, store, topics, timedelta(seconds=settings.max_future_s))
    service = Service(
        SERVICE,
        settings,
        [consumes(handler, {topics.events_raw: Observation}, settings.group_id)],
        produces={topics.events_validated: Observation},
        specs=specs,
    )

    async def export_offline() -> None:
        await export.run(settings.offline_export_every_s)

    return build_app(service, background=[export_offline], on_shutdown=[store.close])


main = service_main(IngestSettings, create_app)  # the `driftloop-ingest` command


if __name__ == "__main__":
    main()
