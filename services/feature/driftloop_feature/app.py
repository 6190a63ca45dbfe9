"""Wiring of the feature service: `events.validated` → `features.computed` + Redis online store."""

from __future__ import annotations

from driftloop.connections import redis_client
from driftloop.contracts import FeatureRow, Observation
from driftloop.online import RedisOnlineStore
from driftloop.runtime import ServiceApp, build_app, follow_specs, service_main
from driftloop.service import Service, consumes
from driftloop_feature.handlers import SERVICE, FeatureHandler
from driftloop_feature.histories import HistoryCache
from driftloop_feature.settings import FeatureSettings


def create_app(settings: FeatureSettings) -> ServiceApp:
    specs, topics = follow_specs(SERVICE, settings), settings.topics
    redis = redis_client(settings)
    handler = FeatureHandler(
        specs.book,
        RedisOnlineStore(redis, settings.online_ttl_s),
        topics,
        HistoryCache(settings.history_cache_entities, settings.online_ttl_s),
    )
    service = Service(
        SERVICE,
        settings,
        [consumes(handler, {topics.events_validated: Observation}, settings.group_id)],
        produces={topics.features_computed: FeatureRow},
        specs=specs,
    )
    return build_app(service, on_shutdown=[redis.aclose])


main = service_main(FeatureSettings, create_app)  # the `driftloop-feature` command


if __name__ == "__main__":
    main()
