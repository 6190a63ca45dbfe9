"""Model governance through the real services (training, registry, inference in-process) on a real
broker and redis-server: reproducible training from a dataset version, the gate, rollback, tampered
artifacts, tags, model cards and the approval flow."""

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta
from importlib.metadata import version

from driftloop.artifacts import ArtifactStore
from driftloop.client import PredictionClient
from driftloop.contracts import (
    ApproveModel,
    FeatureRow,
    LifecycleEvent,
    ModelPromoted,
    ModelTrained,
    PromoteModel,
    RollbackModel,
    TagModel,
    TrainModel,
)
from driftloop.features import FeatureSet, check_features
from driftloop.lifecycle import LifecycleFollower
from driftloop.spec import load_spec
from driftloop_inference.app import create_app as inference_app
from driftloop_inference.settings import InferenceSettings
from driftloop_registry.app import create_app as registry_app
from driftloop_registry.settings import RegistrySettings
from driftloop_training.app import create_app as training_app
from driftloop_training.settings import TrainingSettings
from tests.conftest import ROOT, wait_for
from tests.helpers import Publisher, apply_models, collect, sea_onnx, sea_rows, served_versions
from tests.oracles import named

T0 = datetime(2026, 11, 1, tzinfo=UTC)
PROBE = [{"x0": 9.0, "x1": 9.0, "x2": 1.0}, {"x0": 1.0, "x1": 1.0, "x2": 1.0}] * 5


def _rows(spec, n, start, shuffle=False, seed=1):
    feature_set = FeatureSet(spec)
    raw = sea_rows(n, seed=seed)
    labels = [y for _, y in raw]
    if shuffle:
        random.Random(0).shuffle(labels)
    return [
        FeatureRow(event_id=f"{uuid.uuid4().hex}", model=spec.name, event_time=start + timedelta(seconds=i),
                   features=named(feature_set, check_features(spec, x)), label=label)
        for i, ((x, _), label) in enumerate(zip(raw, labels, strict=True))
    ]  # fmt: skip


class Services:
    """training + registry + inference on one broker, with a lifecycle watcher and a command bus."""

    def __init__(self, kafka_bootstrap, redis_url, topics, tmp_path, models_dir):
        common = {"kafka_bootstrap": kafka_bootstrap, "redis_url": redis_url, "topics": topics,
                  "object_store_url": str(tmp_path / "objects")}  # fmt: skip
        self.bootstrap, self.topics, self.tmp_path = kafka_bootstrap, topics, tmp_path
        self.models_dir = models_dir
        self.apps = [
            training_app(
                TrainingSettings(**common, training_dir=tmp_path / "training", data_dir=tmp_path / "t")
            ),
            registry_app(RegistrySettings(**common, data_dir=tmp_path / "registry", http_port=0)),
            inference_app(  # a group of its own: no other test's instance can hold up its join
                InferenceSettings(
                    **common, data_dir=tmp_path / "inference", group_id=f"inference-{uuid.uuid4().hex[:8]}"
                )
            ),
        ]
        self.bus = Publisher(kafka_bootstrap)
        self.events: list[LifecycleEvent] = []
        self.follower = LifecycleFollower(kafka_bootstrap, topics.models_lifecycle, self._seen)

    async def _seen(self, event):
        self.events.append(event)

    async def __aenter__(self):
        await apply_models(self.bootstrap, self.topics, self.models_dir)
        await asyncio.gather(*(app.start() for app in self.apps))
        await self.bus.start()
        await self.follower.start()
        return self

    async def __aexit__(self, *exc):
        await self.follower.stop()
        await self.bus.stop()
        for app in reversed(self.apps):
            await app.stop()

    async def send(self, topic, *messages):
        await self.bus.publish(topic, list(messages))

    async def outcome(self, predicate, what, timeout=60.0):
        await wait_for(lambda: any(predicate(e) for e in self.events), timeout, what)
        return next(e for e in self.events if predicate(e))

    async def train(self, model, **window) -> ModelTrained:
        command = TrainModel(command_id=uuid.uuid4().hex, model=model, reason="manual", **window)
        await self.send(self.topics.training_requests, command)
        trained = await collect(self.bootstrap, self.topics.models_trained, ModelTrained, 100, timeout=60,
                                until=lambda t: t.command_id == command.command_id)  # fmt: skip
        return next(t for t in trained if t.command_id == command.command_id)

    async def command(self, command):
        await self.send(self.topics.models_commands, command)
        return await self.outcome(lambda e: e.command_id == command.command_id, command.command)


async def _served_versions(client: PredictionClient, expected: int) -> set[int]:
    return await served_versions(client, "sea", PROBE, {expected})


async def test_governance_lifecycle(kafka_bootstrap, redis_url, topics, tmp_path, sea_spec):
    async with Services(kafka_bootstrap, redis_url, topics, tmp_path, ROOT / "models") as s:
        await s.send(topics.features_computed, *_rows(sea_spec, 1500, T0))
        first = await s.train("sea", min_rows=1500)
        v1 = await s.outcome(lambda e: isinstance(e, ModelPromoted) and e.version == 1, "v1 promoted")
        assert first.dataset.rows == 1500 and first.champion_metrics is None
        assert first.parity_max_abs_diff <= sea_spec.training.parity_tolerance
        assert set(first.reference_stats) == {"x0", "x1", "x2"}
        assert first.code_version.startswith(version("driftloop"))

        # the same dataset version, params and seed reproduce the same model and metrics
        again = await s.train("sea", dataset_version=first.dataset.version)
        assert again.dataset == first.dataset
        assert again.candidate_metrics == first.candidate_metrics
        assert again.artifact.sha256 == first.artifact.sha256
        # champion v1 was refitted on this holdout too: no row of it is fair to compare on
        assert again.champion_version == 1 and again.comparison is not None
        assert again.comparison.rows == 0
        await s.outcome(lambda e: isinstance(e, ModelPromoted) and e.version == 2, "v2 promoted")

        async with PredictionClient(kafka_bootstrap, topics, timeout_s=20) as client:
            assert await _served_versions(client, 2) == {2}

            # a candidate trained on shuffled labels is rejected and never served
            await s.send(topics.features_computed, *_rows(sea_spec, 1500, T0 + timedelta(days=1), True))
            worse = await s.train("sea", since=T0 + timedelta(days=1), min_rows=1500)
            rejected = await s.outcome(lambda e: e.version == 3, "a decision on v3")
            assert rejected.event == "ModelRejected" and "floor" in rejected.reason
            assert worse.candidate_metrics["accuracy"] < sea_spec.gate.floor
            assert {r.model_version for r in await client.predict_many("sea", PROBE)} == {2}

            # rollback: the previous champion is back within seconds, visible in results
            rolled = await s.command(RollbackModel(command_id="rb-1", model="sea"))
            assert (rolled.event, rolled.version, rolled.previous_version) == ("ModelRolledBack", 1, 2)
            assert await _served_versions(client, 1) == {1}, "the rollback is not served within 15 s"

            # a rejected version cannot be promoted
            refused = await s.command(PromoteModel(command_id="p-3", model="sea", version=3))
            assert refused.event == "ModelCommandRefused" and "failed the gate" in refused.reason

            # a tampered artifact is refused and the old model keeps serving (v1 and v2 are the
            # same bytes, so they share one content-addressed file)
            artifact = tmp_path / "objects" / "artifacts" / v1.artifact.uri
            original = artifact.read_bytes()
            artifact.write_bytes(original[:-1] + b"\x00")
            refused = await s.command(RollbackModel(command_id="rb-2", model="sea", to_version=2))
            assert refused.event == "ModelCommandRefused" and "sha256" in refused.reason
            # a version announced as if the registry had been bypassed, its artifact damaged in the
            # store: inference, which never read these bytes, refuses them
            other = await ArtifactStore.at(tmp_path / "objects").put(sea_onnx(sea_spec, variant=3)[0])
            damaged = tmp_path / "objects" / "artifacts" / other.uri
            damaged.write_bytes(damaged.read_bytes()[:-1] + b"\x00")
            await s.send(topics.models_lifecycle, v1.model_copy(update={"version": 9, "artifact": other}))
            await s.outcome(lambda e: e.version == 9, "the forged event")
            assert {r.model_version for r in await client.predict_many("sea", PROBE)} == {1}
            artifact.write_bytes(original)

            # a redelivered command is carried out once: its outcome is announced again
            repeated = await s.command(RollbackModel(command_id="rb-1", model="sea"))
            assert repeated.model_dump(exclude={"at"}) == rolled.model_dump(exclude={"at"})
            assert {r.model_version for r in await client.predict_many("sea", PROBE)} == {1}

        tagged = await s.command(TagModel(command_id="t-1", model="sea", version=2, tags={"owner": "ml"}))
        assert tagged.tags == {"owner": "ml"}
        cards = tmp_path / "registry" / "cards" / "sea"
        markdown = (cards / "v2.md").read_text()
        assert "# Model card: sea v2" in markdown and "owner=ml" in markdown and "ModelTagged" in markdown
        assert first.dataset.version in markdown and "Status:** archived" in markdown
        assert "Gate:** failed" in (cards / "v3.md").read_text()


async def test_blessed_candidates_can_wait_for_approval(kafka_bootstrap, redis_url, topics, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    text = (ROOT / "models" / "sea.yaml").read_text()
    (models / "manual.yaml").write_text(
        text.replace("name: sea", "name: manual").replace("auto_promote: true", "auto_promote: false")
    )
    spec = load_spec(models / "manual.yaml")
    async with Services(kafka_bootstrap, redis_url, topics, tmp_path, models) as s:
        await s.send(topics.features_computed, *_rows(spec, 800, T0))
        await s.train("manual", min_rows=800)
        waiting = await s.outcome(lambda e: e.version == 1, "a decision on v1")
        assert waiting.event == "ModelAwaitingApproval"
        refused = await s.command(ApproveModel(command_id="a-2", model="manual", version=2))
        assert refused.event == "ModelCommandRefused"
        approved = await s.command(ApproveModel(command_id="a-1", model="manual", version=1))
        assert approved.event == "ModelPromoted" and approved.version == 1
