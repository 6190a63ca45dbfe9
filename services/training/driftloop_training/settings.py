"""Settings of the training service (env vars `DRIFTLOOP_*`)."""

from pathlib import Path

from pydantic import Field

from driftloop.settings import ServiceSettings


class TrainingSettings(ServiceSettings):
    group_id: str = Field(default="training", description="Consumer group on `training.requests`.")
    store_group_id: str = Field(
        default="training-store", description="Consumer group on `features.computed`."
    )
    http_port: int = 8003
    training_dir: Path = Field(default=Path("var/training"), description="Training store directory.")
    training_partition_days: int = Field(
        default=31,
        ge=0,
        description="Days before a batch's newest row that get a date partition each; older rows "
        "share one file per batch in the null partition (a batch writes at most this + 2 files).",
    )
    training_min_free_mb: int = Field(
        default=256,
        ge=0,
        description="Free MiB the training store's filesystem must have before a batch is stored "
        "(else the batch waits and is retried); 0: no check.",
    )
    threads: int = Field(
        default=1,
        ge=1,
        description="Native threads (OpenMP/BLAS) a fit may use; more only pays on an otherwise idle host.",
    )
