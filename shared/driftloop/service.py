"""A service's streams, declared once: what it consumes (each loop's topics with their contracts, its
group, its handler, whether a request waits on it), what it produces, and the lifecycle it follows.

Everything else is derived from the declaration: the topics created at start-up, the start order
(the specs first, then the lifecycle, so models and champions are known before the first record;
then one consumer follows both) and the stop order, the
consumers `/readyz` watches, and the service's AsyncAPI 3 document
(`asyncapi`, written to `schemas/asyncapi/` by `make schemas`). Dead letters (`DeadLetter` on the
DLQ topic) are produced by every loop, so every service declares them. The service's FastStream
broker (`broker`) sends its occasional events outside any batch and answers `/readyz`'s check.

>>> from driftloop.contracts import Observation
>>> from driftloop.settings import ServiceSettings
>>> async def handle(records): return []
>>> svc = Service("ingest", ServiceSettings(), [Consumes({"events.raw": Observation}, "g", handle)],
...               produces={"events.validated": Observation})
>>> svc.topics()
['events.raw', 'events.validated', 'events.dlq']
"""

from __future__ import annotations

import asyncio
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import ConsumerRecord
from pydantic import BaseModel

from driftloop.checkpoint import Checkpoint
from driftloop.contracts import AnnounceModel, DeadLetter, LifecycleEvent, SpecEvent
from driftloop.fastpath import FastPath, Handled, Handler, Output
from driftloop.kafka import Following, ensure_topics, make_broker
from driftloop.lifecycle import LifecycleFollower
from driftloop.settings import ServiceSettings
from driftloop.specbook import SpecFollower

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"


@dataclass(frozen=True)
class Consumes:
    """One stream loop (`driftloop.fastpath.FastPath`): `topics` (each with its contract, or a union
    of contracts) read in group `group_id` and handed to `handle` in batches.

    `hot`: a request waits on it, so it never lingers for a batch to gather (not hot: the monitor,
    the training store). `pipelined`: the next batch is handled while this one's outputs are
    acknowledged (False: one change at a time, e.g. the registry). `may_block`: a batch may take
    long (a training run): the loop is stalled only while it fails. `lock`: shared by loops whose
    batches must not interleave. `checkpoint`: the loop's (`driftloop.checkpoint`), when its handler
    keeps state about batches not yet committed. `name`: the loop's label in metrics and logs
    (default: its topics)."""

    topics: Mapping[str, Any]
    group_id: str
    handle: Handler
    hot: bool = True
    pipelined: bool = True
    may_block: bool = False
    lock: asyncio.Lock | None = None
    checkpoint: Checkpoint | None = None
    name: str | None = None


class StatefulHandler(Protocol):
    """A handler object that keeps state about uncommitted batches in its loop's checkpoint."""

    checkpoint: Checkpoint

    async def handle(self, records: Sequence[ConsumerRecord]) -> Sequence[Output] | Handled: ...


def consumes(handler: StatefulHandler, topics: Mapping[str, Any], group_id: str, **options: Any) -> Consumes:
    """`Consumes` for a handler object with a checkpoint of its own (its loop drives it)."""
    return Consumes(topics, group_id, handler.handle, checkpoint=handler.checkpoint, **options)


class Service:
    """A service's stream loops, what they produce and the lifecycle follower, started and stopped
    together. `produces`: topic -> contract (or union) of what its handlers send."""

    def __init__(
        self,
        name: str,
        settings: ServiceSettings,
        consumes: Sequence[Consumes],
        produces: Mapping[str, Any] | None = None,
        follower: LifecycleFollower | None = None,
        specs: SpecFollower | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.consumes = list(consumes)
        self.produces = dict(produces or {})
        self.follower = follower
        self.specs = specs
        self.following = Following([f for f in (specs, follower) if f is not None])
        self._asking: set[asyncio.Task[None]] = set()
        self.broker = make_broker(settings, name)  # started by the app (FastStream), not here
        self.loops = [
            FastPath(
                settings,
                name,
                list(c.topics),
                c.group_id,
                c.checkpoint,
                name=c.name,
                pipelined=c.pipelined,
                lock=c.lock,
                may_block=c.may_block,
                background=not c.hot,
            )
            for c in self.consumes
        ]

    def _sends(self) -> dict[str, Any]:
        """Every topic the service writes to, with its contract(s)."""
        sends = dict(self.produces)
        if self.follower is not None and self.follower.ask is not None:
            sends[self.follower.ask.topic] = AnnounceModel
        sends[self.settings.topics.events_dlq] = DeadLetter
        return sends

    def _receives(self) -> dict[str, Any]:
        receives = {topic: kind for c in self.consumes for topic, kind in c.topics.items()}
        if self.specs is not None:
            receives.setdefault(self.specs.topic, SpecEvent)
        if self.follower is not None:
            receives.setdefault(self.follower.topic, LifecycleEvent)
        return receives

    def topics(self) -> list[str]:
        """Every topic the service reads or writes, each once: what it creates at start-up."""
        return list(dict.fromkeys([*self._receives(), *self._sends()]))

    async def start(self) -> None:
        """Create missing topics, catch up with the specs, then with the lifecycle, then start
        every loop."""
        await ensure_topics(self.settings, self.topics())
        await self.following.start()  # one consumer follows both topics afterwards
        if self.specs is not None and self.follower is not None:
            self.specs.book.on_change(self._new_model)
        for consumes, loop in zip(self.consumes, self.loops, strict=True):
            await loop.start(consumes.handle)

    def _new_model(self, model: str, spec: object) -> None:
        """A spec put in force after the lifecycle was replayed: ask the registry to announce the
        model's champion again (it may have one from before the model was retired, or from before
        this service knew the model, whose events were passed over then)."""
        follower = self.follower
        if spec is None or follower is None or follower.ask is None:
            return
        task = asyncio.get_running_loop().create_task(follower.ask_for([model], "spec applied"))
        self._asking.add(task)
        task.add_done_callback(self._asking.discard)

    async def stop(self) -> None:
        """Finish and commit every loop's batch in flight, then stop following."""
        for loop in reversed(self.loops):
            await loop.stop()
        await self.following.stop()

    async def send(self, outputs: Sequence[Output]) -> None:
        """Send events outside any batch (e.g. of a background task) with the service's broker,
        each acknowledged before the next."""
        for output in outputs:
            headers = {k: v.decode("latin-1") for k, v in output.headers} or None
            await self.broker.publish(output.value, output.topic, key=output.key, headers=headers)

    async def reachable(self, timeout_s: float = 2.0) -> bool:
        """Whether the broker answers within `timeout_s` (for `/readyz`)."""
        return bool(await self.broker.ping(timeout=timeout_s))

    def asyncapi(self, description: str = "", version: str = "0.1.0") -> dict[str, Any]:
        """The service's AsyncAPI 3 document: a channel per topic, a receive operation per topic
        it consumes (with its group), a send operation per topic it produces, and every contract's
        JSON Schema as a component."""
        channels: dict[str, Any] = {}
        operations: dict[str, Any] = {}
        messages: dict[str, Any] = {}
        schemas: dict[str, Any] = {}

        def channel(topic: str, kind: Any) -> list[dict[str, str]]:
            names = [_component(model, messages, schemas) for model in _members(kind)]
            entry = channels.setdefault(
                topic,
                {
                    "address": topic,
                    "messages": {},
                    "bindings": {"kafka": {"topic": topic, "bindingVersion": KAFKA_BINDING_VERSION}},
                },
            )
            for name in names:
                entry["messages"][name] = {"$ref": f"#/components/messages/{name}"}
            return [{"$ref": f"#/channels/{_escape(topic)}/messages/{name}"} for name in names]

        for consumes, loop in zip(self.consumes, self.loops, strict=True):
            for topic, kind in consumes.topics.items():
                operations[f"receive {topic}"] = {
                    "action": "receive",
                    "channel": {"$ref": f"#/channels/{_escape(topic)}"},
                    "messages": channel(topic, kind),
                    "description": f"Batches read by the stream loop `{loop.name}` "
                    "(driftloop.fastpath): invalid records are dead-lettered, outputs acknowledged, "
                    "then offsets committed.",
                    "bindings": {
                        "kafka": {
                            "groupId": {"type": "string", "enum": [consumes.group_id]},
                            "bindingVersion": KAFKA_BINDING_VERSION,
                        }
                    },
                }
        followed = [
            (self.specs, SpecEvent, "Every spec version, replayed from the start without a consumer group "
             "before the loops start, then followed: the models the service handles."),
            (self.follower, LifecycleEvent, "Every lifecycle event, replayed from the start without a "
             "consumer group, then followed."),
        ]  # fmt: skip
        for follower, kind, about in followed:
            if follower is not None:
                operations[f"follow {follower.topic}"] = {
                    "action": "receive",
                    "channel": {"$ref": f"#/channels/{_escape(follower.topic)}"},
                    "messages": channel(follower.topic, kind),
                    "description": about,
                }
        for topic, kind in self._sends().items():
            operations[f"send {topic}"] = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{_escape(topic)}"},
                "messages": channel(topic, kind),
            }
        return {
            "asyncapi": ASYNCAPI_VERSION,
            "info": {"title": f"driftloop-{self.name}", "version": version, "description": description},
            "defaultContentType": "application/json",
            "servers": {
                "kafka": {
                    "host": self.settings.kafka_bootstrap,
                    "protocol": "kafka",
                    "description": "DRIFTLOOP_KAFKA_BOOTSTRAP",
                }
            },
            "channels": {_key(topic): entry for topic, entry in sorted(channels.items())},
            "operations": {_key(op): entry for op, entry in sorted(operations.items())},
            "components": {
                "messages": dict(sorted(messages.items())),
                "schemas": dict(sorted(schemas.items())),
            },
        }


def _members(kind: Any) -> list[type[BaseModel]]:
    """The contracts of a contract, or of a union of them (possibly `Annotated`)."""
    if typing.get_origin(kind) is typing.Annotated:
        return _members(typing.get_args(kind)[0])
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(kind) for m in _members(arg)]
    return [kind]


def _component(model: type[BaseModel], messages: dict[str, Any], schemas: dict[str, Any]) -> str:
    """Add a contract as a message and its JSON Schema (with the schemas it refers to)."""
    name = model.__name__
    if name not in messages:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
        messages[name] = {
            "name": name,
            "title": name,
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{name}"},
        }
    return name


def _key(name: str) -> str:
    """A map key of the document (letters, digits, `.`, `-`, `_`)."""
    return name.replace(" ", "-")


def _escape(name: str) -> str:
    """A key as a JSON pointer segment."""
    return _key(name).replace("~", "~0").replace("/", "~1")
