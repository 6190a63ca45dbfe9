"""Settings of the training service (env vars `DRIFTLOOP_*`)."""

from pathlib import Path

from pydantic import Field

from driftloop.settings import StoreSettings


class TrainingSettings(StoreSettings):
    group_id: str = Field(default="training", description="Consumer group on `training.requests`.")
    store_group_id: str = Field(
        default="training-store", description="Consumer group on `features.computed`."
    )
    http_port: int = 8003
    training_dir: Path = Field(default=Path("var/training"), description="Training store directory.")
    threads: int = Field(
        default=1,
        ge=1,
        description="Native threads (OpenMP/BLAS) a fit may use; more only pays on an otherwise idle host.",
    )
