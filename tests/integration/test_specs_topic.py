"""Specs through the platform on a real broker: `apply` publishes what changed and refuses a
directory with a bad file whole; a service's book follows the topic; a retired model leaves it."""

import asyncio
import shutil

import pytest

from driftloop.client import make_producer
from driftloop.kafka import read_from_start
from driftloop.settings import ServiceSettings
from driftloop.specbook import SpecBook, SpecFollower, SpecsRefused, apply_specs, published, retire_spec
from tests.conftest import ROOT, wait_for


async def _records(bootstrap: str, topic: str) -> int:
    """How many records the topic holds, read from its start."""
    consumer = await read_from_start(bootstrap, topic)
    count = 0
    try:
        while batches := await consumer.getmany(timeout_ms=500):
            count += sum(len(records) for records in batches.values())
    finally:
        await consumer.stop()
    return count


@pytest.fixture
def settings(kafka_bootstrap, topics):
    return ServiceSettings(kafka_bootstrap=kafka_bootstrap, topics=topics)


@pytest.fixture
def models(tmp_path):
    directory = tmp_path / "models"
    directory.mkdir()
    for name in ("sea.yaml", "agrawal.yaml"):
        shutil.copy(ROOT / "models" / name, directory / name)
    return directory


async def test_apply_publishes_what_changed_and_a_service_follows_without_a_restart(settings, models):
    plan = await apply_specs(settings, models)
    assert [(m, s) for m, _, s in plan] == [("agrawal", "new"), ("sea", "new")]
    book = SpecBook(build=frozenset({"estimators"}))
    follower = SpecFollower(
        settings.kafka_bootstrap, settings.topics.models_specs, book, "test", fetch_wait_ms=50
    )
    await follower.start()
    try:
        assert set(book) == {"agrawal", "sea"}
        first = book.version_of("sea")
        assert [s for _, _, s in await apply_specs(settings, models)] == ["unchanged", "unchanged"]
        assert await _records(settings.kafka_bootstrap, settings.topics.models_specs) == 2

        text = (models / "sea.yaml").read_text().replace("min_rows: ", "min_rows: 1")
        (models / "sea.yaml").write_text(text)
        (models / "new.yaml").write_text(
            "name: brand_new\nfeatures:\n  - {name: size, type: numeric}\n"
            "  - {name: colour, type: categorical, categories: [red, blue]}\n"
            'label: {classes: ["no", "yes"]}\nalgorithm: {name: logistic_regression}\n'
        )
        plan = {m: s for m, _, s in await apply_specs(settings, models)}
        assert plan == {"agrawal": "unchanged", "brand_new": "new", "sea": "changed"}
        await wait_for(
            lambda: "brand_new" in book and book.version_of("sea") != first, 10, "the book to follow"
        )
        assert book.at("sea", first) is not None  # the version before stays readable
        assert [f.type for f in book["brand_new"].features] == ["numeric", "categorical"]

        assert await retire_spec(settings, "agrawal", "test")
        await wait_for(lambda: "agrawal" not in book, 10, "the retirement")
        assert not await retire_spec(settings, "agrawal", "again")
        assert set(await published(settings.kafka_bootstrap, settings.topics.models_specs)) == {
            "sea",
            "brand_new",
        }
    finally:
        await follower.stop()


@pytest.mark.parametrize(
    "name, text, why",
    [
        ("broken.yaml", "name: [broken\n", "not valid YAML"),
        ("path.yaml", "name: ../../etc/passwd\nfeatures: [{name: x, type: numeric}]\n"
         "label: {classes: [0, 1]}\nalgorithm: {name: logistic_regression}\n", "must match"),
        ("dupe.yaml", "name: dupe\nfeatures: [{name: x, type: numeric}, {name: x, type: numeric}]\n"
         "label: {classes: [0, 1]}\nalgorithm: {name: logistic_regression}\n", "not unique"),
    ],
    ids=["malformed", "name-is-a-path", "duplicate-features"],
)  # fmt: skip
async def test_a_directory_with_a_bad_spec_is_refused_whole_with_the_file_and_field(
    settings, models, name, text, why
):
    (models / name).write_text(text)
    with pytest.raises(SpecsRefused) as refused:
        await apply_specs(settings, models)
    [(path, reason)] = refused.value.refused.items()
    assert path.endswith(name) and why in reason
    await asyncio.sleep(0.2)
    assert await _records(settings.kafka_bootstrap, settings.topics.models_specs) == 0


async def test_a_bad_record_on_the_topic_is_refused_and_the_version_in_force_stays(settings, models):
    await apply_specs(settings, models)
    book = SpecBook()
    follower = SpecFollower(
        settings.kafka_bootstrap, settings.topics.models_specs, book, "test", fetch_wait_ms=50
    )
    await follower.start()
    try:
        before = book.version_of("sea")
        producer = make_producer(settings.kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(
                settings.topics.models_specs, b'{"event": "ModelSpecApplied", "model": "sea"}'
            )
        finally:
            await producer.stop()
        await asyncio.sleep(1.0)
        assert book.version_of("sea") == before
    finally:
        await follower.stop()


async def test_a_service_follows_its_specs_and_lifecycle_with_one_consumer(settings, models):
    """Replayed one after the other (specs first), then both followed by a single consumer: a new
    spec and a new lifecycle event each reach their own follower."""
    from driftloop.contracts import ModelPromoted
    from driftloop.kafka import Following
    from driftloop.lifecycle import LifecycleFollower
    from tests.helpers import Publisher

    await apply_specs(settings, models)
    artifact = {"uri": "x", "sha256": "0" * 64, "size_bytes": 1}
    promoted = ModelPromoted(model="sea", version=1, artifact=artifact, classes=[0, 1], feature_names=["x0"],
                             reason="test")  # fmt: skip
    bus = Publisher(settings.kafka_bootstrap)
    await bus.start()
    seen: list[tuple[str, int]] = []
    order: list[str] = []

    async def took(event):
        order.append(f"lifecycle with {sorted(book)}")
        seen.append((event.model, event.version))

    book = SpecBook()
    specs = SpecFollower(
        settings.kafka_bootstrap, settings.topics.models_specs, book, "test", fetch_wait_ms=50
    )
    lifecycle = LifecycleFollower(
        settings.kafka_bootstrap, settings.topics.models_lifecycle, took, fetch_wait_ms=50
    )
    following = Following([specs, lifecycle])
    try:
        await bus.publish(settings.topics.models_lifecycle, [promoted])
        await following.start()
        assert seen == [("sea", 1)] and order == ["lifecycle with ['agrawal', 'sea']"]  # specs replayed first
        assert specs._consumer is None and lifecycle._consumer is None  # one consumer from here on
        (models / "new.yaml").write_text(
            "name: brand_new\nfeatures:\n  - {name: size, type: numeric}\n"
            'label: {classes: ["no", "yes"]}\nalgorithm: {name: logistic_regression}\n'
        )
        await apply_specs(settings, models)
        await bus.publish(settings.topics.models_lifecycle, [promoted.model_copy(update={"version": 2})])
        await wait_for(lambda: "brand_new" in book and ("sea", 2) in seen, 10, "both topics followed")
    finally:
        await following.stop()
        await bus.stop()
