"""Settings of the inference service (env vars `DRIFTLOOP_*`)."""

from pydantic import Field

from driftloop.settings import ServiceSettings


class InferenceSettings(ServiceSettings):
    group_id: str = Field(default="inference", description="Consumer group on `predictions.requests`.")
    http_port: int = 8005
