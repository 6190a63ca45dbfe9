"""`schemas/` is generated from the code: fail when the committed files are stale."""

import importlib.util
import json

from driftloop.localstack import SERVICES
from tests.conftest import ROOT


def test_committed_schemas_match_the_code(tmp_path):
    spec = importlib.util.spec_from_file_location("generate", ROOT / "schemas" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.generate(tmp_path)
    assert len(written) >= 12 + 6
    stale = [
        str(p.relative_to(tmp_path))
        for p in written
        if not (ROOT / "schemas" / p.relative_to(tmp_path)).exists()
        or json.loads(p.read_text()) != json.loads((ROOT / "schemas" / p.relative_to(tmp_path)).read_text())
    ]
    assert stale == [], f"stale schemas (run `make schemas`): {stale}"


def _documents() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((ROOT / "schemas" / "asyncapi").glob("*.json"))}


def _resolve(document: dict, ref: str) -> object:
    assert ref.startswith("#/"), ref
    node: object = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_asyncapi_reference_resolves_and_operations_use_their_channels_messages():
    documents = _documents()
    assert set(documents) == {"ingest", "feature", "training", "registry", "inference", "monitor"}
    for service, document in documents.items():
        assert document["asyncapi"] == "3.0.0" and document["info"]["title"] == f"driftloop-{service}"
        for ref in _refs(document):
            _resolve(document, ref)
        for name, operation in document["operations"].items():
            channel = _resolve(document, operation["channel"]["$ref"])
            prefix = operation["channel"]["$ref"] + "/messages/"
            assert operation["messages"], name
            for message in operation["messages"]:
                assert message["$ref"].startswith(prefix), (service, name, message)
            assert operation["action"] in ("send", "receive")
            if operation["action"] == "receive" and not name.startswith("follow-"):  # a group reads it
                (group,) = operation["bindings"]["kafka"]["groupId"]["enum"]
                assert group.startswith(service), (name, group)
            assert channel["address"] in name


def test_the_declared_streams_connect_the_services_into_one_loop():
    """Every topic a service reads is written by a service or by applications, and every topic a
    service writes is read by another or by applications and operators."""
    sends: dict[str, set[str]] = {}
    receives: dict[str, set[str]] = {}
    for service, document in _documents().items():
        for operation in document["operations"].values():
            topic = _resolve(document, operation["channel"]["$ref"])["address"]
            for ref in operation["messages"]:
                message = ref["$ref"].rsplit("/", 1)[1]
                side = sends if operation["action"] == "send" else receives
                side.setdefault(topic, set()).add(f"{service}:{message}")
    # models.specs is written by operators (`driftloop apply`) and read by every service
    from_applications = {"events.raw", "predictions.requests", "predictions.feedback", "models.commands",
                         "models.specs"}  # fmt: skip
    to_applications = {"predictions.results", "predictions.shadow", "monitor.drift", "events.dlq"}
    assert set(receives) - set(sends) <= from_applications, set(receives) - set(sends)
    assert set(sends) - set(receives) <= to_applications, set(sends) - set(receives)
    assert {s.split(":")[0] for s in receives["events.raw"]} == {"ingest"}
    assert {s.split(":")[0] for s in receives["models.specs"]} == set(SERVICES)
    assert "monitor:Observation" in sends["events.raw"]  # labelled rows go back through ingest
    assert {s.split(":")[0] for s in receives["models.lifecycle"]} == {"training", "inference", "monitor"}
    assert {s.split(":")[0] for s in sends["events.dlq"]} == set(_documents())
