"""W3C trace context through the prediction path, with OpenTelemetry (off by default).

An application that sends a request with a `traceparent` header (and `tracestate`, if it has one)
gets its result with a `traceparent` of the same trace: driftloop adds one span per request, a
child of the application's, covering its handling in inference ("process predictions.requests",
kind consumer, Kafka messaging attributes, the model and the version that served it). Requests
without a `traceparent` start no trace.

Off (`DRIFTLOOP_TRACING=false`, the default) nothing is imported and no header is read: the hot
path pays one `if`. On, spans go to the OTLP/HTTP endpoint of the standard OpenTelemetry variables
(`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_SERVICE_NAME`, ...)
in batches, off the request's path; with no endpoint set, the context is still carried on and no
span is exported.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from aiokafka import ConsumerRecord

log = logging.getLogger(__name__)

CONTEXT_HEADERS = ("traceparent", "tracestate")  # the W3C Trace Context fields
Headers = tuple[tuple[str, bytes], ...]


def trace_headers(record: ConsumerRecord) -> dict[str, str] | None:
    """The record's W3C trace context headers, or None when it carries no `traceparent`."""
    found = {
        key: value.decode("ascii", "replace")
        for key, value in record.headers or ()
        if key in CONTEXT_HEADERS and value
    }
    return found if "traceparent" in found else None


class Tracing:
    """Spans for the records that carry a trace context, on one OpenTelemetry tracer provider."""

    def __init__(self, provider: Any, service: str) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer = provider.get_tracer("driftloop", attributes={"driftloop.service": service})
        self.propagator = TraceContextTextMapPropagator()

    @classmethod
    def configure(cls, enabled: bool, service: str) -> Tracing | None:
        """Tracing for `service` when `enabled`, exporting to the OTLP endpoint in the environment."""
        if not enabled:
            return None
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider

        provider = TracerProvider(
            resource=Resource.create({"service.name": f"driftloop-{service}"})  # OTEL_SERVICE_NAME wins
        )
        if {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"} & os.environ.keys():
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            log.info("tracing on: spans go to the OTLP endpoint")
        else:
            log.warning("tracing on, no OTEL_EXPORTER_OTLP_ENDPOINT: context is carried, spans not exported")
        return cls(provider, service)

    def start(self, records: Sequence[ConsumerRecord], group: str) -> dict[str, Any]:
        """A started span per traced record, keyed by its request id (read again, only for them)."""
        from opentelemetry.trace import SpanKind

        spans: dict[str, Any] = {}
        now_ns = time.time_ns()
        for record in records:
            carrier = trace_headers(record)
            if carrier is None:
                continue
            try:
                request_id = orjson.loads(record.value or b"")["request_id"]
            except (orjson.JSONDecodeError, TypeError, KeyError):
                continue  # unreadable: it goes to the dead letters, no trace to continue
            if not isinstance(request_id, str):
                continue
            parent = self.propagator.extract(carrier)  # an invalid traceparent: a new trace
            if request_id in spans:  # the same id twice in a batch: the newest record's span goes on
                spans[request_id].end()
            spans[request_id] = self.tracer.start_span(
                f"process {record.topic}",
                context=parent,
                kind=SpanKind.CONSUMER,
                start_time=now_ns,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.operation.type": "process",
                    "messaging.operation.name": "process",
                    "messaging.destination.name": record.topic,
                    "messaging.destination.partition.id": str(record.partition),
                    "messaging.consumer.group.name": group,
                    "messaging.kafka.offset": record.offset,
                    "driftloop.request_id": request_id,
                    "driftloop.queued_ms": max(0.0, now_ns / 1e6 - record.timestamp),
                },
            )
        return spans

    def finish(self, span: Any, result: Mapping[str, Any]) -> Headers:
        """End a request's span with what answered it; the headers that carry its context on."""
        from opentelemetry.trace import Status, StatusCode, set_span_in_context

        span.set_attribute("driftloop.model", str(result.get("model", "")))
        span.set_attribute("driftloop.model_version", int(result.get("model_version") or 0))
        error = result.get("error")
        if error:
            span.set_attribute("error.type", str(error).partition(":")[0][:40])
            span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
        span.end()
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier, context=set_span_in_context(span))
        return tuple((key, value.encode()) for key, value in carrier.items())

    def shutdown(self) -> None:
        """Export what is buffered and stop."""
        self.provider.shutdown()
