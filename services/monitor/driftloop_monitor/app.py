"""Wiring of the monitor: requests + results + feedback → join → quality, drift, `events.raw`
(labelled rows for training), `monitor.drift` and `training.requests`."""

from __future__ import annotations

from faststream.asgi import AsgiFastStream
from faststream.kafka.annotations import KafkaMessage

from driftloop.connections import redis_client
from driftloop.contracts import (
    DriftDetected,
    Feedback,
    Observation,
    PredictionRequest,
    PredictionResult,
    TrainModel,
)
from driftloop.kafka import Bus, batch_subscriber, ensure_topics, make_broker, run_batch
from driftloop.lifecycle import follow_models
from driftloop.runtime import Readiness, build_app, run_service
from driftloop.spec import load_specs
from driftloop_monitor.adapters import JoinStore
from driftloop_monitor.handlers import SERVICE, Monitor
from driftloop_monitor.settings import MonitorSettings


def create_app(settings: MonitorSettings) -> AsgiFastStream:
    broker = make_broker(settings, SERVICE)
    topics = settings.topics
    redis = redis_client(settings)
    monitor = Monitor(
        load_specs(settings.models_dir),
        JoinStore(redis, settings.join_ttl_s, settings.orphan_grace_s),
        Bus(broker, SERVICE, topics.events_dlq),
        topics,
        settings.quality_window,
    )
    follower = follow_models(broker, settings, monitor.on_lifecycle, list(monitor.specs))
    traffic = (topics.predictions_requests, topics.predictions_results, topics.predictions_feedback)

    @batch_subscriber(
        broker,
        settings,
        *traffic,
        group_id=settings.group_id,
        consumes=(PredictionRequest, PredictionResult, Feedback),
    )
    async def on_prediction_traffic(message: KafkaMessage) -> None:
        await run_batch(SERVICE, "predictions", message, monitor.handle)

    broker.publisher(topics.events_raw, title="to_events_raw", schema=Observation)
    broker.publisher(topics.monitor_drift, title="to_monitor_drift", schema=DriftDetected)
    broker.publisher(topics.training_requests, title="to_training_requests", schema=TrainModel)

    async def start() -> None:
        await ensure_topics(
            settings,
            [
                *traffic,
                topics.events_raw,
                topics.monitor_drift,
                topics.training_requests,
                topics.models_lifecycle,
                topics.models_commands,
                topics.events_dlq,
            ],
        )
        await follower.start()

    async def stop() -> None:
        await follower.stop()
        await redis.aclose()

    documented = [follower.describe()]  # consumed outside FastStream
    return build_app(
        SERVICE, broker, Readiness(), on_startup=[start], on_shutdown=[stop], documented=documented
    )


def main() -> None:
    run_service(MonitorSettings, create_app)


if __name__ == "__main__":
    main()
