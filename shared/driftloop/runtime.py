"""Run a service: its streams (`driftloop.service`) with `/metrics`, `/healthz` and `/readyz` over HTTP
(FastStream's ASGI app under uvicorn)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import subprocess
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson
import uvicorn
from faststream.asgi import AsgiFastStream, AsgiResponse, get
from prometheus_client import make_asgi_app

from driftloop.connections import kafka_options
from driftloop.fastpath import tune_gc
from driftloop.metrics import UP
from driftloop.service import Service
from driftloop.settings import ServiceSettings
from driftloop.specbook import SpecBook, SpecFollower

S = TypeVar("S", bound=ServiceSettings)


@cache
def code_version() -> str:
    """`DRIFTLOOP_CODE_VERSION`, else the package version plus the git commit when there is one."""
    if explicit := os.environ.get("DRIFTLOOP_CODE_VERSION"):
        return explicit
    base = version("driftloop")
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return base
    return f"{base}+g{commit}" if commit else base


def configure_logging(level: str) -> None:
    """Plain timestamped logs on stderr; FastStream's per-message logs stay at DEBUG."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    for noisy in ("aiokafka", "kafka", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def json_response(body: Any, status: int = 200) -> AsgiResponse:
    """A JSON HTTP response."""
    return AsgiResponse(orjson.dumps(body), status, headers={"content-type": "application/json"})


class Watched(Protocol):
    """A consumer whose progress decides readiness (`driftloop.fastpath.FastPath`)."""

    def stalled(self) -> str | None: ...

    def health(self) -> Any: ...


def follow_specs(
    service: str, settings: ServiceSettings, build: frozenset[str] = frozenset()
) -> SpecFollower:
    """The service's model specs, as `models.specs` puts them in force (`driftloop.specbook`): its
    book (`.book`, a live mapping of the specs in force) is filled before the service's loops start
    and followed after. `build`: the algorithms the service builds, tried with each spec's
    parameters (`driftloop.spec.BUILDS`); a spec it refuses is logged, counted and shown by
    `/readyz`."""
    return SpecFollower(
        settings.kafka_bootstrap,
        settings.topics.models_specs,
        SpecBook(build),
        service,
        kafka_options(settings),
        settings.kafka_idle_fetch_wait_ms,
    )


class Readiness:
    """Set when a service has finished its start-up work (e.g. loaded its champion); not ready
    while one of its `consumers` is stalled. A spec the service refused does not make it unready
    (the other models serve) but is listed, with the specs in force and their versions."""

    def __init__(
        self,
        describe: Callable[[], dict[str, Any]] = dict,
        consumers: Sequence[Watched] = (),
        specs: SpecBook | None = None,
    ) -> None:
        self.ready = False
        self.describe = describe  # extra, current facts for /readyz
        self.consumers = list(consumers)
        self.specs = specs

    def report(self) -> tuple[bool, dict[str, Any]]:
        """(ready, facts): start-up done and no consumer stalled; each consumer's health."""
        stalled = [why for consumer in self.consumers if (why := consumer.stalled())]
        facts: dict[str, Any] = {"consumers": [asdict(c.health()) for c in self.consumers]}
        if stalled:
            facts["stalled"] = stalled
        if self.specs is not None:
            facts["specs"] = {model: self.specs.version_of(model) for model in self.specs}
            if self.specs.refused:
                facts["refused_specs"] = dict(self.specs.refused)
        return self.ready and not stalled, facts | self.describe()


def _get_only(app: Any) -> Any:
    """An ASGI app answering only GET and HEAD (Prometheus's own app answers any method)."""

    async def only_get(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD"):
            headers = [(b"allow", b"GET, HEAD"), (b"content-type", b"text/plain; charset=utf-8")]
            await send({"type": "http.response.start", "status": 405, "headers": headers})
            await send({"type": "http.response.body", "body": b"method not allowed"})
            return
        await app(scope, receive, send)

    return only_get


class ServiceApp(AsgiFastStream):
    """A service's ASGI app, holding its stream declaration (`service`, e.g. for its AsyncAPI) and
    its readiness. `mounts`: (prefix, ASGI app) pairs that answer every path under their prefix
    (FastStream's own routes match whole paths only)."""

    def __init__(
        self,
        service: Service,
        *brokers: Any,
        readiness: Readiness,
        mounts: Sequence[tuple[str, Any]] = (),
        **options: Any,
    ) -> None:
        super().__init__(*brokers, **options)
        self.service = service
        self.readiness = readiness
        self.mounts = list(mounts)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            for prefix, app in self.mounts:
                if path == prefix or path.startswith(prefix + "/"):
                    await app(scope, receive, send)
                    return
        await super().__call__(scope, receive, send)


def build_app(
    service: Service,
    *,
    facts: Callable[[], dict[str, Any]] = dict,
    on_shutdown: Sequence[Callable[[], Awaitable[None] | None]] = (),
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
    routes: Sequence[tuple[str, Any]] = (),
    mounts: Sequence[tuple[str, Any]] = (),
) -> ServiceApp:
    """The service's ASGI app (FastStream serves HTTP): `/metrics`, `/healthz`, `/readyz` and
    `routes`, and every path under each of `mounts`' prefixes. At start-up the service's streams
    (`Service.start`), then its FastStream broker and the `background` tasks; at shutdown the
    reverse, `on_shutdown` last (e.g. closing a Redis client).
    `/readyz`: ready once started, while every stream loop keeps up and the broker answers; it
    lists `facts()`, each loop's health, the specs in force and those refused."""
    readiness = Readiness(facts, service.loops, service.specs.book if service.specs else None)
    tasks: list[asyncio.Task[None]] = []

    @get(include_in_schema=False)
    async def healthz(scope: Any) -> AsgiResponse:
        return json_response({"service": service.name, "status": "alive"})

    @get(include_in_schema=False)
    async def readyz(scope: Any) -> AsgiResponse:
        broker_ok = await service.reachable()
        ready, described = readiness.report()
        ok = ready and broker_ok
        body = {"service": service.name, "ready": ok, "broker": broker_ok, **described}
        return json_response(body, 200 if ok else 503)

    async def started() -> None:  # the broker is started too
        tasks.extend(asyncio.create_task(run(), name=run.__name__) for run in background)
        tune_gc()
        readiness.ready = True
        UP.labels(service.name).set(1)

    async def stop() -> None:
        readiness.ready = False
        UP.labels(service.name).set(0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await service.stop()
        for step in on_shutdown:
            if inspect.isawaitable(closed := step()):
                await closed

    return ServiceApp(
        service,
        service.broker,
        readiness=readiness,
        mounts=mounts,
        asgi_routes=[
            ("/metrics", _get_only(make_asgi_app())),
            ("/healthz", healthz),
            ("/readyz", readyz),
            *routes,
        ],
        on_startup=[service.start],
        after_startup=[started],
        on_shutdown=[stop],
    )


def service_main(settings_type: type[S], create_app: Callable[[S], AsgiFastStream]) -> Callable[[], None]:
    """A service's `main`: settings from the environment, logging, then serve until stopped."""

    def main() -> None:
        settings = settings_type()
        configure_logging(settings.log_level)
        serve(create_app(settings), settings)

    return main


def serve(app: AsgiFastStream, settings: ServiceSettings) -> None:
    """Run the app until SIGTERM/SIGINT; uvicorn drains and FastStream stops its consumers."""
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
