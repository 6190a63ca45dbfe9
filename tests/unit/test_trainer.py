"""The trainer's command handling without a broker: coalescing, cooldown, windows, the search."""

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from aiokafka import ConsumerRecord

from driftloop.artifacts import ArtifactStore
from driftloop.contracts import FeatureRow, ModelPromoted, ModelTrained, ModelTrainingFailed, TrainModel
from driftloop.features import FeatureSet, check_features
from driftloop.fitting import fit
from driftloop.kafka import encode
from driftloop.settings import Topics
from driftloop.spec import ModelSpec
from driftloop.store import RowStore
from driftloop_training.adapters import DatasetCatalog
from driftloop_training.handlers import Trainer
from tests.helpers import sea_rows
from tests.oracles import matrix, named

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _record(topic, message) -> ConsumerRecord:
    return ConsumerRecord(topic, 0, 0, 0, 0, None, encode(message), None, 0, 0, [])


def _sent(handled, topic: str, kind) -> list:
    """The contracts of one topic among a handler's outputs."""
    return [kind.model_validate_json(o.value) for o in handled.outputs if o.topic == topic]


def _trainer(tmp_path, spec):
    told: list = []

    async def notify(event):
        told.append(event)

    store = RowStore(tmp_path / "store")
    trainer = Trainer({spec.name: spec}, store, ArtifactStore.at("memory://"),
                      DatasetCatalog(tmp_path / "datasets"), Topics(), notify=notify)  # fmt: skip
    feature_set = FeatureSet(spec)
    rows = [
        FeatureRow(event_id=f"e{i}", model=spec.name, event_time=T0 + timedelta(minutes=i),
                   features=named(feature_set, check_features(spec, x)), label=y)
        for i, (x, y) in enumerate(sea_rows(1200))
    ]  # fmt: skip
    store.append(
        spec.name, [(r.event_id, r.event_time, orjson.dumps(r.model_dump(mode="json"))) for r in rows]
    )
    return trainer, told


async def test_commands_for_one_model_in_a_batch_coalesce_and_windows_apply(tmp_path, sea_spec):
    trainer, _ = _trainer(tmp_path, sea_spec)
    commands = [
        TrainModel(command_id="a", model="sea", last_n=900),
        TrainModel(
            command_id="b", model="sea", since=T0 + timedelta(minutes=100), until=T0 + timedelta(minutes=1000)
        ),
    ]
    handled = await trainer.handle_commands([_record("training.requests", c) for c in commands])
    (trained,) = _sent(handled, Topics().models_trained, ModelTrained)
    assert trained.command_id == "b"
    (coalesced,) = _sent(handled, Topics().models_lifecycle, ModelTrainingFailed)  # "a" hears of it
    assert (coalesced.command_id, coalesced.outcome) == ("a", "coalesced")
    assert trained.dataset.rows == 900
    assert trained.dataset.first_event_time == T0 + timedelta(minutes=100)
    assert trained.dataset.last_event_time == T0 + timedelta(minutes=999)


async def test_automatic_retrains_are_not_spaced_by_the_wall_clock(tmp_path, sea_spec):
    # the policy spaces them, in labelled rows: two in a row are both trained
    trainer, _ = _trainer(tmp_path, sea_spec)
    assert (await trainer.run(TrainModel(command_id="d1", model="sea", reason="drift"))).outcome == "trained"
    assert (await trainer.run(TrainModel(command_id="d2", model="sea", reason="drift"))).outcome == "trained"


async def test_a_command_handled_again_before_its_commit_is_not_trained_again(tmp_path, sea_spec):
    # a retried batch (its send failed), or the command sent again after its batch committed: it is
    # not trained twice; its candidate is sent again (the registry gives a run id one version)
    trainer, _ = _trainer(tmp_path, sea_spec)
    batch = [_record("training.requests", TrainModel(command_id="d1", model="sea", reason="drift"))]
    first = await trainer.handle_commands(batch)
    again = await trainer.handle_commands(batch)
    (trained,) = _sent(first, Topics().models_trained, ModelTrained)
    assert _sent(again, Topics().models_trained, ModelTrained) == [trained]
    assert again.committed is not None
    again.committed()  # the batch is committed: a later copy of the command is a new one
    later = await trainer.handle_commands(batch)
    assert _sent(later, Topics().models_trained, ModelTrained) == [trained]


async def test_a_window_too_small_is_refused_after_the_bounded_wait(tmp_path, sea_spec):
    spec = sea_spec.model_copy(
        update={"training": sea_spec.training.model_copy(update={"wait_for_rows_s": 0.3})}
    )
    trainer, told = _trainer(tmp_path, spec)
    command = TrainModel(command_id="x", model="sea", since=T0 + timedelta(days=30))
    handled = await trainer.handle_commands([_record("training.requests", command)])
    assert _sent(handled, Topics().models_trained, ModelTrained) == []
    (failed,) = _sent(handled, Topics().models_lifecycle, ModelTrainingFailed)
    assert (failed.outcome, failed.command_id, failed.reason) == (
        "insufficient_data",
        "x",
        "insufficient_data: 0 rows, 500 needed",
    )
    # while it waited, it said so
    assert [(e.event, e.rows, e.rows_needed) for e in told] == [("ModelTrainingDeferred", 0, 500)]


def test_a_spec_search_picks_parameters_on_time_ordered_folds(sea_spec):
    spec = ModelSpec.model_validate({
        **sea_spec.model_dump(),
        "algorithm": {"name": "random_forest", "params": {"n_estimators": 10},
                      "search": {"param_distributions": {"max_depth": [2, 4, 8]}, "n_candidates": 3}},
    })  # fmt: skip
    feature_set = FeatureSet(spec)
    rows = sea_rows(600)
    X = matrix(feature_set, [check_features(spec, x) for x, _ in rows])
    estimator, chosen = fit(spec, X, [y for _, y in rows])
    assert chosen["search.best.max_depth"] in {2, 4, 8}
    assert estimator.max_depth == chosen["search.best.max_depth"]
    assert 0.5 < chosen["search.best_score"] <= 1.0


async def test_a_command_its_training_fails_on_is_reported_not_trained_again(tmp_path, sea_spec, monkeypatch):
    # a bug on one command's data (not a TrainingFailed): reported as failed, and a retry of its
    # batch before the commit does not train again
    trainer, _ = _trainer(tmp_path, sea_spec)
    calls = []

    async def broken(spec, command, version):
        calls.append(command.command_id)
        raise KeyError("a field the rows did not have")

    monkeypatch.setattr(trainer, "_train", broken)
    batch = [_record("training.requests", TrainModel(command_id="m1", model="sea"))]
    first = await trainer.handle_commands(batch)
    again = await trainer.handle_commands(batch)
    (failed,) = _sent(first, Topics().models_lifecycle, ModelTrainingFailed)
    assert failed.outcome == "failed" and "KeyError" in failed.reason
    (repeated,) = _sent(again, Topics().models_lifecycle, ModelTrainingFailed)
    assert (repeated.command_id, repeated.outcome, repeated.reason) == ("m1", "failed", failed.reason)
    assert calls == ["m1"]


async def test_a_trained_version_carries_its_calibration_and_what_it_relies_on(tmp_path, sea_spec):
    """SEA's label is a threshold on x0 + x1; x2 is noise: shuffling x2 costs (next to) nothing."""
    trainer, _ = _trainer(tmp_path, sea_spec)
    handled = await trainer.handle_commands(
        [_record("training.requests", TrainModel(command_id="c", model="sea"))]
    )
    (trained,) = _sent(handled, Topics().models_trained, ModelTrained)
    importance = trained.importance
    assert set(importance) == {"x0", "x1", "x2"}
    assert min(importance["x0"], importance["x1"]) > 0.1 > abs(importance["x2"])
    calibration = trained.calibration
    assert calibration is not None and calibration.rows == trained.dataset.holdout_rows
    assert (
        list(calibration.accuracy) == sorted(calibration.accuracy)
        and len(calibration.edges) == len(calibration.accuracy) - 1
    )
    assert calibration.overall == pytest.approx(trained.candidate_metrics["accuracy"], abs=1e-9)
    assert trained.durations_s["explain"] >= 0


async def test_a_trained_version_carries_its_dataset_profile_and_its_shift_from_the_champions_data(
    tmp_path, sea_spec
):
    trainer, _ = _trainer(tmp_path, sea_spec)
    first = await trainer.handle_commands(
        [_record("training.requests", TrainModel(command_id="a", model="sea"))]
    )
    (trained,) = _sent(first, Topics().models_trained, ModelTrained)
    profile = trained.profile
    assert profile is not None and profile.rows == trained.dataset.rows and profile.compared_with is None
    assert sum(profile.labels.values()) == profile.rows and set(profile.labels) <= {"0", "1"}
    assert [f.name for f in profile.features] == ["x0", "x1", "x2"]
    for feature in profile.features:
        assert feature.kind == "numeric" and sum(feature.counts) == profile.rows
        assert len(feature.edges) == len(feature.counts) + 1 and feature.edges[0] == feature.min
        assert 0 <= feature.min <= feature.mean <= feature.max <= 10  # SEA's inputs
        assert feature.shift is None and feature.out_of_range is None  # no champion yet
    # once it is the champion, the next dataset (the same rows) is measured against its data
    promoted = ModelPromoted(
        model="sea", version=1, reason="test", artifact=trained.artifact, classes=trained.classes,
        feature_names=trained.feature_names, reference_stats=trained.reference_stats,
    )  # fmt: skip
    await trainer.on_lifecycle(promoted)
    again = await trainer.handle_commands(
        [_record("training.requests", TrainModel(command_id="b", model="sea"))]
    )
    (retrained,) = _sent(again, Topics().models_trained, ModelTrained)
    assert retrained.profile is not None and retrained.profile.compared_with == 1
    for feature in retrained.profile.features:  # the same rows as the champion's (its holdout too)
        assert feature.shift is not None and feature.shift < 0.05
        assert feature.out_of_range is not None and feature.out_of_range <= 0.25 * retrained.profile.rows
    assert retrained.durations_s["profile"] >= 0
