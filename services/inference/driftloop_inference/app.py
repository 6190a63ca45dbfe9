"""Wiring of inference: `predictions.requests` → champion (ONNX) → `predictions.results`; follows
`models.lifecycle` and swaps models between batches. The request topic is consumed by the hot-path
loop (`driftloop.fastpath`, aiokafka batches; payload `PredictionRequest`), not by FastStream."""

from __future__ import annotations

import asyncio
import logging

from faststream.asgi import AsgiFastStream

from driftloop.artifacts import ArtifactStore
from driftloop.connections import redis_client
from driftloop.contracts import DeadLetter, ModelServingFailed, PredictionRequest, PredictionResult
from driftloop.fastpath import FastPath, Output
from driftloop.kafka import encode, ensure_topics, make_broker
from driftloop.lifecycle import follow_models
from driftloop.online import RedisOnlineStore
from driftloop.runtime import Readiness, build_app, model_specs, run_service
from driftloop.tracing import Tracing
from driftloop_inference.adapters import ModelHolder
from driftloop_inference.handlers import SERVICE, InferenceHandler
from driftloop_inference.settings import InferenceSettings

log = logging.getLogger(__name__)


def create_app(settings: InferenceSettings) -> AsgiFastStream:
    broker = make_broker(settings, SERVICE)
    topics = settings.topics
    catalog = model_specs(SERVICE, settings)
    specs = catalog.specs
    redis = redis_client(settings)
    holder = ModelHolder(specs, ArtifactStore(settings.artifacts_dir))
    tasks: list[asyncio.Task[None]] = []
    tracing = Tracing.configure(settings.tracing, SERVICE)
    handler = InferenceHandler(specs, holder, RedisOnlineStore(redis), topics, tracing, settings.group_id)
    follower = follow_models(broker, settings, holder.on_lifecycle, list(specs))
    hot_path = FastPath(settings, SERVICE, topics.predictions_requests, settings.group_id)
    readiness = Readiness(
        lambda: {"serving": {m: s.version for m, s in holder.lineup.champions.items()}},
        [hot_path],
        specs=catalog,
    )

    broker.publisher(topics.predictions_results, title="to_predictions_results", schema=PredictionResult)
    broker.publisher(topics.predictions_shadow, title="to_predictions_shadow", schema=PredictionResult)
    broker.publisher(topics.events_dlq, title="to_events_dlq", schema=DeadLetter)
    broker.publisher(topics.models_lifecycle, title="to_models_lifecycle", schema=ModelServingFailed)

    async def start() -> None:
        await ensure_topics(
            settings,
            [
                topics.predictions_requests,
                topics.predictions_results,
                topics.predictions_shadow,
                topics.models_lifecycle,
                topics.models_commands,
                topics.events_dlq,
            ],
        )
        await follower.start()  # champions are loaded before the first request is consumed
        await hot_path.start(handler.handle)
        tasks.append(asyncio.create_task(report_refusals()))

    async def report_refusals() -> None:
        """Artifacts the holder refused, as `ModelServingFailed` on the lifecycle topic."""
        while True:
            if holder.refused:
                events = list(holder.refused)
                outputs = [Output(topics.models_lifecycle, None, encode(e)) for e in events]
                try:
                    await hot_path.sender.send(outputs)
                    del holder.refused[: len(events)]
                except Exception:
                    log.warning("could not report refused artifacts yet", exc_info=True)
            await asyncio.sleep(1.0)

    async def stop() -> None:
        for task in tasks:
            task.cancel()
        await hot_path.stop()
        await follower.stop()
        await redis.aclose()
        if tracing is not None:
            tracing.shutdown()

    documented = [*hot_path.describe(PredictionRequest), follower.describe()]  # consumed outside FastStream
    return build_app(
        SERVICE, broker, readiness, on_startup=[start], on_shutdown=[stop], documented=documented
    )


def main() -> None:
    run_service(InferenceSettings, create_app)


if __name__ == "__main__":
    main()
