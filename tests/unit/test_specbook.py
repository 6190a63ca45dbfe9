"""The book of specs a service keeps: versions by content, changes in force, refusals that change
nothing, and what a service builds from each spec rebuilt when it changes."""

import orjson
import pytest

from driftloop.contracts import InvalidInput, ModelSpecRetired
from driftloop.features import FeatureSet
from driftloop.spec import load_spec
from driftloop.specbook import Derived, SpecBook, applied, content_version, spec_key, spec_version
from tests.conftest import ROOT


@pytest.fixture
def sea():
    return load_spec(ROOT / "models" / "sea.yaml")


def _changed(spec):
    return spec.model_copy(update={"training": spec.training.model_copy(update={"min_rows": 123})})


def _raw(event) -> bytes:
    return event.model_dump_json().encode()


def test_a_spec_applied_is_in_force_and_a_changed_one_replaces_it_keeping_every_version(sea):
    book, seen = SpecBook(), []
    book.on_change(lambda model, spec: seen.append((model, spec)))
    first = book.take(_raw(applied(sea, "sea.yaml")))
    assert book["sea"] == sea and book.version_of("sea") == first.version == spec_version(sea)
    changed = _changed(sea)
    second = book.take(_raw(applied(changed)))
    assert second.version != first.version
    assert book["sea"] == changed and book.version_of("sea") == second.version
    assert book.at("sea", first.version) == sea and book.at("sea", second.version) == changed
    assert [m for m, _ in seen] == ["sea", "sea"]
    book.take(_raw(applied(changed)))  # applied again: nothing changes
    assert len(seen) == 2
    assert spec_key(second) == f"sea@{second.version}".encode()


def test_a_retired_model_leaves_the_book_and_comes_back_when_applied_again(sea):
    book = SpecBook()
    book.take(_raw(applied(sea)))
    book.take(_raw(ModelSpecRetired(model="sea")))
    assert "sea" not in book and list(book) == [] and book.version_of("sea") is None
    assert book.at("sea", spec_version(sea)) == sea  # what served before can still be read
    book.take(_raw(applied(sea)))
    assert book["sea"] == sea


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda e: b"\x00 not json", "malformed_json"),
        (lambda e: orjson.dumps({"event": "ModelSpecApplied", "model": "sea"}), "invalid_schema"),
        (lambda e: _raw(e.model_copy(update={"version": "0" * 16})), "invalid_spec"),
        (lambda e: _raw(e.model_copy(update={"model": "other"})), "invalid_spec"),
        (lambda e: _raw(e.model_copy(update={"spec": {**e.spec, "features": []}})), "invalid_spec"),
    ],
    ids=["not-json", "not-a-spec-event", "wrong-version", "wrong-name", "invalid-spec"],
)
def test_a_record_the_book_cannot_use_is_refused_and_the_version_in_force_stays(sea, mutate, reason):
    book = SpecBook()
    book.take(_raw(applied(sea)))
    with pytest.raises(InvalidInput) as refused:
        book.take(mutate(applied(_changed(sea))))
    assert refused.value.reason == reason
    assert book["sea"] == sea
    if reason == "invalid_spec":
        assert list(book.refused) and all(key.startswith(("sea@", "other@")) for key in book.refused)


def test_a_spec_the_service_cannot_build_is_refused_by_that_service_only(sea):
    bad = sea.model_dump(mode="json")
    bad["algorithm"] = {"name": "logistic_regression", "params": {"C": -1.0}}
    event = applied(sea).model_copy(update={"spec": bad})
    event = event.model_copy(update={"version": content_version(bad)})
    assert SpecBook().take(_raw(event)).version == event.version  # not built: taken
    with pytest.raises(InvalidInput, match="invalid_spec"):
        SpecBook(build=frozenset({"estimators"})).take(_raw(event))


def test_what_a_service_builds_from_a_spec_is_built_again_when_the_spec_changes(sea):
    book = SpecBook()
    book.take(_raw(applied(sea)))
    built = Derived(book, FeatureSet)
    first = built["sea"]
    assert built["sea"] is first and list(built) == ["sea"]
    book.take(_raw(applied(_changed(sea))))
    assert built["sea"] is not first and built["sea"].spec == book["sea"]
    with pytest.raises(KeyError):
        built["unknown"]
