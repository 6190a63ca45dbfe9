"""Wiring of the feature service: `events.validated` → `features.computed` + Redis online store.
`events.validated` (payload `Observation`) is consumed by the hot-path loop (`driftloop.fastpath`,
aiokafka batches), not by FastStream."""

from __future__ import annotations

from faststream.asgi import AsgiFastStream

from driftloop.connections import redis_client
from driftloop.contracts import DeadLetter, FeatureRow, Observation
from driftloop.fastpath import FastPath
from driftloop.kafka import ensure_topics, make_broker
from driftloop.online import RedisOnlineStore
from driftloop.runtime import Readiness, build_app, model_specs, run_service
from driftloop_feature.handlers import SERVICE, FeatureHandler
from driftloop_feature.histories import HistoryCache
from driftloop_feature.settings import FeatureSettings


def create_app(settings: FeatureSettings) -> AsgiFastStream:
    broker = make_broker(settings, SERVICE)
    topics = settings.topics
    catalog = model_specs(SERVICE, settings)
    redis = redis_client(settings)
    handler = FeatureHandler(
        catalog.specs,
        RedisOnlineStore(redis, settings.online_ttl_s),
        topics,
        HistoryCache(settings.history_cache_entities, settings.online_ttl_s),
    )
    hot_path = FastPath(settings, SERVICE, topics.events_validated, settings.group_id, reset=handler.reset)

    broker.publisher(topics.features_computed, title="to_features_computed", schema=FeatureRow)
    broker.publisher(topics.events_dlq, title="to_events_dlq", schema=DeadLetter)

    async def start() -> None:
        await ensure_topics(settings, [topics.events_validated, topics.features_computed, topics.events_dlq])
        await hot_path.start(handler.handle)

    async def stop() -> None:
        await hot_path.stop()
        await redis.aclose()

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
    run_service(FeatureSettings, create_app)


if __name__ == "__main__":
    main()
