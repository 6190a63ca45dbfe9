"""Wiring of the feature service: `events.validated` → `features.computed` + Redis online store."""

from __future__ import annotations

from faststream.asgi import AsgiFastStream
from faststream.kafka.annotations import KafkaMessage
from redis.asyncio import Redis

from driftloop.contracts import DeadLetter, FeatureRow, Observation
from driftloop.kafka import Bus, batch_subscriber, ensure_topics, make_broker, run_batch
from driftloop.runtime import Readiness, build_app, run_service
from driftloop.spec import load_specs
from driftloop_feature.adapters import OnlineStore
from driftloop_feature.handlers import SERVICE, FeatureHandler
from driftloop_feature.settings import FeatureSettings


def create_app(settings: FeatureSettings) -> AsgiFastStream:
    broker = make_broker(settings, SERVICE)
    topics = settings.topics
    redis = Redis.from_url(settings.redis_url)
    handler = FeatureHandler(
        load_specs(settings.models_dir),
        OnlineStore(redis, settings.online_ttl_s),
        Bus(broker, SERVICE, topics.events_dlq),
        topics,
    )

    @batch_subscriber(
        broker, settings, topics.events_validated, group_id=settings.group_id, consumes=Observation
    )
    async def on_events_validated(message: KafkaMessage) -> None:
        await run_batch(SERVICE, topics.events_validated, message, handler.handle)

    broker.publisher(topics.features_computed, title="to_features_computed", schema=FeatureRow)
    broker.publisher(topics.events_dlq, title="to_events_dlq", schema=DeadLetter)

    async def create_topics() -> None:
        await ensure_topics(
            settings,
            [topics.events_validated, topics.features_computed, topics.events_dlq],
        )

    async def close_redis() -> None:
        await redis.aclose()

    return build_app(SERVICE, broker, Readiness(), on_startup=[create_topics], on_shutdown=[close_redis])


def main() -> None:
    run_service(FeatureSettings, create_app)


if __name__ == "__main__":
    main()
