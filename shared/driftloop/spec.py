"""Model specs: a model is declared in one YAML file, never coded.

A spec names the raw features and how to validate them, the label and its classes, the algorithm,
the training window, the promotion gate and the drift detector. Every service loads the same specs.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MODEL_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")

ALGORITHMS = (
    "logistic_regression",
    "random_forest",
    "gradient_boosting",
    "hist_gradient_boosting",
)


class SpecModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FeatureSpec(SpecModel):
    name: str = Field(description="Raw feature name, as sent by applications.")
    type: Literal["numeric", "categorical"] = Field(description="Value type.")
    required: bool = Field(default=True, description="Reject input without it.")
    default: float | str | None = Field(default=None, description="Value used when absent.")
    min: float | None = Field(default=None, description="Smallest valid value (numeric).")
    max: float | None = Field(default=None, description="Largest valid value (numeric).")
    categories: list[str] | None = Field(
        default=None, description="Known categories (categorical); others go to an unknown bucket."
    )
    transform: Literal["none", "log1p", "clip", "bucketize"] = Field(
        default="none", description="Numeric transform applied identically in training and serving."
    )
    buckets: list[float] | None = Field(
        default=None,
        description="bucketize: increasing edges; a value becomes the number of edges at or below it.",
    )

    @model_validator(mode="after")
    def _check(self) -> FeatureSpec:
        if self.type == "categorical" and not self.categories:
            raise ValueError(f"categorical feature {self.name!r} needs categories")
        if self.transform == "clip" and (self.min is None or self.max is None):
            raise ValueError(f"feature {self.name!r}: clip needs min and max")
        if (self.transform == "bucketize") != (self.buckets is not None):
            raise ValueError(f"feature {self.name!r}: buckets go with transform: bucketize, and only with it")
        if self.buckets is not None and any(
            a >= b for a, b in zip(self.buckets, self.buckets[1:], strict=False)
        ):
            raise ValueError(f"feature {self.name!r}: bucket edges must increase")
        return self


class AggregateSpec(SpecModel):
    """A per-entity streaming aggregate over the entity's earlier events: a model input computed by
    the platform, the same way for training rows (as of each event's time, from events before it)
    and for serving (as of the request, from the entity's events so far)."""

    name: str = Field(description="Input name of the aggregate.")
    stat: Literal["count", "mean", "sum", "min", "max", "last"] = Field(description="Statistic.")
    of: str | None = Field(default=None, description="Numeric feature aggregated (not needed for count).")
    last_n: int | None = Field(default=None, ge=1, le=1000, description="Over the entity's last N events ...")
    window_s: float | None = Field(default=None, gt=0, description="... or over the last N seconds.")

    @model_validator(mode="after")
    def _check(self) -> AggregateSpec:
        if self.stat != "count" and self.of is None:
            raise ValueError(f"aggregate {self.name!r}: {self.stat} needs `of`")
        if self.stat != "last" and (self.last_n is None) == (self.window_s is None):
            raise ValueError(f"aggregate {self.name!r}: give exactly one of last_n and window_s")
        return self


TIME_PART_RANGES = {
    "minute": (0, 59),
    "hour": (0, 23),
    "day_of_week": (0, 6),
    "day_of_month": (1, 31),
    "month": (1, 12),
}


class TimePartSpec(SpecModel):
    """A part of the event's time as a model input: of the observation's event time for training
    rows, of the request's arrival for serving (the same function computes both)."""

    name: str = Field(description="Input name.")
    part: Literal["minute", "hour", "day_of_week", "day_of_month", "month"] = Field(
        description="Which part: day_of_week counts from Monday = 0."
    )
    timezone: str = Field(default="UTC", description="IANA time zone the part is read in.")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class LabelSpec(SpecModel):
    name: str = Field(default="label", description="Name of the label column in data files.")
    classes: list[int | str] = Field(min_length=2, description="Class labels.")


class SearchSpec(SpecModel):
    param_distributions: dict[str, list[Any]] = Field(
        min_length=1, description="Candidate values per estimator parameter."
    )
    n_candidates: int = Field(default=8, ge=2, description="Candidates sampled (the budget).")
    cv: int = Field(default=3, ge=2, description="Time-ordered folds (TimeSeriesSplit).")


class AlgorithmSpec(SpecModel):
    name: Literal["logistic_regression", "random_forest", "gradient_boosting", "hist_gradient_boosting"] = (
        Field(description="scikit-learn estimator.")
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Estimator parameters.")
    search: SearchSpec | None = Field(
        default=None, description="Successive-halving random search over these parameters."
    )


class TrainingSpec(SpecModel):
    window_rows: int = Field(default=20_000, ge=10, description="Train on at most the newest N rows.")
    min_rows: int = Field(default=500, ge=10, description="Refuse to train on fewer rows.")
    holdout_fraction: float = Field(default=0.2, gt=0, lt=0.9, description="Newest share held out.")
    seed: int = Field(default=0, description="Random seed for the estimator.")
    parity_tolerance: float = Field(default=1e-3, gt=0, description="Max |p_onnx - p_sklearn|.")
    wait_for_rows_s: float = Field(default=120.0, ge=0, description="Max wait for min_rows to arrive.")
    cooldown_s: float = Field(default=30.0, ge=0, description="Min seconds between automatic runs.")


class GateSpec(SpecModel):
    metric: Literal["accuracy", "balanced_accuracy", "log_loss"] = Field(default="accuracy")
    floor: float = Field(default=0.5, description="Candidate must reach this (log_loss: stay below).")
    max_regression: float = Field(
        default=0.01, ge=0, description="Candidate may trail the champion by at most this."
    )
    auto_promote: bool = Field(default=True, description="Promote blessed candidates at once.")


DISTANCE_DEFAULTS = {"psi": (0.25, 0.1), "ks": (0.15, 0.08), "wasserstein": (0.25, 0.1)}


class DistributionDriftSpec(SpecModel):
    """A windowed test of recent values against the training reference, with hysteresis."""

    statistic: Literal["psi", "ks", "wasserstein"] = Field(
        default="psi",
        description="Statistic that raises the flag (all three are exported): psi, ks (max CDF gap) or "
        "wasserstein (in reference standard deviations). Predictions always use psi over classes.",
    )
    threshold: float | None = Field(
        default=None, gt=0, description="Flag at or above this (default psi 0.25, ks 0.15, wasserstein 0.25)."
    )
    clear: float | None = Field(
        default=None, ge=0, description="Clear a flag below this (default psi 0.1, ks 0.08, wasserstein 0.1)."
    )
    window: int = Field(default=1_000, ge=50, description="Recent samples compared with the reference.")
    every: int = Field(default=250, ge=1, description="Samples between two tests.")
    confirmations: int = Field(default=2, ge=1, description="Tests in a row at or above the threshold.")

    @property
    def limits(self) -> tuple[float, float]:
        """(threshold, clear) with the statistic's defaults filled in."""
        threshold, clear = DISTANCE_DEFAULTS[self.statistic]
        return (
            threshold if self.threshold is None else self.threshold,
            clear if self.clear is None else self.clear,
        )

    @model_validator(mode="after")
    def _check(self) -> DistributionDriftSpec:
        threshold, clear = self.limits
        if clear >= threshold:
            raise ValueError(f"clear ({clear}) must be below threshold ({threshold})")
        return self


class DriftSpec(SpecModel):
    detector: Literal["adwin", "page_hinkley", "kswin"] = Field(default="adwin")
    params: dict[str, Any] = Field(default_factory=dict, description="River detector parameters.")
    warning_params: dict[str, Any] | None = Field(
        default=None,
        description="Parameters of a more sensitive twin detector that raises a warning (no retrain); "
        "default: adwin delta x25, page_hinkley threshold / 2, kswin alpha x10.",
    )
    warning_hold_samples: int = Field(default=1_000, ge=1, description="A warning lasts this many samples.")
    only_degradation: bool = Field(
        default=True, description="Ignore detections where the error rate went down (nothing to fix)."
    )
    warmup_samples: int = Field(default=200, ge=0, description="Ignore a new champion's first N.")
    retrain_min_rows: int = Field(default=1_500, ge=10, description="Post-change rows the retrain waits for.")
    refresh_after_samples: int | None = Field(
        default=5_000,
        ge=1,
        description="After a drift retrain (fast, on the minimum of post-change rows), retrain once more "
        "on all rows since the change point when the new champion has this many labelled samples; "
        "null: never.",
    )
    cooldown_s: float = Field(default=30.0, ge=0, description="Min seconds between detections.")
    covariate: DistributionDriftSpec = Field(
        default_factory=DistributionDriftSpec, description="Per-feature drift of request inputs."
    )
    prediction: DistributionDriftSpec = Field(
        default_factory=DistributionDriftSpec, description="Drift of the predicted-class shares."
    )


class ServingSpec(SpecModel):
    challenger_mode: Literal["shadow", "canary"] = Field(
        default="shadow",
        description="shadow: the challenger also scores every request, results to predictions.shadow; "
        "canary: it serves `canary_share` of requests, chosen by a stable hash of request_id.",
    )
    canary_share: float = Field(default=0.1, ge=0, le=1, description="Share of requests for a canary.")


class ModelSpec(SpecModel):
    name: str = Field(description="Model name: lowercase letters, digits, `_` and `-`.")
    description: str = Field(default="", description="What the model predicts.")
    features: list[FeatureSpec] = Field(min_length=1)
    aggregates: list[AggregateSpec] = Field(
        default_factory=list, description="Per-entity streaming aggregates, model inputs after the features."
    )
    time_parts: list[TimePartSpec] = Field(
        default_factory=list, description="Parts of the event time as model inputs, after the aggregates."
    )
    label: LabelSpec
    algorithm: AlgorithmSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    gate: GateSpec = Field(default_factory=GateSpec)
    drift: DriftSpec = Field(default_factory=DriftSpec)
    serving: ServingSpec = Field(default_factory=ServingSpec)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not MODEL_NAME.match(value):
            raise ValueError(f"model name {value!r} must match {MODEL_NAME.pattern}")
        return value

    @model_validator(mode="after")
    def _unique_features(self) -> ModelSpec:
        names = [f.name for f in self.features] + sorted(self.computed)
        if len(set(names)) != len(names) or len(self.computed) != len(self.aggregates) + len(self.time_parts):
            raise ValueError("feature, aggregate and time part names must be unique")
        numeric = {f.name for f in self.features if f.type == "numeric"}
        for aggregate in self.aggregates:
            if aggregate.of is not None and aggregate.of not in numeric:
                raise ValueError(f"aggregate {aggregate.name!r}: {aggregate.of!r} is not a numeric feature")
        return self

    @property
    def computed(self) -> set[str]:
        """Names of the inputs the platform computes (aggregates, time parts), not applications."""
        return {a.name for a in self.aggregates} | {t.name for t in self.time_parts}

    @cached_property
    def inputs(self) -> list[FeatureSpec]:
        """The features, then each aggregate as a numeric input (0 until its entity has history),
        then each time part as a numeric input within its range."""
        return [
            *self.features,
            *(FeatureSpec(name=a.name, type="numeric", required=False, default=0.0) for a in self.aggregates),
            *(
                FeatureSpec(
                    name=t.name,
                    type="numeric",
                    required=False,
                    default=float(TIME_PART_RANGES[t.part][0]),
                    min=TIME_PART_RANGES[t.part][0],
                    max=TIME_PART_RANGES[t.part][1],
                )
                for t in self.time_parts
            ),
        ]

    def label_of(self, value: Any) -> int | str | None:
        """The spec's class equal to `value` (accepting 1 for "1", True for 1), or None."""
        for cls in self.label.classes:
            if value == cls or str(value) == str(cls) or (isinstance(value, bool) and int(value) == cls):
                return cls
        return None


def load_spec(path: Path) -> ModelSpec:
    """Parse and validate one spec file (YAML, safe loader)."""
    with path.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    return ModelSpec.model_validate(data)


def load_specs(directory: Path) -> dict[str, ModelSpec]:
    """All specs in a directory by model name; a duplicate name is an error."""
    specs: dict[str, ModelSpec] = {}
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        spec = load_spec(path)
        if spec.name in specs:
            raise ValueError(f"model {spec.name!r} is declared twice (second in {path})")
        specs[spec.name] = spec
    return specs
