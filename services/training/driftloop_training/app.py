"""Wiring of the training service: `features.computed` → training store; `training.requests` →
train → `models.trained`; follows `models.lifecycle` to know each champion."""

from __future__ import annotations

from faststream.asgi import AsgiFastStream
from faststream.kafka.annotations import KafkaMessage

from driftloop.artifacts import ArtifactStore
from driftloop.contracts import DeadLetter, FeatureRow, ModelTrained, TrainModel
from driftloop.kafka import Bus, batch_subscriber, ensure_topics, make_broker, run_batch
from driftloop.lifecycle import follow_models
from driftloop.runtime import Readiness, build_app, run_service
from driftloop.spec import load_specs
from driftloop.store import RowStore
from driftloop_training.adapters import DatasetCatalog
from driftloop_training.handlers import SERVICE, Trainer
from driftloop_training.settings import TrainingSettings


def create_app(settings: TrainingSettings) -> AsgiFastStream:
    broker = make_broker(settings, SERVICE)
    topics = settings.topics
    store = RowStore(settings.training_dir)
    trainer = Trainer(
        load_specs(settings.models_dir),
        store,
        ArtifactStore(settings.artifacts_dir),
        DatasetCatalog(settings.training_dir / "datasets"),
        Bus(broker, SERVICE, topics.events_dlq),
        topics,
        settings.threads,
    )
    follower = follow_models(broker, settings, trainer.on_lifecycle, list(trainer.specs))

    @batch_subscriber(
        broker,
        settings,
        topics.features_computed,
        group_id=settings.store_group_id,
        consumes=FeatureRow,
    )
    async def on_features_computed(message: KafkaMessage) -> None:
        await run_batch(SERVICE, topics.features_computed, message, trainer.store_rows)

    @batch_subscriber(
        broker, settings, topics.training_requests, group_id=settings.group_id, consumes=TrainModel
    )
    async def on_train_model(message: KafkaMessage) -> None:
        await run_batch(SERVICE, topics.training_requests, message, trainer.handle_commands)

    broker.publisher(topics.models_trained, title="to_models_trained", schema=ModelTrained)
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

    async def stop() -> None:
        await follower.stop()
        store.close()

    documented = [follower.describe()]  # consumed outside FastStream
    return build_app(
        SERVICE, broker, Readiness(), on_startup=[start], on_shutdown=[stop], documented=documented
    )


def main() -> None:
    run_service(TrainingSettings, create_app)


if __name__ == "__main__":
    main()
