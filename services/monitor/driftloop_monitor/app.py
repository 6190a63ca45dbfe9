"""Wiring of the monitor: requests + results + feedback → join → quality, drift, `events.raw`
(labelled rows for training), `monitor.drift` and `training.requests`."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from faststream.asgi import AsgiFastStream

from driftloop.connections import redis_client
from driftloop.contracts import (
    DriftDetected,
    Feedback,
    Observation,
    PredictionRequest,
    PredictionResult,
    TrainModel,
)
from driftloop.fastpath import FastPath
from driftloop.kafka import ensure_topics, make_broker
from driftloop.lifecycle import follow_models
from driftloop.runtime import Readiness, build_app, model_specs, run_service
from driftloop_monitor.adapters import JoinStore
from driftloop_monitor.handlers import SERVICE, Monitor
from driftloop_monitor.settings import MonitorSettings

log = logging.getLogger(__name__)


def create_app(settings: MonitorSettings) -> AsgiFastStream:
    broker = make_broker(settings, SERVICE)
    topics = settings.topics
    catalog = model_specs(SERVICE, settings, build=frozenset({"detectors"}))  # builds them
    redis = redis_client(settings)
    monitor = Monitor(
        catalog.specs,
        JoinStore(redis, settings.join_ttl_s, settings.orphan_grace_s),
        topics,
        settings.quality_window,
    )
    follower = follow_models(broker, settings, monitor.on_lifecycle, list(monitor.specs))
    traffic = (topics.predictions_requests, topics.predictions_results, topics.predictions_feedback)
    stream = FastPath(settings, SERVICE, traffic, settings.group_id, name="predictions", background=True)
    tasks: list[asyncio.Task[None]] = []

    broker.publisher(topics.events_raw, title="to_events_raw", schema=Observation)
    broker.publisher(topics.monitor_drift, title="to_monitor_drift", schema=DriftDetected)
    broker.publisher(topics.training_requests, title="to_training_requests", schema=TrainModel)

    async def sweep() -> None:
        """Requests and labels past their window are counted whether or not traffic flows."""
        while True:
            await asyncio.sleep(settings.sweep_every_s)
            try:
                await monitor.sweep()
            except Exception:
                log.warning("sweeping the label windows failed; next time", exc_info=True)

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
        await stream.start(monitor.handle)
        tasks.append(asyncio.create_task(sweep()))

    async def stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await stream.stop()
        await follower.stop()
        await redis.aclose()

    payloads = dict(zip(traffic, (PredictionRequest, PredictionResult, Feedback), strict=True))
    documented = [*stream.describe(payloads), follower.describe()]  # consumed outside FastStream
    return build_app(
        SERVICE,
        broker,
        Readiness(consumers=[stream], specs=catalog),
        on_startup=[start],
        on_shutdown=[stop],
        documented=documented,
    )


def main() -> None:
    run_service(MonitorSettings, create_app)


if __name__ == "__main__":
    main()
