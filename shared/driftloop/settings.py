"""The one settings base: every service builds one frozen settings object from `DRIFTLOOP_*` env vars."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Topics(BaseModel):
    """Topic names; override one with e.g. `DRIFTLOOP_TOPICS__EVENTS_RAW=my.raw`."""

    model_config = ConfigDict(frozen=True)

    events_raw: str = "events.raw"
    events_validated: str = "events.validated"
    events_dlq: str = "events.dlq"
    features_computed: str = "features.computed"
    predictions_requests: str = "predictions.requests"
    predictions_results: str = "predictions.results"
    predictions_shadow: str = "predictions.shadow"
    predictions_feedback: str = "predictions.feedback"
    training_requests: str = "training.requests"
    models_trained: str = "models.trained"
    models_lifecycle: str = "models.lifecycle"
    models_commands: str = "models.commands"
    models_specs: str = "models.specs"
    monitor_drift: str = "monitor.drift"

    def all(self) -> list[str]:
        return list(self.model_dump().values())

    def partitions(self, name: str, default: int) -> int:
        """Control topics keep one partition so their events stay in order; data topics scale."""
        control = {
            self.training_requests,
            self.models_trained,
            self.models_lifecycle,
            self.models_commands,
            self.models_specs,
        }
        return 1 if name in control or name == self.monitor_drift else default

    def configs(self, name: str) -> dict[str, str]:
        """Topic configs set at creation: the lifecycle topic is the record every service replays
        at start-up, so it is never deleted by retention; the spec topic is compacted (one record
        per spec version: `<model>@<version>`), never deleted either."""
        if name == self.models_specs:
            return {"cleanup.policy": "compact", "retention.ms": "-1"}
        return {"retention.ms": "-1"} if name == self.models_lifecycle else {}


class ServiceSettings(BaseSettings):
    """What every service needs; a service subclasses it to add its own fields."""

    model_config = SettingsConfigDict(
        env_prefix="DRIFTLOOP_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    kafka_bootstrap: str = Field(default="127.0.0.1:9092", description="Kafka bootstrap servers.")
    kafka_partitions: int = Field(default=3, description="Partitions for topics this service creates.")
    kafka_fetch_max_wait_ms: int = Field(default=20, description="Consumer fetch wait (latency/CPU).")
    kafka_idle_fetch_wait_ms: int = Field(
        default=250,
        ge=1,
        description="Fetch wait of consumers no request waits on (the monitor, the training store, "
        "the lifecycle followers): fewer fetch requests for the broker. Apache Kafka answers a fetch "
        "as soon as records arrive; the embedded broker (tansu) answers after up to half of it.",
    )
    kafka_max_records: int = Field(default=2000, description="Max records per consumed batch.")
    kafka_gap_wait_ms: int = Field(
        default=250,
        ge=0,
        description="How long a consumer reads a partition again when a fetch skips offsets, waiting "
        "for them (`driftloop.kafka.GapGuard`): the embedded broker can serve a later batch before an "
        "earlier one when producers write one partition at once. 0: a hole is passed at once (still "
        "counted and logged).",
    )
    kafka_background_linger_ms: int = Field(
        default=100,
        ge=0,
        description="Loops off the request's path (the monitor, the training store) wait this long "
        "after a batch smaller than half of `kafka_max_records` before fetching again, so records "
        "gather into larger batches: fewer fetches for the broker, fewer round trips per record.",
    )
    stall_after_s: float = Field(
        default=30.0,
        gt=0,
        description="A consumer that has not committed for this long while records wait for it (or while "
        "its batches fail) is stalled: /readyz answers 503 with the reason.",
    )
    kafka_session_timeout_ms: int = Field(
        default=6000, description="Consumer-group session timeout (Kafka's minimum is 6000)."
    )
    kafka_heartbeat_interval_ms: int = Field(default=1000, description="Consumer-group heartbeat.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="Kafka security protocol (TLS with SSL / SASL_SSL)."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="SCRAM-SHA-512", description="SASL mechanism, with SASL_PLAINTEXT / SASL_SSL."
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user.")
    kafka_sasl_password: SecretStr | None = Field(default=None, description="SASL password (never logged).")
    kafka_ca_file: Path | None = Field(
        default=None, description="CA bundle that signs the brokers' TLS certificates (else the system's)."
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis URL; `rediss://` for TLS. Put the password in `redis_password`, not here.",
    )
    redis_password: SecretStr | None = Field(default=None, description="Redis AUTH password (never logged).")
    redis_username: str | None = Field(default=None, description="Redis ACL user (with `redis_password`).")
    redis_ca_file: Path | None = Field(
        default=None, description="CA bundle that signs Redis's TLS certificate (`rediss://` only)."
    )
    redis_timeout_s: float = Field(
        default=2.0, description="Redis connect and call timeout: an unavailable store fails fast."
    )
    topics: Topics = Field(default_factory=Topics)
    object_store_url: str = Field(
        default="var/objects",
        description="Where artifacts live: a directory (a path or file:///path) or s3://bucket/prefix "
        "for any S3-compatible store. Every service of a deployment names the same one.",
    )
    object_store_endpoint: str | None = Field(
        default=None, description="S3 endpoint URL for a store other than AWS S3 (MinIO, Ceph, R2)."
    )
    object_store_region: str | None = Field(default=None, description="S3 region.")
    object_store_access_key_id: str | None = Field(default=None, description="S3 access key id.")
    object_store_secret_access_key: SecretStr | None = Field(
        default=None, description="S3 secret access key (never logged)."
    )
    object_store_allow_http: bool = Field(
        default=False, description="Allow a plain-HTTP S3 endpoint (a local test server only)."
    )
    object_store_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Time limit of one object store request, and how long a call keeps retrying: an "
        "unreachable store fails a call within about twice this (it is retried later; what serves keeps "
        "serving).",
    )
    data_dir: Path = Field(default=Path("var/data"), description="Service-local durable data.")
    http_host: str = Field(default="127.0.0.1", description="Bind address of /metrics and /healthz.")
    http_port: int = Field(default=8000, description="Port of /metrics, /healthz, /readyz.")
    log_level: str = Field(default="INFO", description="Python logging level.")

    @model_validator(mode="after")
    def _secure_settings_are_complete(self) -> ServiceSettings:
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"{self.kafka_security_protocol} needs kafka_sasl_username and kafka_sasl_password"
            )
        if self.redis_ca_file is not None and not self.redis_url.startswith("rediss://"):
            raise ValueError("redis_ca_file is for TLS: use a rediss:// redis_url")
        return self


class StoreSettings(ServiceSettings):
    """A service that keeps a row store (`driftloop.store.RowStore`): ingest's offline store,
    training's store. One store per service, so the names are the same in both."""

    store_partition_days: int = Field(
        default=31,
        ge=0,
        description="Days before a batch's newest row that get a date partition each; older rows share "
        "one file per batch in the null partition (a batch writes at most this + 2 files).",
    )
    store_min_free_mb: int = Field(
        default=256,
        ge=0,
        description="Free MiB the store's filesystem must have before a batch's output goes out (else the "
        "batch waits and is retried); 0: no check.",
    )


def service_settings(service: str) -> type[ServiceSettings]:
    """The settings class of a service (`driftloop_<service>.settings`): the one that module
    defines, not the bases it imports."""
    import importlib

    module = importlib.import_module(f"driftloop_{service}.settings")
    return next(
        v
        for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, ServiceSettings) and v.__module__ == module.__name__
    )
