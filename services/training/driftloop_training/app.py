"""Wiring of the training service: `features.computed` → training store; `training.requests` →
train → `models.trained`; follows `models.lifecycle` to know each champion."""

from __future__ import annotations

from faststream.asgi import AsgiFastStream

from driftloop.artifacts import ArtifactStore
from driftloop.contracts import (
    DeadLetter,
    FeatureRow,
    LifecycleEvent,
    ModelTrained,
    ModelTrainingFailed,
    TrainModel,
)
from driftloop.fastpath import FastPath, Output
from driftloop.kafka import encode, ensure_topics, make_broker
from driftloop.lifecycle import follow_models
from driftloop.runtime import Readiness, build_app, model_specs, run_service
from driftloop.store import RowStore
from driftloop_training.adapters import DatasetCatalog
from driftloop_training.handlers import SERVICE, Trainer
from driftloop_training.settings import TrainingSettings


def create_app(settings: TrainingSettings) -> AsgiFastStream:
    broker = make_broker(settings, SERVICE)
    topics = settings.topics
    catalog = model_specs(SERVICE, settings, build=frozenset({"estimators"}))  # builds them
    store = RowStore(
        settings.training_dir,
        partition_days=settings.store_partition_days,
        min_free_bytes=settings.store_min_free_mb * 2**20,
    )
    trainer = Trainer(
        catalog.specs,
        store,
        ArtifactStore(settings.artifacts_dir),
        DatasetCatalog(settings.training_dir / "datasets"),
        topics,
        settings.threads,
        notify=lambda event: tell(event),
    )
    follower = follow_models(broker, settings, trainer.on_lifecycle, list(trainer.specs))
    on_features_computed = FastPath(
        settings, SERVICE, topics.features_computed, settings.store_group_id, background=True
    )
    # a training run takes as long as it takes: this loop is stalled only while it fails
    on_train_model = FastPath(
        settings, SERVICE, topics.training_requests, settings.group_id, pipelined=False, may_block=True
    )

    async def tell(event: LifecycleEvent) -> None:
        await on_train_model.sender.send([Output(topics.models_lifecycle, None, encode(event))])

    broker.publisher(topics.models_trained, title="to_models_trained", schema=ModelTrained)
    broker.publisher(topics.models_lifecycle, title="to_models_lifecycle", schema=ModelTrainingFailed)
    broker.publisher(topics.events_dlq, title="to_events_dlq", schema=DeadLetter)

    async def start() -> None:
        await ensure_topics(
            settings,
            [
                topics.features_computed,
                topics.training_requests,
                topics.models_trained,
                topics.models_lifecycle,
                topics.models_commands,
                topics.events_dlq,
            ],
        )
        await follower.start()
        await on_features_computed.start(trainer.store_rows)
        await on_train_model.start(trainer.handle_commands)

    async def stop() -> None:
        await on_train_model.stop()
        await on_features_computed.stop()
        await follower.stop()
        store.close()

    documented = [  # consumed outside FastStream
        *on_features_computed.describe(FeatureRow),
        *on_train_model.describe(TrainModel),
        follower.describe(),
    ]
    readiness = Readiness(consumers=[on_features_computed, on_train_model], specs=catalog)
    return build_app(
        SERVICE, broker, readiness, on_startup=[start], on_shutdown=[stop], documented=documented
    )


def main() -> None:
    run_service(TrainingSettings, create_app)


if __name__ == "__main__":
    main()
