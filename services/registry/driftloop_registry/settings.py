"""Settings of the registry service (env vars `DRIFTLOOP_*`)."""

from pydantic import Field

from driftloop.settings import ServiceSettings


class RegistrySettings(ServiceSettings):
    group_id: str = Field(default="registry", description="Consumer group on `models.trained`.")
    commands_group_id: str = Field(
        default="registry-commands", description="Consumer group on `models.commands`."
    )
    specs_group_id: str = Field(
        default="registry-specs", description="Consumer group on `models.specs` (keeps every version)."
    )
    prometheus_url: str | None = Field(
        default=None,
        description="Prometheus' base URL (e.g. http://prometheus:9090): the console's live figures "
        "(accuracy, the estimate, drift state). Without it the console shows the registry's own data.",
    )
    http_port: int = 8004
