"""Settings of the feature service (env vars `DRIFTLOOP_*`)."""

from pydantic import Field

from driftloop.settings import ServiceSettings


class FeatureSettings(ServiceSettings):
    group_id: str = Field(default="feature", description="Consumer group on `events.validated`.")
    http_port: int = 8002
    online_ttl_s: int = Field(default=7 * 24 * 3600, description="TTL of online feature hashes.")
    history_cache_entities: int = Field(
        default=10_000,
        description="Entity histories kept in memory between batches (0: read Redis every batch).",
    )
