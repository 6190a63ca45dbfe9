"""Wiring of the monitor: requests + results + feedback → join → quality, drift, `events.raw`
(labelled rows for training), `monitor.drift` and `training.requests`."""

from __future__ import annotations

import asyncio
import logging

from driftloop.connections import redis_client
from driftloop.contracts import (
    DriftDetected,
    Feedback,
    Observation,
    PredictionRequest,
    PredictionResult,
    TrainModel,
)
from driftloop.lifecycle import follow_models
from driftloop.runtime import ServiceApp, build_app, follow_specs, service_main
from driftloop.service import Service, consumes
from driftloop_monitor.adapters import JoinStore
from driftloop_monitor.handlers import SERVICE, Monitor
from driftloop_monitor.settings import MonitorSettings

log = logging.getLogger(__name__)


def create_app(settings: MonitorSettings) -> ServiceApp:
    topics = settings.topics
    specs = follow_specs(SERVICE, settings, build=frozenset({"detectors"}))  # builds them
    redis = redis_client(settings)
    monitor = Monitor(
        specs.book,
        JoinStore(redis, settings.join_ttl_s, settings.orphan_grace_s),
        topics,
        settings.quality_window,
    )
    traffic = {
        topics.predictions_requests: PredictionRequest,
        topics.predictions_results: PredictionResult,
        topics.predictions_feedback: Feedback,
    }
    service = Service(
        SERVICE,
        settings,
        [consumes(monitor, traffic, settings.group_id, hot=False, name="predictions")],
        produces={
            topics.events_raw: Observation,
            topics.monitor_drift: DriftDetected,
            topics.training_requests: TrainModel,
        },
        follower=follow_models(settings, monitor.on_lifecycle, specs.book),
        specs=specs,
    )

    async def sweep() -> None:
        """Requests and labels past their window are counted whether or not traffic flows."""
        while True:
            await asyncio.sleep(settings.sweep_every_s)
            try:
                await monitor.sweep()
            except Exception:
                log.warning("sweeping the label windows failed; next time", exc_info=True)

    return build_app(service, background=[sweep], on_shutdown=[redis.aclose])


main = service_main(MonitorSettings, create_app)  # the `driftloop-monitor` command


if __name__ == "__main__":
    main()
