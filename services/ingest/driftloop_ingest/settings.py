"""Settings of the ingest service (env vars `DRIFTLOOP_*`)."""

from pathlib import Path

from pydantic import Field

from driftloop.settings import StoreSettings


class IngestSettings(StoreSettings):
    group_id: str = Field(default="ingest", description="Consumer group on `events.raw`.")
    http_port: int = 8001
    offline_dir: Path = Field(default=Path("var/offline"), description="Offline store directory.")
    max_future_s: float = Field(default=300.0, description="Reject event times further ahead.")
    offline_export_every_s: float = Field(
        default=5.0,
        gt=0,
        description="How often the offline store's new Parquet files are copied to the object store "
        "(`offline/<model>/date=.../`), off the stream loop.",
    )
