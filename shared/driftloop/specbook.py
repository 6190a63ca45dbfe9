"""Model specs through the platform: the `models.specs` topic and each service's book of specs.

`driftloop apply DIR` validates every spec file of a directory and publishes each spec that changed
as `ModelSpecApplied` (key `<model>@<version>`, the version a hash of the validated spec) on the
compacted `models.specs` topic; `driftloop retire MODEL` publishes `ModelSpecRetired`. Every
service keeps a `SpecBook`: it replays the topic before its loops start (`SpecFollower.catch_up`),
then follows it, so a new or changed model is validated, computed, trained, served and monitored
without a restart. Each service checks every spec again with its own code (a spec this service
cannot use is refused with the reason, dead-lettered, and the previous version stays in force).
The book keeps every version it saw, so a model version can be served with the spec it was
trained with.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

import orjson
from aiokafka import ConsumerRecord
from pydantic import ValidationError

from driftloop.connections import kafka_options
from driftloop.contracts import SPEC_EVENT, InvalidInput, ModelSpecApplied, ModelSpecRetired, SpecEvent, parse
from driftloop.kafka import TopicFollower
from driftloop.metrics import SPECS_REFUSED
from driftloop.settings import ServiceSettings
from driftloop.spec import BUILDS, ModelSpec, SpecRefused, describe, load_spec, read_specs

log = logging.getLogger(__name__)

V = TypeVar("V")


def spec_version(spec: ModelSpec) -> str:
    """The content hash of a validated spec: equal specs, equal versions, whatever the file's
    layout, comments or key order.

    >>> from driftloop.spec import ModelSpec
    >>> a = ModelSpec.model_validate({"name": "m", "features": [{"name": "x", "type": "numeric"}],
    ...     "label": {"classes": [0, 1]}, "algorithm": {"name": "logistic_regression"}})
    >>> b = ModelSpec.model_validate({"algorithm": {"name": "logistic_regression"}, "name": "m",
    ...     "label": {"classes": [0, 1]}, "features": [{"type": "numeric", "name": "x"}]})
    >>> spec_version(a) == spec_version(b), len(spec_version(a))
    (True, 16)
    """
    return content_version(spec.model_dump(mode="json"))


def content_version(fields: Mapping[str, Any]) -> str:
    """The hash of a spec's fields as published (canonical JSON): what a `ModelSpecApplied`
    record's version must be. It depends on the record alone, never on the reader's code, so a
    release whose specs gain a field with a default still reads every version published before."""
    canonical = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:16]


def version_of(specs: Mapping[str, ModelSpec], model: str) -> str | None:
    """The version of a model's spec in force: as published when `specs` is a book, else its hash."""
    if isinstance(specs, SpecBook):
        return specs.version_of(model)
    return spec_version(specs[model]) if model in specs else None


def applied(spec: ModelSpec, source: str = "") -> ModelSpecApplied:
    """The event that puts a spec in force."""
    return ModelSpecApplied(
        model=spec.name, version=spec_version(spec), spec=spec.model_dump(mode="json"), source=source
    )


def spec_key(event: SpecEvent) -> bytes:
    """The record key of a spec event: one per spec version (and one for a retirement), so
    compaction keeps every version and drops only a version applied again."""
    if isinstance(event, ModelSpecRetired):
        return f"{event.model}@retired".encode()
    return f"{event.model}@{event.version}".encode()


def check_spec_event(
    raw: bytes | None, build: frozenset[str] = frozenset()
) -> tuple[SpecEvent, ModelSpec | None]:
    """The spec event a record holds and, for `ModelSpecApplied`, its spec checked with this
    service's `build`; `InvalidInput` for a record that is not a spec event or a spec that cannot
    be used (not valid, or not the model and version it claims)."""
    event = parse(SPEC_EVENT, raw)
    if isinstance(event, ModelSpecRetired):
        return event, None
    key = spec_key(event).decode()
    try:
        spec = ModelSpec.model_validate(event.spec, context={"build": build})
    except ValidationError as exc:
        raise InvalidInput("invalid_spec", f"{key}: {describe(exc)}") from None
    except Exception as exc:  # a check that broke must not stop the service
        raise InvalidInput(
            "invalid_spec", f"{key}: could not be checked ({type(exc).__name__}: {exc})"
        ) from None
    if spec.name != event.model or content_version(event.spec) != event.version:
        why = (
            f"names {spec.name!r} version {content_version(event.spec)}, not {event.model!r} {event.version}"
        )
        raise InvalidInput("invalid_spec", f"{key}: {why}")
    return event, spec


class SpecBook(Mapping[str, ModelSpec]):
    """The specs in force, by model name (a read-only mapping that changes as events arrive), and
    every version seen, by (model, version). `build`: the algorithms this service builds, tried
    with each spec's parameters (`driftloop.spec.BUILDS`)."""

    def __init__(self, build: frozenset[str] = frozenset(), specs: Mapping[str, ModelSpec] = {}) -> None:
        self.build = build
        self._current: dict[str, ModelSpec] = {}
        self._versions: dict[tuple[str, str], ModelSpec] = {}
        self._version: dict[str, str] = {}  # the version in force, by model
        self._listeners: list[Callable[[str, ModelSpec | None], None]] = []
        self.refused: dict[str, str] = {}  # "<model>@<version>" -> why, for /readyz
        for spec in specs.values():
            self._put(spec, spec_version(spec))

    def __getitem__(self, name: str) -> ModelSpec:
        return self._current[name]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._current))

    def __len__(self) -> int:
        return len(self._current)

    def version_of(self, model: str) -> str | None:
        """The version in force of a model's spec (as published)."""
        return self._version.get(model) if model in self._current else None

    def at(self, model: str, version: str) -> ModelSpec | None:
        """A version of a model's spec this book saw (in force or not)."""
        return self._versions.get((model, version))

    def on_change(self, listener: Callable[[str, ModelSpec | None], None]) -> None:
        """Call `listener(model, spec)` after a model's spec changes (None: retired)."""
        self._listeners.append(listener)

    def take(self, raw: bytes | None) -> SpecEvent:
        """Put the event a record holds in force; `InvalidInput` (and nothing changes) for a record
        that is not a spec event, or a spec this service cannot use."""
        try:
            event, spec = check_spec_event(raw, self.build)
        except InvalidInput as exc:
            if exc.reason == "invalid_spec":
                key, _, why = exc.detail.partition(": ")
                self.refused[key] = why
            raise
        self.refused.pop(spec_key(event).decode(), None)
        if spec is None:
            if self._current.pop(event.model, None) is not None:
                self._notify(event.model, None)
        else:
            assert isinstance(event, ModelSpecApplied)
            self._put(spec, event.version)
        return event

    def _put(self, spec: ModelSpec, version: str) -> None:
        self._versions[(spec.name, version)] = spec
        self._version[spec.name] = version
        if self._current.get(spec.name) != spec:
            self._current[spec.name] = spec
            self._notify(spec.name, spec)

    def _notify(self, model: str, spec: ModelSpec | None) -> None:
        for listener in self._listeners:
            try:
                listener(model, spec)
            except Exception:  # a listener's failure must not lose the change
                log.exception("a listener of the spec of %s failed", model)


class Derived(Mapping[str, V], Generic[V]):
    """What a service builds from each spec in force (a checker, a feature set), built again when
    the spec changes: `Derived(specs, FeatureSet)["sea"]`. Works on any mapping of specs."""

    def __init__(self, specs: Mapping[str, ModelSpec], build: Callable[[ModelSpec], V]) -> None:
        self.specs = specs
        self._build = build
        self._built: dict[str, tuple[ModelSpec, V]] = {}

    def __getitem__(self, name: str) -> V:
        return self.of(self.specs[name])

    def of(self, spec: ModelSpec) -> V:
        """What is built from this very spec (e.g. one a batch or a run took at its start, which
        may no longer be in force): built once while it stays the model's latest."""
        held = self._built.get(spec.name)
        if held is None or held[0] is not spec:
            held = (spec, self._build(spec))
            self._built[spec.name] = held
        return held[1]

    def __iter__(self) -> Iterator[str]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)


class SpecFollower(TopicFollower):
    """Replays `models.specs` into a book (`catch_up`, before a service's loops start), then
    follows it. A record the book refuses is logged, counted (`driftloop_specs_refused`) and
    listed by `/readyz`; the model's previous version stays in force. (The registry reads the topic
    in a consumer group too: it keeps every version and dead-letters a refused record, once.)"""

    compacted = True

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        book: SpecBook,
        service: str,
        options: Mapping[str, Any] | None = None,
        fetch_wait_ms: int = 250,
    ) -> None:
        super().__init__(bootstrap, topic, options, fetch_wait_ms)
        self.book, self.service = book, service

    async def take(self, record: ConsumerRecord) -> None:
        try:
            event = self.book.take(record.value)
        except InvalidInput as exc:
            log.error("spec event at offset %d refused, the previous version stays: %s", record.offset, exc)
            return
        finally:
            SPECS_REFUSED.labels(self.service).set(len(self.book.refused))
        if isinstance(event, ModelSpecRetired):
            log.info("model %s retired", event.model)
        else:
            log.info("spec of %s in force: version %s", event.model, event.version)


class SpecsRefused(ValueError):
    """`apply` found spec files it cannot use: nothing was published. `refused`: file -> why."""

    def __init__(self, refused: Mapping[str, str]) -> None:
        self.refused = dict(refused)
        lines = [f"  {path}: {why}" for path, why in self.refused.items()]
        super().__init__("spec files refused, nothing applied:\n" + "\n".join(lines))


async def published(bootstrap: str, topic: str, options: Mapping[str, Any] | None = None) -> SpecBook:
    """The specs in force on the topic now (not built: as any service reads them first)."""
    book = SpecBook()
    follower = SpecFollower(bootstrap, topic, book, "cli", options, fetch_wait_ms=50)
    try:
        await follower.catch_up()
    finally:
        await follower.stop()
    return book


async def apply_specs(
    settings: ServiceSettings, directory: Path, build: frozenset[str] = BUILDS
) -> list[tuple[str, str, str]]:
    """Validate every spec file of `directory` and publish each spec not in force yet on
    `models.specs`; (model, version, "new" | "changed" | "unchanged") per spec. Any file refused
    refuses them all (`SpecsRefused`), so a directory is applied whole or not at all."""
    from driftloop.client import send_all
    from driftloop.kafka import ensure_topics, producer

    if not directory.is_dir():
        raise SpecsRefused({str(directory): "is not a directory"})
    catalog = read_specs(directory, build)
    if catalog.refused:
        raise SpecsRefused({str(path): why for path, why in catalog.refused.items()})
    if not catalog.specs:
        raise SpecsRefused({str(directory): "holds no spec file (*.yaml, *.yml)"})
    topic = settings.topics.models_specs
    await ensure_topics(settings, [topic])
    book = await published(settings.kafka_bootstrap, topic, kafka_options(settings))
    sources = {spec.name: path.name for path, spec in _by_file(directory, catalog.specs).items()}
    plan, events = [], []
    for name, spec in sorted(catalog.specs.items()):
        version = spec_version(spec)
        status = "unchanged" if book.version_of(name) == version else "changed" if name in book else "new"
        plan.append((name, version, status))
        if status != "unchanged":
            events.append(applied(spec, sources.get(name, "")))
    if events:
        sender = producer(settings.kafka_bootstrap, kafka_options(settings), linger_ms=5)
        await sender.start()
        try:
            await send_all(sender, topic, events, key_of=lambda e: spec_key(e).decode())
        finally:
            await sender.stop()
    return plan


async def retire_spec(settings: ServiceSettings, model: str, reason: str) -> bool:
    """Publish the retirement of a model; False (and nothing sent) when no spec of it is in force."""
    from driftloop.client import send_all
    from driftloop.kafka import ensure_topics, producer

    topic = settings.topics.models_specs
    await ensure_topics(settings, [topic])
    if model not in await published(settings.kafka_bootstrap, topic, kafka_options(settings)):
        return False
    event = ModelSpecRetired(model=model, reason=reason)
    sender = producer(settings.kafka_bootstrap, kafka_options(settings), linger_ms=5)
    await sender.start()
    try:
        await send_all(sender, topic, [event], key_of=lambda e: spec_key(e).decode())
    finally:
        await sender.stop()
    return True


def _by_file(directory: Path, specs: Mapping[str, ModelSpec]) -> dict[Path, ModelSpec]:
    """Each valid spec with the file it was read from."""
    names = {spec.name for spec in specs.values()}
    out = {}
    for path in sorted({*directory.glob("*.yaml"), *directory.glob("*.yml")}):
        try:
            spec = load_spec(path, frozenset())
        except SpecRefused:
            continue
        if spec.name in names:
            out[path] = spec
    return out
