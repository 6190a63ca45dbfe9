"""W3C trace context through inference: a traced request's result continues its trace, with one
span per request, a child of the application's; an untraced request starts none."""

from types import SimpleNamespace

import orjson
from aiokafka import ConsumerRecord
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from driftloop.artifacts import OnnxClassifier
from driftloop.features import FeatureSet
from driftloop.online import InMemoryOnlineStore
from driftloop.settings import Topics
from driftloop.tracing import Tracing, trace_headers
from driftloop_inference.domain import Lineup, ServingModel
from driftloop_inference.handlers import InferenceHandler
from tests.helpers import sea_onnx

TRACE, PARENT = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01".encode()
TRACED = (("traceparent", TRACEPARENT),)
GOOD = {"x0": 9.0, "x1": 9.0, "x2": 1.0}


def _record(offset, body, headers=()):
    value = orjson.dumps(body) if isinstance(body, dict) else body
    return ConsumerRecord("predictions.requests", 1, offset, 0, 0, None, value, None, 0, len(value), headers)


def _handler(sea_spec, exporter):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    serving = ServingModel("sea", 4, OnnxClassifier(*sea_onnx(sea_spec)), FeatureSet(sea_spec))
    holder = SimpleNamespace(lineup=Lineup({"sea": serving}))
    return InferenceHandler(
        {"sea": sea_spec}, holder, InMemoryOnlineStore(), Topics(), Tracing(provider, "inference"), "g"
    )  # type: ignore[arg-type]


async def test_a_traced_request_continues_its_trace_and_an_untraced_one_starts_none(sea_spec):
    exporter = InMemorySpanExporter()
    handler = _handler(sea_spec, exporter)
    records = [
        _record(0, {"request_id": "t", "model": "sea", "features": GOOD},
                (("traceparent", TRACEPARENT), ("tracestate", b"app=7"))),
        _record(1, {"request_id": "u", "model": "sea", "features": GOOD}),
        _record(2, {"request_id": "bad", "model": "sea", "features": {"x0": 1.0}}, TRACED),
        _record(3, b"not json", TRACED),
    ]  # fmt: skip
    handled = await handler.handle(records)
    headers = {o.key: dict(o.headers) for o in handled.outputs if o.topic == Topics().predictions_results}
    assert headers[b"u"] == {}  # no trace came in, none goes out
    spans = {span.attributes["driftloop.request_id"]: span for span in exporter.get_finished_spans()}
    assert sorted(spans) == ["bad", "t"]  # the unreadable record went to the dead letters, untraced
    span = spans["t"]
    assert span.context.trace_id == int(TRACE, 16) and span.parent.span_id == int(PARENT, 16)
    assert span.name == "process predictions.requests" and span.kind is SpanKind.CONSUMER
    attributes = span.attributes
    assert attributes["messaging.system"] == "kafka" and attributes["messaging.kafka.offset"] == 0
    assert attributes["messaging.destination.partition.id"] == "1"
    assert attributes["driftloop.model"] == "sea" and attributes["driftloop.model_version"] == 4
    # the result carries the trace on, from driftloop's span, with the application's trace state
    version, trace, parent, flags = headers[b"t"]["traceparent"].decode().split("-")
    assert (version, trace, flags) == ("00", TRACE, "01") and int(parent, 16) == span.context.span_id
    assert headers[b"t"]["tracestate"] == b"app=7"
    assert spans["bad"].status.status_code is StatusCode.ERROR
    assert spans["bad"].attributes["error.type"] == "missing_feature"


def test_only_a_record_with_a_traceparent_is_traced():
    assert trace_headers(_record(0, b"{}")) is None
    assert trace_headers(_record(0, b"{}", (("tracestate", b"a=1"),))) is None
    assert trace_headers(_record(0, b"{}", (("traceparent", TRACEPARENT), ("other", b"x")))) == {
        "traceparent": TRACEPARENT.decode()
    }


def test_tracing_off_is_nothing():
    assert Tracing.configure(False, "inference") is None
