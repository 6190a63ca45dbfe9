"""Wiring of the training service: `features.computed` → training store; `training.requests` →
train → `models.trained`; follows `models.lifecycle` to know each champion."""

from __future__ import annotations

from driftloop.artifacts import ArtifactStore
from driftloop.connections import object_store
from driftloop.contracts import (
    FeatureRow,
    LifecycleEvent,
    ModelTrained,
    ModelTrainingDeferred,
    ModelTrainingFailed,
    TrainModel,
)
from driftloop.fastpath import Output
from driftloop.kafka import encode
from driftloop.lifecycle import follow_models
from driftloop.runtime import ServiceApp, build_app, follow_specs, service_main
from driftloop.service import Consumes, Service
from driftloop.store import RowStore
from driftloop_training.adapters import DatasetCatalog
from driftloop_training.handlers import SERVICE, Trainer
from driftloop_training.settings import TrainingSettings


def create_app(settings: TrainingSettings) -> ServiceApp:
    topics = settings.topics
    specs = follow_specs(SERVICE, settings, build=frozenset({"estimators"}))  # builds them
    store = RowStore(
        settings.training_dir,
        partition_days=settings.store_partition_days,
        min_free_bytes=settings.store_min_free_mb * 2**20,
    )
    trainer = Trainer(
        specs.book,
        store,
        ArtifactStore(object_store(settings), settings.data_dir / "artifact-cache"),
        DatasetCatalog(settings.training_dir / "datasets"),
        topics,
        settings.threads,
        notify=lambda event: tell(event),
    )
    service = Service(
        SERVICE,
        settings,
        [
            Consumes(
                {topics.features_computed: FeatureRow},
                settings.store_group_id,
                trainer.store_rows,
                hot=False,
            ),
            # a training run takes as long as it takes: this loop is stalled only while it fails
            Consumes(
                {topics.training_requests: TrainModel},
                settings.group_id,
                trainer.handle_commands,
                pipelined=False,
                may_block=True,
            ),
        ],
        produces={
            topics.models_trained: ModelTrained,
            topics.models_lifecycle: ModelTrainingFailed | ModelTrainingDeferred,
        },
        follower=follow_models(settings, trainer.on_lifecycle, specs.book),
        specs=specs,
    )

    async def tell(event: LifecycleEvent) -> None:
        await service.send([Output(topics.models_lifecycle, None, encode(event))])

    return build_app(service, on_shutdown=[store.close])


main = service_main(TrainingSettings, create_app)  # the `driftloop-training` command


if __name__ == "__main__":
    main()
