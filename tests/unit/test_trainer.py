"""The trainer's command handling without a broker: coalescing, cooldown, windows, the search."""

from datetime import UTC, datetime, timedelta

import orjson
from aiokafka import ConsumerRecord

from driftloop.artifacts import ArtifactStore
from driftloop.contracts import FeatureRow, ModelTrained, TrainModel
from driftloop.features import FeatureSet, check_features
from driftloop.kafka import encode
from driftloop.settings import Topics
from driftloop.spec import ModelSpec
from driftloop.store import RowStore
from driftloop_training.adapters import DatasetCatalog
from driftloop_training.domain import fit
from driftloop_training.handlers import Trainer
from tests.helpers import sea_rows

T0 = datetime(2026, 11, 1, tzinfo=UTC)


class RecordingBus:
    """The publishing port, recording instead of publishing."""

    def __init__(self):
        self.sent: dict[str, list] = {}

    async def publish(self, topic, messages):
        self.sent.setdefault(topic, []).extend(messages)

    async def dead_letters(self, letters):
        self.sent.setdefault("dlq", []).extend(letters)


def _record(topic, message) -> ConsumerRecord:
    return ConsumerRecord(topic, 0, 0, 0, 0, None, encode(message), None, 0, 0, [])


def _trainer(tmp_path, spec):
    bus = RecordingBus()
    store = RowStore(tmp_path / "store")
    trainer = Trainer({spec.name: spec}, store, ArtifactStore(tmp_path / "artifacts"),
                      DatasetCatalog(tmp_path / "datasets"), bus, Topics())  # fmt: skip
    feature_set = FeatureSet(spec)
    rows = [
        FeatureRow(event_id=f"e{i}", model=spec.name, event_time=T0 + timedelta(minutes=i),
                   features=feature_set.named(check_features(spec, x)), label=y)
        for i, (x, y) in enumerate(sea_rows(1200))
    ]  # fmt: skip
    store.append(
        spec.name, [(r.event_id, r.event_time, orjson.dumps(r.model_dump(mode="json"))) for r in rows]
    )
    return trainer, bus


async def test_commands_for_one_model_in_a_batch_coalesce_and_windows_apply(tmp_path, sea_spec):
    trainer, bus = _trainer(tmp_path, sea_spec)
    commands = [
        TrainModel(command_id="a", model="sea", last_n=900),
        TrainModel(
            command_id="b", model="sea", since=T0 + timedelta(minutes=100), until=T0 + timedelta(minutes=1000)
        ),
    ]
    await trainer.handle_commands([_record("training.requests", c) for c in commands])
    (trained,) = bus.sent[Topics().models_trained]
    assert isinstance(trained, ModelTrained) and trained.command_id == "b"
    assert trained.dataset.rows == 900
    assert trained.dataset.first_event_time == T0 + timedelta(minutes=100)
    assert trained.dataset.last_event_time == T0 + timedelta(minutes=999)


async def test_automatic_retrains_respect_the_cooldown_but_people_do_not(tmp_path, sea_spec):
    trainer, _ = _trainer(tmp_path, sea_spec)
    assert await trainer.run(TrainModel(command_id="d1", model="sea", reason="drift")) is not None
    assert await trainer.run(TrainModel(command_id="d2", model="sea", reason="drift")) is None
    assert await trainer.run(TrainModel(command_id="m1", model="sea", reason="manual")) is not None


async def test_a_window_too_small_is_refused_after_the_bounded_wait(tmp_path, sea_spec):
    spec = sea_spec.model_copy(
        update={"training": sea_spec.training.model_copy(update={"wait_for_rows_s": 0.3})}
    )
    trainer, bus = _trainer(tmp_path, spec)
    command = TrainModel(command_id="x", model="sea", since=T0 + timedelta(days=30))
    assert await trainer.run(command) is None
    assert Topics().models_trained not in bus.sent


def test_a_spec_search_picks_parameters_on_time_ordered_folds(sea_spec):
    spec = ModelSpec.model_validate({
        **sea_spec.model_dump(),
        "algorithm": {"name": "random_forest", "params": {"n_estimators": 10},
                      "search": {"param_distributions": {"max_depth": [2, 4, 8]}, "n_candidates": 3}},
    })  # fmt: skip
    feature_set = FeatureSet(spec)
    rows = sea_rows(600)
    X = feature_set.matrix(check_features(spec, x) for x, _ in rows)
    estimator, chosen = fit(spec, X, [y for _, y in rows])
    assert chosen["search.best.max_depth"] in {2, 4, 8}
    assert estimator.max_depth == chosen["search.best.max_depth"]
    assert 0.5 < chosen["search.best_score"] <= 1.0
