"""The Open Inference Protocol (v2) over HTTP, beside the Kafka path: health, metadata and
inference of the models in service, with the same line-up (champion, canary share by request id,
shadow on the side), the same checks and errors, and the same metrics (`transport="http"`).

Concurrent requests share one model run per short window (`Coalescer`: dynamic batching). Every
answered row is logged to `predictions.requests` / `predictions.results` (and a shadow's answer to
`predictions.shadow`) by `PayloadLog`, batched and off the response path, so the monitor, the
feedback join, drift detection and retraining see HTTP traffic as they see Kafka traffic. A
response comes before its row is logged: a process that dies in between loses the log of what it
answered in its last `http_log_linger_ms` (the answers themselves were given).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson
from prometheus_client import Counter, Histogram
from pydantic import ValidationError

from driftloop.connections import kafka_options
from driftloop.contracts import MAX_MESSAGE_BYTES
from driftloop.fastpath import BatchSender, Output
from driftloop.faults import backoff_s, is_transient
from driftloop.metrics import Tally
from driftloop.oip import HEADER_LENGTH, ErrorBody, ServerMetadata, TensorError, encode_response, split_body
from driftloop.spec import ModelSpec
from driftloop_inference.adapters import ModelHolder
from driftloop_inference.domain import Lineup, Request, Scored, ServingModel
from driftloop_inference.handlers import LOGGED, PREDICTIONS, count, error_reason
from driftloop_inference.settings import InferenceSettings
from driftloop_inference.v2 import (
    EXPLANATION,
    metadata,
    plain_requests,
    response,
    row_ids,
    rows_in,
    to_requests,
    wanted_outputs,
)

log = logging.getLogger(__name__)

HTTP_REQUESTS = Counter(
    "driftloop_http_requests_total",
    "v2 HTTP requests answered, by endpoint (infer, metadata, ready, health, server) and status code.",
    ["endpoint", "code"],
)
HTTP_SECONDS = Histogram(
    "driftloop_http_request_seconds",
    "Time from a v2 HTTP request's arrival to its answer, by endpoint.",
    ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
BATCH_ROWS = Histogram(
    "driftloop_http_batch_rows",
    "Rows of one model run of coalesced HTTP requests (dynamic batching).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
)
LOG_DROPPED = Counter(
    "driftloop_http_log_dropped_total",
    "Logged HTTP predictions dropped because the broker refused them longer than the buffer lasted.",
)
SERVICE_UNAVAILABLE = {"no_champion", "online_store_unavailable"}

Answer = Callable[[list[Request], Lineup], Awaitable[tuple[list[dict[str, Any]], Scored]]]


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, list(headers)


Answered = tuple[list[dict[str, Any]], list[dict[str, Any]]]  # a request's results, its shadow answers


class Coalescer:
    """Requests that arrive within `delay_s` of the first waiting one share one model run (at most
    `rows` rows: a full window runs at once). Each gets its own results back, in order, and the
    shadow challenger's answers to its rows."""

    def __init__(self, answer: Answer, lineup: Callable[[], Lineup], delay_s: float, rows: int) -> None:
        self._answer, self._lineup = answer, lineup
        self.delay_s, self.rows = delay_s, rows
        self._waiting: list[tuple[list[Request], asyncio.Future[Answered]]] = []
        self._rows = 0
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def answer(self, requests: list[Request]) -> Answered:
        future: asyncio.Future[Answered] = asyncio.get_running_loop().create_future()
        self._waiting.append((requests, future))
        self._rows += len(requests)
        if self._rows >= self.rows:
            self._run_now()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay_s, self._run_now)
        return await future

    def _run_now(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting, self._rows = self._waiting, [], 0
        task = asyncio.create_task(self._run(waiting))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, waiting: list[tuple[list[Request], asyncio.Future[Answered]]]) -> None:
        everything = [r for requests, _ in waiting for r in requests]
        BATCH_ROWS.observe(len(everything))
        try:
            results, scored = await self._answer(everything, self._lineup())
        except Exception as exc:  # each waiting request answers with it
            for _, future in waiting:
                if not future.done():
                    future.set_exception(exc)
            return
        owner: dict[str, int] = {}  # a row's request id → the first waiting request with it
        for k, (requests, _) in enumerate(waiting):
            for r in requests:
                owner.setdefault(r.request_id, k)
        shadows: list[list[dict[str, Any]]] = [[] for _ in waiting]
        for answer in scored.shadow:
            shadows[owner[answer["request_id"]]].append(answer)
        at = 0
        for (requests, future), shadow in zip(waiting, shadows, strict=True):
            if not future.done():  # its caller went away
                future.set_result((results[at : at + len(requests)], shadow))
            at += len(requests)

    async def drain(self) -> None:
        """Run what waits and wait for every run under way (at shutdown)."""
        if self._waiting:
            self._run_now()
        await asyncio.gather(*self._running, return_exceptions=True)


class PayloadLog:
    """HTTP predictions to their topics, batched every `http_log_linger_ms`. A send that fails for
    a passing fault (the broker away) is tried again; one the broker refuses for good (a record too
    large) is dropped and counted, as is what is past `capacity` records, oldest first
    (`LOG_DROPPED`). A batch may then go twice: every consumer of those topics is idempotent."""

    def __init__(self, settings: InferenceSettings, capacity: int = 200_000) -> None:
        self.settings = settings
        self.capacity = capacity
        self._outputs: list[Output] = []

    def add(self, outputs: Sequence[Output]) -> None:
        self._outputs += outputs
        if len(self._outputs) > self.capacity:
            self._drop(len(self._outputs) - self.capacity, "over the log's capacity")

    def _drop(self, n: int, why: str) -> None:
        del self._outputs[:n]
        LOG_DROPPED.inc(n)
        log.error("dropped %d logged HTTP predictions: %s", n, why)

    async def run(self, before_last: Callable[[], Awaitable[None]]) -> None:
        """Send what is logged until cancelled; then `before_last` (the runs still under way) and
        a last send. A background task: it connects (again) until the broker answers."""
        settings, failures = self.settings, 0
        while True:
            try:
                sender = await BatchSender.connect(
                    settings.kafka_bootstrap, "driftloop-inference-http-log", **kafka_options(settings)
                )
                break
            except asyncio.CancelledError:
                await asyncio.shield(before_last())
                self._lost("the broker was never reached")
                raise
            except Exception:
                failures += 1
                log.warning("the log of HTTP predictions cannot reach the broker yet", exc_info=True)
                await asyncio.sleep(backoff_s(failures))
        try:
            while True:
                await asyncio.sleep(settings.http_log_linger_ms / 1000)
                await self.flush(sender)
        finally:
            await asyncio.shield(self._last(sender, before_last))

    async def _last(self, sender: BatchSender, before_last: Callable[[], Awaitable[None]]) -> None:
        try:
            await before_last()
            await asyncio.wait_for(self.flush(sender), 10)
        except (TimeoutError, Exception):
            log.warning("the last send of logged HTTP predictions failed", exc_info=True)
        self._lost("not sent before shutdown")
        await sender.stop()

    def _lost(self, why: str) -> None:
        if self._outputs:
            self._drop(len(self._outputs), why)

    async def flush(self, sender: BatchSender) -> None:
        """Send what is logged; what a passing fault kept from the broker waits for the next time."""
        if not self._outputs:
            return
        batch, self._outputs = self._outputs, []
        try:
            await sender.send(batch)
        except BaseException as exc:
            if isinstance(exc, Exception) and not is_transient(exc):
                LOG_DROPPED.inc(len(batch))
                log.error("the broker refused %d logged HTTP predictions: dropped", len(batch), exc_info=True)
                return
            self._outputs[:0] = batch  # cancelled or a passing fault: sent again (maybe twice)
            self.add([])
            if isinstance(exc, Exception):
                log.warning("logging %d HTTP predictions failed; trying again", len(batch), exc_info=True)
                return
            raise


def logged_requests(topic: str, requests: Sequence[Request]) -> list[Output]:
    """Each request as an application would have sent it to `predictions.requests`."""
    return [
        Output(
            topic,
            r.request_id.encode(),
            orjson.dumps(
                {
                    "request_id": r.request_id,
                    "model": r.model,
                    "features": r.features,
                    "entity_id": r.entity_id,
                }
            ),
            (LOGGED,),
        )
        for r in requests
    ]


def logged_answers(topic: str, answers: Sequence[Mapping[str, Any]]) -> list[Output]:
    return [Output(topic, a["request_id"].encode(), orjson.dumps(a), (LOGGED,)) for a in answers]


class V2Api:
    """The `/v2` ASGI app. `ready`: whether the service is started and ready (for health/ready)."""

    def __init__(
        self,
        settings: InferenceSettings,
        specs: Mapping[str, ModelSpec],
        holder: ModelHolder,
        answer: Answer,
        ready: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self.specs = specs
        self.holder = holder
        self.ready = ready
        self.token = settings.http_token.get_secret_value().encode() if settings.http_token else None
        self.answer = answer
        self.log = PayloadLog(settings)
        self.coalescer = Coalescer(
            answer, lambda: holder.lineup, settings.http_batch_delay_ms / 1000, settings.http_batch_rows
        )
        self.in_flight = 0  # rows read and not answered yet
        self._metrics: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._answered: dict[tuple[str, int], Any] = {}  # driftloop_predictions_total's ok children

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        endpoint, status, headers = "unknown", 500, [(b"content-type", b"application/json")]
        try:
            endpoint, status, body, extra = await self._route(scope, receive)
            if any(name == b"content-type" for name, _ in extra):
                headers = []
            headers += extra
        except HttpError as exc:
            status, body = exc.status, _error(exc.message)
            headers += exc.headers
            if status == 401:
                headers.append((b"www-authenticate", b"Bearer"))
        except Exception:
            log.exception("v2 %s %s failed", scope.get("method"), scope.get("path"))
            status, body = 500, _error("internal error")
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        metrics = self._metrics.get((endpoint, status))
        if metrics is None:
            metrics = self._metrics[endpoint, status] = (
                HTTP_REQUESTS.labels(endpoint, str(status)),
                HTTP_SECONDS.labels(endpoint),
            )
        metrics[0].inc()
        metrics[1].observe(time.perf_counter() - started)

    async def _route(self, scope: dict[str, Any], receive: Any) -> tuple[str, int, bytes, list[Any]]:
        method, parts = scope["method"], scope["path"].rstrip("/").split("/")[1:]  # ["v2", ...]
        if parts[1:2] == ["health"] and len(parts) == 3 and parts[2] in ("live", "ready"):
            _allow(method, "GET")
            live = parts[2] == "live"
            if not (live or self.ready()):
                raise HttpError(503, "not ready")
            return "health", 200, orjson.dumps({parts[2]: True}), []
        self._authorize(scope)
        if len(parts) == 1:
            _allow(method, "GET")
            about = ServerMetadata(name="driftloop-inference", version="2", extensions=["binary_tensor_data"])
            return "server", 200, about.model_dump_json().encode(), []
        if parts[1] != "models" or len(parts) < 3:
            raise HttpError(404, "not found")
        model, rest, version = parts[2], parts[3:], None
        if rest[:1] == ["versions"] and len(rest) >= 2:
            version, rest = rest[1], rest[2:]
        spec = self.specs.get(model)
        if spec is None or rest not in ([], ["ready"], ["infer"]):
            raise HttpError(404, f"no model {model!r:.80}" if spec is None else "not found")
        pinned = self._version(model, version)
        if rest == []:
            _allow(method, "GET")
            serving = pinned or self.holder.lineup.champions.get(model)
            reading = serving.feature_set.spec if serving else spec  # the inputs the champion reads
            described = metadata(reading, self._versions(model, pinned))
            return "metadata", 200, described.model_dump_json().encode(), []
        if rest == ["ready"]:
            _allow(method, "GET")
            if pinned is None and model not in self.holder.lineup.champions:
                raise HttpError(503, f"no_champion: model {model} has no version in service yet")
            return "ready", 200, orjson.dumps({"name": model, "ready": True}), []
        _allow(method, "POST")
        body, length = await self._body(scope, receive)
        return "infer", 200, *await self._infer(spec, pinned, body, length)

    def _authorize(self, scope: dict[str, Any]) -> None:
        if self.token is None:
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not (given.startswith(b"Bearer ") and hmac.compare_digest(given[7:], self.token)):
            raise HttpError(401, "a valid bearer token is required")

    def _version(self, model: str, version: str | None) -> ServingModel | None:
        """The loaded version a path names (champion or challenger); None for no version."""
        if version is None:
            return None
        lineup = self.holder.lineup
        for serving in (lineup.champions.get(model), lineup.challengers.get(model)):
            if serving is not None and str(serving.version) == version:
                return serving
        raise HttpError(404, f"version {version!r:.20} of model {model} is not in service")

    def _versions(self, model: str, pinned: ServingModel | None) -> list[int]:
        if pinned is not None:
            return [pinned.version]
        lineup = self.holder.lineup
        return [s.version for s in (lineup.champions.get(model), lineup.challengers.get(model)) if s]

    async def _body(self, scope: dict[str, Any], receive: Any) -> tuple[bytes, int | None]:
        """The request's body within `http_max_body_bytes` (after gzip or deflate), and the binary
        extension's JSON header length."""
        limit = self.settings.http_max_body_bytes
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > limit:
            raise HttpError(413, f"the body is over {limit} bytes")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HttpError(400, "the client went away")
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                raise HttpError(413, f"the body is over {limit} bytes")
            if not message.get("more_body"):
                break
        body = _decompressed(b"".join(chunks), headers.get(b"content-encoding", b"identity"), limit)
        length = headers.get(HEADER_LENGTH.encode())
        if length is not None and not length.isdigit():
            raise HttpError(400, f"{HEADER_LENGTH} must be a number")
        return body, int(length) if length is not None else None

    async def _infer(
        self, spec: ModelSpec, pinned: ServingModel | None, body: bytes, length: int | None
    ) -> tuple[bytes, list[Any]]:
        model, settings = spec.name, self.settings
        serving = pinned or self.holder.lineup.champions.get(model)
        if serving is None:
            raise HttpError(503, f"no_champion: model {model} has no version in service yet")
        spec = serving.feature_set.spec  # read as the Kafka path reads it: with the champion's spec
        request_id, requests, wanted, binary = self._read(spec, body, length)
        if requests and len(requests[-1].request_id) > 256:
            raise HttpError(
                400, f"invalid_request: id too long for {len(requests)} rows (request ids: 256 at most)"
            )
        logged = logged_requests(settings.topics.predictions_requests, requests) if settings.http_log else []
        too_large = next((i for i, out in enumerate(logged) if len(out.value) > MAX_MESSAGE_BYTES), None)
        if too_large is not None:
            raise HttpError(413, f"row {too_large} is over the {MAX_MESSAGE_BYTES}-byte limit of a message")
        if self.in_flight + len(requests) > settings.http_max_rows_in_flight:
            raise HttpError(503, "overloaded: too many rows in flight; try again", [(b"retry-after", b"1")])
        self.in_flight += len(requests)
        try:
            if pinned is None:
                results, shadow = await self.coalescer.answer(requests)
            else:
                results, scored = await self.answer(requests, Lineup(champions={model: pinned}))
                shadow = scored.shadow
        finally:
            self.in_flight -= len(requests)
        failed = next(((i, r["error"]) for i, r in enumerate(results) if r["error"]), None)
        if failed is not None:
            tally = Tally()
            count(tally, [r for r in results if r["error"]], [], self.specs, "http")
            tally.apply()
            i, error = failed
            reason = error_reason(error)
            status = 503 if reason in SERVICE_UNAVAILABLE else 404 if reason == "unknown_model" else 400
            raise HttpError(status, f"{error}" if len(results) == 1 else f"row {i}: {error}")
        self._count_answered(model, results, shadow)
        if settings.http_log:
            topics = settings.topics
            self.log.add(logged)
            self.log.add(logged_answers(topics.predictions_results, results))
            self.log.add(logged_answers(topics.predictions_shadow, shadow))
        encoded, header = encode_response(response(spec, request_id, results, wanted), binary)
        if header is None:
            return encoded, []
        return encoded, [
            (HEADER_LENGTH.encode(), str(header).encode()),
            (b"content-type", b"application/octet-stream"),
        ]

    def _count_answered(
        self, model: str, results: Sequence[Mapping[str, Any]], shadow: Sequence[Mapping[str, Any]]
    ) -> None:
        """`driftloop_predictions_total` (and the shadow's) for a request answered whole: its rows
        are usually of one version, whose counter is kept at hand."""
        version = results[0]["model_version"] if results else 0
        if shadow or any(r["model_version"] != version for r in results):
            tally = Tally()
            count(tally, results, shadow, self.specs, "http")
            tally.apply()
            return
        child = self._answered.get((model, version))
        if child is None:
            child = self._answered[model, version] = PREDICTIONS.labels(model, str(version), "ok", "", "http")
        child.inc(len(results))

    def _read(
        self, spec: ModelSpec, body: bytes, length: int | None
    ) -> tuple[str | None, list[Request], list[str] | None, list[str]]:
        """(the request's id, its rows, the outputs asked for or None for all, those in binary)."""
        limit = self.settings.http_max_rows
        plain = _plain(spec, body) if length is None else None
        if plain is not None:
            if len(plain[1]) > limit:
                raise HttpError(413, f"{len(plain[1])} rows is over the limit of {limit} rows a request")
            return plain[0], plain[1], None, []
        try:
            request, binaries = split_body(body, length)
            rows = rows_in(request)
            if rows > limit:
                raise HttpError(413, f"{rows} rows is over the limit of {limit} rows a request")
            wanted, binary = wanted_outputs(request)
            requests = to_requests(spec, request, binaries, row_ids(request.id, rows))
            if wanted is not None and EXPLANATION in wanted:  # asked for: the rows are explained
                requests = [dataclasses.replace(r, explain=True) for r in requests]
            return request.id, requests, wanted, binary
        except ValidationError as exc:
            raise HttpError(400, f"invalid_request: {_first_error(exc)}") from None
        except TensorError as exc:
            raise HttpError(400, f"invalid_tensor: {exc}") from None


def _plain(spec: ModelSpec, body: bytes) -> tuple[str | None, list[Request]] | None:
    try:
        return plain_requests(spec, orjson.loads(body))
    except orjson.JSONDecodeError:
        return None  # the contract's reading says why


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise HttpError(405, f"{method} is not allowed here; use {allowed}", [(b"allow", allowed.encode())])


def _error(message: str) -> bytes:
    return ErrorBody(error=message).model_dump_json().encode()


def _first_error(exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


def _decompressed(body: bytes, encoding: bytes, limit: int) -> bytes:
    if encoding in (b"identity", b""):
        return body
    if encoding not in (b"gzip", b"deflate"):
        raise HttpError(415, f"content-encoding {encoding.decode('latin-1')!r:.40} is not gzip or deflate")
    inflate = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding == b"gzip" else zlib.MAX_WBITS)
    try:
        out = inflate.decompress(body, limit + 1)
    except zlib.error as exc:
        raise HttpError(400, f"the body is not valid {encoding.decode()}: {exc}") from None
    if len(out) > limit or inflate.unconsumed_tail:
        raise HttpError(413, f"the body is over {limit} bytes once decompressed")
    return out
