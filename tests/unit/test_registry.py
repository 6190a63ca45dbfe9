"""The registry's use cases on its in-memory repository: versions, the gate, commands carried out
once, refusals with their reasons, rollback, tags, announcements and cards. The Redis repository
gives the same answers (`tests/integration/test_model_governance.py` runs the service on Redis)."""

import orjson
import pytest

from driftloop.artifacts import ArtifactStore
from driftloop.contracts import (
    LIFECYCLE,
    ApproveModel,
    ModelAwaitingApproval,
    ModelCommandRefused,
    ModelPromoted,
    ModelRejected,
    ModelRolledBack,
    ModelTagged,
    PromoteModel,
    RollbackModel,
    TagModel,
)
from driftloop.fastpath import Outbox
from driftloop.settings import Topics
from driftloop.spec import load_spec
from driftloop_registry.adapters import CardWriter, InMemoryRegistryRepository
from driftloop_registry.domain import ModelVersion
from driftloop_registry.handlers import Registry
from tests.conftest import ROOT
from tests.helpers import model_trained

TOPICS = Topics()


@pytest.fixture
def registry(tmp_path):
    sea = load_spec(ROOT / "models" / "sea.yaml")
    manual = sea.model_copy(
        update={"name": "manual", "gate": sea.gate.model_copy(update={"auto_promote": False})}
    )
    return Registry(
        {"sea": sea, "manual": manual},
        InMemoryRegistryRepository(),
        ArtifactStore.at("memory://"),
        CardWriter(tmp_path / "cards"),
        TOPICS,
    )


async def _artifact(registry):
    """An artifact in the registry's store: any bytes do, the registry checks their sha256 only."""
    return await registry.artifacts.put(b"onnx bytes")


def _events(out: Outbox) -> list:
    return [LIFECYCLE.validate_json(o.value) for o in out.outputs if o.topic == TOPICS.models_lifecycle]


async def _register(registry, run_id, accuracy=0.9, model="sea", **kwargs):
    out = Outbox(TOPICS.events_dlq)
    trained = model_trained(
        run_id=run_id, artifact=await _artifact(registry), accuracy=accuracy, model=model, **kwargs
    )
    await registry.register(trained, out)
    return _events(out)


async def _command(registry, command):
    out = Outbox(TOPICS.events_dlq)
    event = await registry.execute(command, out)
    return event, _events(out)


async def test_a_candidate_that_passes_the_gate_is_promoted_and_one_that_fails_is_kept_rejected(registry):
    assert [type(e) for e in await _register(registry, "r1")] == [ModelPromoted]
    [rejected] = await _register(registry, "r2", accuracy=0.3)
    assert isinstance(rejected, ModelRejected) and rejected.version == 2 and "floor" in rejected.reason
    assert await registry.repo.aliases("sea") == {"champion": 1}
    statuses = [v["status"] for v in await registry.list_versions("sea")]
    assert statuses == ["champion", "rejected"]


async def test_a_run_registered_again_gets_its_version_and_decision_again(registry):
    [first] = await _register(registry, "r1")
    again = await _register(registry, "r1")
    assert [(type(e), e.version) for e in again] == [
        (ModelPromoted, 1),
        (ModelPromoted, 1),
    ]  # decision, then what serves
    assert again[0] == first
    assert len(await registry.repo.versions("sea")) == 1


async def test_a_tampered_artifact_is_rejected_by_the_gate(registry, tmp_path):
    bad = (await _artifact(registry)).model_copy(update={"sha256": "f" * 64})
    out = Outbox(TOPICS.events_dlq)
    await registry.register(model_trained(run_id="r1", artifact=bad), out)
    [event] = _events(out)
    assert isinstance(event, ModelRejected) and "artifact refused" in event.reason


async def test_without_auto_promote_a_blessed_candidate_waits_for_approval(registry):
    [promoted] = await _register(registry, "m1", model="manual")
    assert isinstance(promoted, ModelAwaitingApproval)
    assert await registry.repo.aliases("manual") == {"challenger": 1}
    refused, _ = await _command(registry, ApproveModel(command_id="c1", model="manual", version=2))
    assert isinstance(refused, ModelCommandRefused) and refused.reason == "manual has no version 2"
    event, events = await _command(registry, ApproveModel(command_id="c2", model="manual", version=1))
    assert isinstance(event, ModelPromoted) and events == [event]
    assert await registry.repo.aliases("manual") == {"champion": 1}
    again, _ = await _command(registry, ApproveModel(command_id="c3", model="manual", version=1))
    assert isinstance(again, ModelCommandRefused) and again.reason == "v1 is not awaiting approval"


async def test_commands_are_carried_out_once_and_refusals_say_why(registry):
    await _register(registry, "r1")
    await _register(registry, "r2", accuracy=0.95)  # v2 champion
    await _register(registry, "r3", accuracy=0.1)  # v3 rejected
    refused, _ = await _command(registry, PromoteModel(command_id="p1", model="sea", version=3))
    assert isinstance(refused, ModelCommandRefused) and refused.reason.startswith("v3 failed the gate")
    refused, _ = await _command(registry, PromoteModel(command_id="p2", model="sea", version=2))
    assert refused.reason == "v2 is already the champion"
    event, _ = await _command(registry, PromoteModel(command_id="p3", model="sea", version=1))
    assert isinstance(event, ModelPromoted) and event.previous_version == 2
    repeat, events = await _command(registry, PromoteModel(command_id="p3", model="sea", version=1))
    assert repeat == event and events[0] == event  # its first outcome, then what serves now
    assert await registry.repo.champion_history("sea") == [1, 2, 1]


async def test_rollback_returns_the_previous_champion_and_refuses_without_one(registry):
    refused, _ = await _command(registry, RollbackModel(command_id="b0", model="sea"))
    assert refused.reason == "there is no earlier champion to roll back to"
    await _register(registry, "r1")
    await _register(registry, "r2", accuracy=0.95)
    event, _ = await _command(registry, RollbackModel(command_id="b1", model="sea"))
    assert isinstance(event, ModelRolledBack) and (event.version, event.previous_version) == (1, 2)
    assert await registry.repo.aliases("sea") == {"champion": 1}


async def test_tags_are_set_and_removed_and_land_on_the_card(registry, tmp_path):
    await _register(registry, "r1")
    event, _ = await _command(
        registry, TagModel(command_id="t1", model="sea", version=1, tags={"owner": "ml"})
    )
    assert isinstance(event, ModelTagged) and event.tags == {"owner": "ml"}
    event, _ = await _command(
        registry, TagModel(command_id="t2", model="sea", version=1, tags={"owner": "", "stage": "prod"})
    )
    assert event.tags == {"stage": "prod"}
    card = orjson.loads((tmp_path / "cards" / "sea" / "v1.json").read_bytes())
    assert card["tags"] == {"stage": "prod"} and card["status"] == "champion"
    assert [e["event"] for e in card["events"]] == ["ModelPromoted", "ModelTagged", "ModelTagged"]
    assert "stage=prod" in (tmp_path / "cards" / "sea" / "v1.md").read_text()


async def test_announce_publishes_again_the_events_that_placed_champion_and_challenger(registry):
    out = Outbox(TOPICS.events_dlq)
    assert await registry.announce("manual", out) == []
    await _register(registry, "m1", model="manual")
    await _command(registry, ApproveModel(command_id="a1", model="manual", version=1))
    await _register(registry, "m2", model="manual")  # v2 awaits approval next to champion v1
    events = await registry.announce("manual", Outbox(TOPICS.events_dlq))
    assert [(type(e), e.version) for e in events] == [(ModelPromoted, 1), (ModelAwaitingApproval, 2)]


def test_a_version_record_reads_back_as_it_was_stored():
    version = ModelVersion(3, model_trained(run_id="r"), True, "passed", {"a": "b"}, [{"event": "X"}])
    assert ModelVersion.from_record(orjson.loads(orjson.dumps(version.record()))) == version


async def test_every_spec_version_is_kept_once_and_a_record_no_service_can_use_is_dead_lettered(registry):
    from driftloop.contracts import DeadLetter, ModelSpecRetired
    from driftloop.specbook import applied
    from tests.helpers import records

    sea = registry.specs["sea"]
    changed = sea.model_copy(update={"training": sea.training.model_copy(update={"min_rows": 900})})
    events = [applied(sea), applied(changed), ModelSpecRetired(model="sea")]
    raws = [e.model_dump_json().encode() for e in events]
    forged = applied(sea).model_copy(update={"version": "0" * 16}).model_dump_json().encode()
    handled = await registry.keep_specs(records(TOPICS.models_specs, [*raws, raws[0], forged, b"{"]))
    letters = [DeadLetter.model_validate_json(o.value) for o in handled.outputs]
    assert [(d.reason, d.source_offset) for d in letters] == [("invalid_spec", 4), ("malformed_json", 5)]
    history = await registry.spec_history("sea")
    assert [(e["event"], e.get("version")) for e in history] == [
        ("ModelSpecApplied", events[0].version),
        ("ModelSpecApplied", events[1].version),
        ("ModelSpecRetired", None),
    ]  # the first version applied again is kept once
    assert history[1]["spec"]["training"]["min_rows"] == 900
    assert await registry.spec_history("other") == []
