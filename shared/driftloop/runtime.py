"""Run a service: FastStream app plus `/metrics`, `/healthz` and `/readyz` over HTTP (uvicorn)."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson
import uvicorn
from faststream.asgi import AsgiFastStream, AsgiResponse, get
from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI
from prometheus_client import make_asgi_app

from driftloop.metrics import SPECS_REFUSED, UP
from driftloop.settings import ServiceSettings
from driftloop.spec import SpecCatalog, read_specs

S = TypeVar("S", bound=ServiceSettings)


def tune_gc(gen0_threshold: int = 50_000) -> None:
    """Freeze what start-up allocated and collect young objects less often.

    Batch handlers allocate thousands of short-lived dicts per batch; with CPython's default
    threshold (700) the cyclic collector ran many times per batch and took ~35% of the inference
    handler's time. Reference counting still frees acyclic garbage at once.
    """
    gc.freeze()
    gc.set_threshold(gen0_threshold, 50, 50)


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


def model_specs(service: str, settings: ServiceSettings, build: frozenset[str] = frozenset()) -> SpecCatalog:
    """The service's model specs: the valid ones serve; each refused file is logged, counted
    (`driftloop_specs_refused`) and shown by `/readyz` (`Readiness(specs=...)`). `build`: the
    algorithms the service builds, tried with each spec's parameters (`driftloop.spec.BUILDS`)."""
    catalog = read_specs(settings.models_dir, build)
    for path, why in catalog.refused.items():
        logging.getLogger(f"driftloop.{service}").error("model spec %s refused: %s", path, why)
    SPECS_REFUSED.labels(service).set(len(catalog.refused))
    return catalog


class Readiness:
    """Set when a service has finished its start-up work (e.g. loaded its champion); not ready
    while one of its `consumers` is stalled. A spec file refused at start-up does not make it
    unready (the other models serve) but is listed."""

    def __init__(
        self,
        describe: Callable[[], dict[str, Any]] = dict,
        consumers: Sequence[Watched] = (),
        specs: SpecCatalog | None = None,
    ) -> None:
        self.ready = False
        self.describe = describe  # extra, current facts for /readyz
        self.consumers = list(consumers)
        self.refused = {str(path): why for path, why in (specs.refused if specs else {}).items()}

    def report(self) -> tuple[bool, dict[str, Any]]:
        """(ready, facts): start-up done and no consumer stalled; each consumer's health."""
        stalled = [why for consumer in self.consumers if (why := consumer.stalled())]
        facts: dict[str, Any] = {"consumers": [asdict(c.health()) for c in self.consumers]}
        if stalled:
            facts["stalled"] = stalled
        if self.refused:
            facts["refused_specs"] = self.refused
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


def build_app(
    service: str,
    broker: KafkaBroker,
    readiness: Readiness,
    *,
    on_startup: Sequence[Callable[[], Awaitable[None]]] = (),
    on_shutdown: Sequence[Callable[[], Awaitable[None]]] = (),
    routes: Sequence[tuple[str, Any]] = (),
    documented: Sequence[KafkaBroker] = (),
) -> AsgiFastStream:
    """The service's ASGI app: the broker's subscribers plus health and metrics endpoints.
    `documented`: brokers never started that describe what the service consumes outside
    FastStream (`FastPath.describe`), for its AsyncAPI document (`app.schema`)."""

    @get(include_in_schema=False)
    async def healthz(scope: Any) -> AsgiResponse:
        return json_response({"service": service, "status": "alive"})

    @get(include_in_schema=False)
    async def readyz(scope: Any) -> AsgiResponse:
        broker_ok = await broker.ping(timeout=2.0)
        ready, facts = readiness.report()
        ok = ready and broker_ok
        body = {"service": service, "ready": ok, "broker": broker_ok, **facts}
        return json_response(body, 200 if ok else 503)

    async def mark_ready() -> None:
        tune_gc()
        readiness.ready = True
        UP.labels(service).set(1)

    async def mark_down() -> None:
        readiness.ready = False
        UP.labels(service).set(0)

    return AsgiFastStream(
        broker,
        specification=AsyncAPI(*documented),
        asgi_routes=[
            ("/metrics", _get_only(make_asgi_app())),
            ("/healthz", healthz),
            ("/readyz", readyz),
            *routes,
        ],
        on_startup=list(on_startup),
        after_startup=[mark_ready],
        on_shutdown=[mark_down, *on_shutdown],
    )


def run_service(settings_type: type[S], create_app: Callable[[S], AsgiFastStream]) -> None:
    """A service's `main`: settings from the environment, logging, then serve until stopped."""
    settings = settings_type()
    configure_logging(settings.log_level)
    serve(create_app(settings), settings)


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
