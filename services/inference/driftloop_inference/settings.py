"""Settings of the inference service (env vars `DRIFTLOOP_*`)."""

from pydantic import Field

from driftloop.settings import ServiceSettings


class InferenceSettings(ServiceSettings):
    group_id: str = Field(default="inference", description="Consumer group on `predictions.requests`.")
    http_port: int = 8005
    tracing: bool = Field(
        default=False,
        description="Continue the W3C trace context (`traceparent` header) of requests: a span per "
        "traced request, exported to the standard `OTEL_EXPORTER_OTLP_ENDPOINT`; results carry it on.",
    )
