"""registry + inference on a real broker and redis-server: gate, promotion, rejection, integrity,
zero-loss swap between batches, redelivery."""

from driftloop.artifacts import ArtifactStore
from driftloop.client import PredictionClient
from driftloop.contracts import LIFECYCLE, ArtifactRef
from driftloop_inference.app import create_app as inference_app
from driftloop_inference.settings import InferenceSettings
from driftloop_registry.app import create_app as registry_app
from driftloop_registry.settings import RegistrySettings
from tests.helpers import Publisher, apply_models, collect, model_trained, sea_onnx, served_versions


def _trained(run_id, artifact, classes, names, accuracy, champion=None):
    return model_trained(run_id, artifact, classes, names, accuracy, champion)


async def test_gate_promotion_integrity_and_swap(kafka_bootstrap, redis_url, topics, tmp_path, sea_spec):
    common = {
        "kafka_bootstrap": kafka_bootstrap,
        "redis_url": redis_url,
        "topics": topics,
        "object_store_url": str(tmp_path / "objects"),
    }
    await apply_models(kafka_bootstrap, topics)
    store = ArtifactStore.at(tmp_path / "objects")
    onnx, classes, names = sea_onnx(sea_spec)
    good = await store.put(onnx)
    worse_onnx, _, _ = sea_onnx(sea_spec, shuffle_labels=True)
    worse = await store.put(worse_onnx)
    other_onnx, _, _ = sea_onnx(sea_spec, variant=3)
    tampered = await store.put(other_onnx)
    path = tmp_path / "objects" / "artifacts" / tampered.uri
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    lying = ArtifactRef(uri=good.uri, sha256="0" * 64, size_bytes=good.size_bytes)

    async with registry_app(RegistrySettings(**common)), Publisher(kafka_bootstrap) as bus:
        await bus.publish(topics.models_trained, [_trained("run-1", good, classes, names, 0.88)])
        (event,) = await collect(kafka_bootstrap, topics.models_lifecycle, LIFECYCLE, 1)
        assert event.event == "ModelPromoted" and event.version == 1

        # inference starts once v1 is champion and replays its promotion (started before, it would
        # find no champion and ask the registry to announce one: that announcement, a copy of the
        # promotion, could land anywhere among the events this test counts)
        async with (
            inference_app(InferenceSettings(**common)),
            PredictionClient(kafka_bootstrap, topics, timeout_s=20) as client,
        ):
            assert await served_versions(client, "sea", [{"x0": 9, "x1": 9, "x2": 0}] * 5, {1}) == {1}
            results = await client.predict_many("sea", [{"x0": 9, "x1": 9, "x2": 0}] * 5)
            assert all(r.prediction == 1 for r in results)

            await bus.publish(
                topics.models_trained,
                [
                    _trained("run-2", worse, classes, names, 0.52, champion=0.88),  # below floor
                    _trained("run-3", tampered, classes, names, 0.90, champion=0.88),  # bytes changed
                    _trained("run-4", lying, classes, names, 0.90, champion=0.88),  # wrong sha256
                    _trained("run-1", good, classes, names, 0.88),  # redelivery of run-1
                ],
            )
            events = await collect(kafka_bootstrap, topics.models_lifecycle, LIFECYCLE, 6)
            assert [(e.event, e.version) for e in events] == [
                ("ModelPromoted", 1),
                ("ModelRejected", 2),
                ("ModelRejected", 3),
                ("ModelRejected", 4),
                ("ModelPromoted", 1),  # the redelivered run's decision, announced again,
                ("ModelPromoted", 1),  # then what serves now (here the same version)
            ]
            assert "floor" in events[1].reason and "sha256" in events[2].reason
            results = await client.predict_many("sea", [{"x0": 1, "x1": 1, "x2": 0}] * 5)
            assert {r.model_version for r in results} == {1}, "a refused model was served"
