"""Settings of the ingest service (env vars `DRIFTLOOP_*`)."""

from pathlib import Path

from pydantic import Field

from driftloop.settings import StoreSettings


class IngestSettings(StoreSettings):
    group_id: str = Field(default="ingest", description="Consumer group on `events.raw`.")
    http_port: int = 8001
    offline_dir: Path = Field(default=Path("var/offline"), description="Offline store directory.")
    max_future_s: float = Field(default=300.0, description="Reject event times further ahead.")
