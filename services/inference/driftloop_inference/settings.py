"""Settings of the inference service (env vars `DRIFTLOOP_*`)."""

from pydantic import Field, SecretStr, field_validator

from driftloop.settings import ServiceSettings


class InferenceSettings(ServiceSettings):
    group_id: str = Field(default="inference", description="Consumer group on `predictions.requests`.")
    http_port: int = 8005
    tracing: bool = Field(
        default=False,
        description="Continue the W3C trace context (`traceparent` header) of requests: a span per "
        "traced request, exported to the standard `OTEL_EXPORTER_OTLP_ENDPOINT`; results carry it on.",
    )
    http_token: SecretStr | None = Field(
        default=None,
        description="Bearer token the v2 HTTP API asks for (`Authorization: Bearer ...`) on every path "
        "but /v2/health/*; none: the API is open (bind it to a private address).",
    )
    http_max_body_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="Largest v2 request body (after gzip/deflate): 413 above.",
    )
    http_max_rows: int = Field(
        default=10_000, ge=1, description="Most rows in one v2 request: 413 above (split larger batches)."
    )
    http_max_rows_in_flight: int = Field(
        default=100_000,
        ge=1,
        description="Most rows read and not yet answered at once: a request past it gets 503, Retry-After.",
    )
    http_batch_delay_ms: float = Field(
        default=2.0,
        ge=0,
        le=1000,
        description="Dynamic batching: the longest an HTTP request waits for others to share its model run.",
    )
    http_batch_rows: int = Field(
        default=1024, ge=1, description="Dynamic batching: a window with this many rows runs at once."
    )
    http_log: bool = Field(
        default=True,
        description="Log HTTP predictions to `predictions.requests`/`predictions.results` (the monitor, "
        "feedback join and retraining see them as Kafka traffic).",
    )
    http_log_linger_ms: int = Field(
        default=50, ge=1, le=10_000, description="How often logged HTTP predictions are sent, in one batch."
    )

    @field_validator("http_token")
    @classmethod
    def _token_not_empty(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and not token.get_secret_value():
            raise ValueError("an empty token would leave the v2 API open: unset it, or give a token")
        return token
