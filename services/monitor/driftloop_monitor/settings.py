"""Settings of the monitor service (env vars `DRIFTLOOP_*`)."""

from pydantic import Field

from driftloop.settings import ServiceSettings


class MonitorSettings(ServiceSettings):
    group_id: str = Field(default="monitor", description="Consumer group on the prediction topics.")
    http_port: int = 8006
    join_ttl_s: int = Field(
        default=3600,
        description="The label window: how long a request waits for its label before it "
        "counts as never labelled (and a later label as expired).",
    )
    orphan_grace_s: float = Field(
        default=60.0, description="How long a label waits for its request before it counts as expired."
    )
    quality_window: int = Field(default=1000, ge=1, description="Labelled samples in the rolling accuracy.")
    sweep_every_s: float = Field(
        default=5.0, gt=0, description="How often requests and labels past their window are counted."
    )
