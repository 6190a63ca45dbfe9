"""The registry's read-only web console at `/ui`: server-rendered pages over the same store as the
`/v1/*` API (no writes: changes stay commands on Kafka, so their audit trail stays one). Every value
is escaped by Jinja; no script runs on any page, and a strict Content-Security-Policy says so. Live
figures (accuracy, the estimate, drift state) come from Prometheus when `prometheus_url` is set.

Pages: `/ui` (models), `/ui/models/{model}` (timeline and gate chart),
`/ui/models/{model}/versions/{version}` (card and lineage), `.../versions/{version}/data` (the
dataset version's profile), `/ui/models/{model}/compare?a=&b=`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import resources
from typing import Any, Protocol
from urllib.parse import parse_qs

import httpx
import jinja2

from driftloop.spec import MODEL_NAME
from driftloop_registry import console

log = logging.getLogger(__name__)

HEADERS = [
    (b"content-security-policy", b"default-src 'none'; style-src 'self'; img-src 'self'; "
     b"form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]  # fmt: skip
STATIC = {  # name: (bytes, content type)
    name: (resources.files("driftloop_registry").joinpath(f"static/{name}").read_bytes(), kind)
    for name, kind in (("console.css", "text/css"), ("favicon.svg", "image/svg+xml"))
}
LIVE_QUERIES = {
    "accuracy": "driftloop_monitor_accuracy",
    "estimated": "driftloop_monitor_estimated_accuracy",
    "drift_state": "driftloop_monitor_drift_state",
}


class Store(Protocol):
    """What the console reads (`driftloop_registry.handlers.Registry`)."""

    async def list_models(self) -> list[dict[str, Any]]: ...

    async def records(self, model: str) -> list[dict[str, Any]]: ...

    async def numbers(self, model: str) -> list[int]: ...

    async def known(self, model: str) -> bool: ...

    async def card(self, model: str, number: int) -> dict[str, Any] | None: ...

    async def spec_history(self, model: str) -> list[dict[str, Any]]: ...


class NotFound(Exception):
    pass


class Console:
    """The `/ui` ASGI app."""

    def __init__(self, store: Store, prometheus_url: str | None = None, timeout_s: float = 1.0) -> None:
        self.store = store
        self.prometheus_url = prometheus_url.rstrip("/") if prometheus_url else None
        self.timeout_s = timeout_s
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("driftloop_registry", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["when"] = when

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        parts = [p for p in scope["path"].split("/") if p][1:]  # after "ui"
        query = {
            k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode("utf-8", "replace")).items()
        }
        head = scope["method"] == "HEAD"  # as GET, without the body
        if scope["method"] not in ("GET", "HEAD"):
            await _send(send, 405, b"method not allowed", "text/plain", [(b"allow", b"GET, HEAD")])
            return
        try:
            if len(parts) == 2 and parts[0] == "static" and parts[1] in STATIC:
                cached = [(b"cache-control", b"public, max-age=3600")]
                await _send(send, 200, *STATIC[parts[1]], cached, head)
                return
            body = await self._page(parts, query)
            status = 200
        except NotFound as exc:
            body, status = self._render("error.html", status=404, message=str(exc)), 404
        except Exception:
            log.exception("console %s failed", scope["path"])
            body, status = self._render("error.html", status=500, message="internal error"), 500
        await _send(
            send, status, body.encode(), "text/html; charset=utf-8", [(b"cache-control", b"no-store")], head
        )

    async def _page(self, parts: list[str], query: dict[str, str]) -> str:
        if not parts:
            return await self._models()
        if parts[0] != "models" or len(parts) < 2:
            raise NotFound("no such page")
        model = parts[1]
        if not MODEL_NAME.fullmatch(model):
            raise NotFound("no such model")
        rest = parts[2:]
        if not rest:
            return await self._model(model)
        if rest[0] == "versions" and len(rest) == 2:
            return await self._version(model, _number(rest[1]))
        if rest[0] == "versions" and len(rest) == 3 and rest[2] == "data":
            return await self._data(model, _number(rest[1]))
        if rest == ["compare"]:
            return await self._compare(model, query)
        raise NotFound("no such page")

    async def _models(self) -> str:
        models = await self.store.list_models()
        live = await self._live(models)
        rows = []
        for m in models:  # the newest version only: a model's page has the rest
            newest = await self.store.card(m["model"], m["versions"]) if m["versions"] else None
            specs = await self.store.spec_history(m["model"])
            rows.append(console.overview(m, [newest] if newest else [], specs, live))
        return self._render("models.html", models=rows, live=self.prometheus_url is not None)

    async def _model(self, model: str) -> str:
        if not await self.store.known(model):
            raise NotFound(f"no model {model}")
        records = await self.store.records(model)
        return self._render(
            "model.html",
            model=model,
            versions=sorted(records, key=lambda r: -r["version"]),
            timeline=console.timeline(records),
            chart=console.gate_chart(records),
            asked_by=console.asked_by,
        )

    async def _version(self, model: str, number: int) -> str:
        record = await self.store.card(model, number)
        if record is None:
            raise NotFound(f"no version {number} of {model}")
        others = [n for n in await self.store.numbers(model) if n != number]
        return self._render(
            "version.html",
            model=model,
            record=record,
            trained=record["trained"],
            lineage=console.lineage(record),
            others=others,
            asked_by=console.asked_by,
        )

    async def _data(self, model: str, number: int) -> str:
        record = await self.store.card(model, number)
        if record is None:
            raise NotFound(f"no version {number} of {model}")
        trained = record["trained"]
        profile = trained.get("profile")
        labels = {} if profile is None else profile["labels"]
        total = max(1, sum(labels.values()))
        return self._render(
            "data.html",
            model=model,
            record=record,
            dataset=trained["dataset"],
            profile=profile,
            labels=console.shares({k: v / total for k, v in labels.items()}),
            histogram=console.histogram,
            shares=console.shares,
            shift_level=console.shift_level,
        )

    async def _compare(self, model: str, query: dict[str, str]) -> str:
        a, b = _number(query.get("a", "")), _number(query.get("b", ""))
        first, second = await self.store.card(model, a), await self.store.card(model, b)
        if first is None or second is None:
            raise NotFound(f"no version {a if first is None else b} of {model}")
        return self._render(
            "compare.html", model=model, a=first, b=second, rows=console.compare(first, second)
        )

    def _render(self, template: str, **values: Any) -> str:
        return self.templates.get_template(template).render(**values)

    async def _live(self, models: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
        """The champions' live figures from Prometheus, by figure and model; empty when it is not
        configured or does not answer."""
        if self.prometheus_url is None:
            return {}
        champions = {m["model"]: m["aliases"].get("champion") for m in models}
        live: dict[str, dict[str, float]] = {}
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                for figure, metric in LIVE_QUERIES.items():
                    answer = await client.get(f"{self.prometheus_url}/api/v1/query", params={"query": metric})
                    answer.raise_for_status()
                    live[figure] = _champions(answer.json()["data"]["result"], champions)
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            log.warning("console: Prometheus at %s did not answer: %s", self.prometheus_url, exc)
            return {}
        return live


def _champions(result: list[dict[str, Any]], champions: dict[str, int | None]) -> dict[str, float]:
    """Values of a Prometheus vector by model: the champion's series (a series without a version
    label is the model's)."""
    values = {}
    for series in result:
        labels, (_, value) = series["metric"], series["value"]
        model, version = labels.get("model"), labels.get("version")
        if model in champions and (version is None or version == str(champions[model])):
            values[model] = float(value)
    return values


def when(iso: str | None) -> str:
    """An ISO 8601 UTC time as people read it: to the second, "UTC" spelled out.

    >>> when("2026-12-02T04:04:41.170647Z"), when(None)
    ('2026-12-02 04:04:41 UTC', '—')
    """
    if not iso:
        return "—"
    return iso.replace("T", " ").split(".")[0].removesuffix("Z").removesuffix("+00:00") + " UTC"


def _number(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 0 < len(text) <= 9):
        raise NotFound("a version is a positive number")
    return int(text)


async def _send(
    send: Any,
    status: int,
    body: bytes,
    kind: str,
    extra: Sequence[tuple[bytes, bytes]] = (),
    head: bool = False,
) -> None:
    headers = [
        (b"content-type", kind.encode()),
        (b"content-length", str(len(body)).encode()),
        *HEADERS,
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
