"""Settings of the ingest service (env vars `DRIFTLOOP_*`)."""

from pathlib import Path

from pydantic import Field

from driftloop.settings import ServiceSettings


class IngestSettings(ServiceSettings):
    group_id: str = Field(default="ingest", description="Consumer group on `events.raw`.")
    http_port: int = 8001
    offline_dir: Path = Field(default=Path("var/offline"), description="Offline store directory.")
    offline_partition_days: int = Field(
        default=31,
        ge=0,
        description="Days before a batch's newest event that get a date partition each; older rows "
        "share one file per batch in the null partition (a batch writes at most this + 2 files).",
    )
    offline_min_free_mb: int = Field(
        default=256,
        ge=0,
        description="Free MiB the offline store's filesystem must have before a batch is published "
        "(else the batch waits and is retried); 0: no check.",
    )
    max_future_s: float = Field(default=300.0, description="Reject event times further ahead.")
