"""Wiring of inference: `predictions.requests` → champion (ONNX) → `predictions.results`, and the
Open Inference Protocol (v2) over HTTP under `/v2`; follows `models.lifecycle` and swaps models
between batches."""

from __future__ import annotations

import asyncio
import logging

from driftloop.artifacts import ArtifactStore
from driftloop.connections import object_store, redis_client
from driftloop.contracts import ModelServingFailed, PredictionRequest, PredictionResult
from driftloop.fastpath import Output
from driftloop.kafka import encode
from driftloop.lifecycle import follow_models
from driftloop.online import RedisOnlineStore
from driftloop.runtime import ServiceApp, build_app, follow_specs, service_main
from driftloop.service import Consumes, Service
from driftloop.tracing import Tracing
from driftloop_inference.adapters import ModelHolder
from driftloop_inference.handlers import SERVICE, InferenceHandler
from driftloop_inference.http import V2Api
from driftloop_inference.settings import InferenceSettings

log = logging.getLogger(__name__)


def create_app(settings: InferenceSettings) -> ServiceApp:
    topics = settings.topics
    specs = follow_specs(SERVICE, settings)
    redis = redis_client(settings)
    holder = ModelHolder(
        specs.book, ArtifactStore(object_store(settings), settings.data_dir / "artifact-cache")
    )
    tracing = Tracing.configure(settings.tracing, SERVICE)
    handler = InferenceHandler(
        specs.book, holder, RedisOnlineStore(redis), topics, tracing, settings.group_id
    )
    service = Service(
        SERVICE,
        settings,
        [Consumes({topics.predictions_requests: PredictionRequest}, settings.group_id, handler.handle)],
        produces={
            topics.predictions_results: PredictionResult,
            topics.predictions_shadow: PredictionResult,
            topics.models_lifecycle: ModelServingFailed,
        },
        follower=follow_models(settings, holder.on_lifecycle, specs.book),  # champions load first
        specs=specs,
    )

    async def report_refusals() -> None:
        """Artifacts the holder refused, as `ModelServingFailed` on the lifecycle topic."""
        while True:
            if holder.refused:
                events = list(holder.refused)
                try:
                    await service.send([Output(topics.models_lifecycle, None, encode(e)) for e in events])
                    del holder.refused[: len(events)]
                except Exception:
                    log.warning("could not report refused artifacts yet", exc_info=True)
            await asyncio.sleep(1.0)

    api = V2Api(settings, specs.book, holder, handler.answer, lambda: app.readiness.report()[0])

    async def log_http() -> None:
        """Log HTTP predictions; at shutdown, the batching window's runs first, then the last send."""
        await api.log.run(before_last=api.coalescer.drain)

    async def close() -> None:
        await redis.aclose()
        if tracing is not None:
            tracing.shutdown()

    app = build_app(
        service,
        facts=lambda: {"serving": {m: s.version for m, s in holder.lineup.champions.items()}},
        background=[report_refusals, log_http],
        on_shutdown=[close],
        mounts=[("/v2", api)],
    )
    return app


main = service_main(InferenceSettings, create_app)  # the `driftloop-inference` command


if __name__ == "__main__":
    main()
