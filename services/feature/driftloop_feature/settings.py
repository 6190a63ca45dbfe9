"""Settings of the feature service (env vars `DRIFTLOOP_*`)."""

from pydantic import Field

from driftloop.settings import ServiceSettings


class FeatureSettings(ServiceSettings):
    group_id: str = Field(default="feature", description="Consumer group on `events.validated`.")
    http_port: int = 8002
    online_ttl_s: int = Field(default=7 * 24 * 3600, description="TTL of online feature hashes.")
