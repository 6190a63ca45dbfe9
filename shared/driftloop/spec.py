"""Model specs: a model is declared in one YAML file, never coded.

A spec names the raw features and how to validate them, the label and its classes, the algorithm,
the training window, the promotion gate and the drift detector. Every service loads the same specs.

Every field is checked when a spec is loaded, so a spec that would break a service later is refused
at once, alone: `read_specs` returns the valid specs of a directory and, for each refused file, why
(its path in the spec, e.g. `drift.params.threshold`, and the reason, on one line).
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import reprlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from driftloop.parameters import rule_problem

logger = logging.getLogger(__name__)

MODEL_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")

ALGORITHMS = (
    "logistic_regression",
    "random_forest",
    "gradient_boosting",
    "hist_gradient_boosting",
)


UNKNOWN = "__unknown__"  # the value, and one-hot column, of a category the spec does not list
MAX_SPEC_BYTES = 1 << 20
_MAX_INT = 2**53  # integers beyond this lose precision as JSON numbers and float64
_MAX_VALUES = 100_000  # in one field (YAML aliases can make a small file huge)
_QUOTE_IT = "quote it: YAML reads yes, no, on, off, true, false and bare numbers as non-strings"


def show(value: Any) -> str:
    """A short repr of a value from a spec file, whatever its size or depth."""
    return reprlib.repr(value)


# What checking a spec may build to try its parameters: the River drift detectors, the
# scikit-learn estimators (`driftloop.algorithms`; slow to import). Without them, detector
# parameters are checked against `driftloop.parameters`, estimator parameters when training loads.
BUILDS = frozenset({"detectors", "estimators"})


class SpecFieldError(ValueError):
    """A refused value at `path` below the model whose validator raises it."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path, self.why = path, why


def _number_problem(value: Any) -> str | None:
    """Why a field's value (walked through lists and mappings) cannot be used: a number that is not
    finite, an integer too large for JSON, or too many values."""
    stack, seen = [value], 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > _MAX_VALUES:
            return f"holds more than {_MAX_VALUES} values"
        if isinstance(item, float) and not math.isfinite(item):
            return f"{item} is not a finite number"
        if isinstance(item, int) and not -_MAX_INT <= item <= _MAX_INT:
            return f"{show(item)} is beyond ±2**53"
        if isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple):
            stack += item
    return None


class SpecModel(BaseModel):
    # strict: no "5" for 5 nor true for 1; every float finite
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _usable_numbers(cls, value: Any) -> Any:
        problem = _number_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


class FeatureSpec(SpecModel):
    name: str = Field(min_length=1, description="Raw feature name, as sent by applications.")
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

    @field_validator("default", mode="before")
    @classmethod
    def _plain_default(cls, value: Any) -> Any:
        # before the union's own checks, whose errors would name its branches (float, str)
        if isinstance(value, bool) or not isinstance(value, int | float | str | None):
            raise ValueError(f"{show(value)} is not a number or a string ({_QUOTE_IT})")
        if (problem := _number_problem(value)) is not None:
            raise ValueError(problem)
        return value

    @property
    def columns(self) -> list[str]:
        """The encoder's columns of this input: its name, or one per category and the unknown one."""
        if self.categories is None:
            return [self.name]
        return [f"{self.name}={c}" for c in [*self.categories, UNKNOWN]]

    @model_validator(mode="after")
    def _check(self) -> FeatureSpec:
        if self.type == "categorical":
            self._check_categorical()
        else:
            self._check_numeric()
        return self

    def _check_categorical(self) -> None:
        if not self.categories:
            raise SpecFieldError("categories", f"categorical feature {self.name!r} needs categories")
        for field in ("min", "max", "buckets"):
            if getattr(self, field) is not None:
                raise SpecFieldError(field, "is for numeric features only")
        if self.transform != "none":
            raise SpecFieldError("transform", "is for numeric features only")
        seen: set[str] = set()
        for i, category in enumerate(self.categories):
            if category in seen:
                raise SpecFieldError(f"categories[{i}]", f"{category!r} is listed twice")
            if category == UNKNOWN:
                raise SpecFieldError(f"categories[{i}]", f"{UNKNOWN!r} is the encoder's unknown bucket")
            seen.add(category)
        if self.default is not None and self.default not in seen:
            # the encoder would take it (as unknown), but it is a typo more often than a wish
            raise SpecFieldError(
                "default", f"{show(self.default)} is not one of the categories (quote numbers and yes/no)"
            )

    def _check_numeric(self) -> None:
        if self.categories is not None:
            raise SpecFieldError("categories", "is for categorical features only")
        low, high = self.min, self.max
        if low is not None and high is not None and low > high:
            raise SpecFieldError("min", f"{low} is above max ({high})")
        if self.transform == "clip" and (low is None or high is None):
            raise SpecFieldError("transform", f"feature {self.name!r}: clip needs min and max")
        if (self.transform == "bucketize") != (self.buckets is not None):
            raise SpecFieldError(
                "buckets", f"feature {self.name!r}: buckets go with transform: bucketize, and only with it"
            )
        if self.buckets is not None:
            if not self.buckets:
                raise SpecFieldError("buckets", "needs at least one edge")
            for i, (a, b) in enumerate(zip(self.buckets, self.buckets[1:], strict=False)):
                if a >= b:
                    raise SpecFieldError(f"buckets[{i + 1}]", f"bucket edges must increase ({a}, then {b})")
        if self.transform == "log1p" and high is not None and high <= -1:
            raise SpecFieldError("max", f"log1p needs values above -1, max is {high}")
        if isinstance(self.default, str):
            raise SpecFieldError("default", f"{self.default!r} is a string, the feature is numeric")
        if self.default is not None:
            if (low is not None and self.default < low) or (high is not None and self.default > high):
                raise SpecFieldError("default", f"{self.default} is outside [{low}, {high}]")
            if self.transform == "log1p" and self.default <= -1:
                raise SpecFieldError("default", f"log1p needs values above -1, got {self.default}")


class AggregateSpec(SpecModel):
    """A per-entity streaming aggregate over the entity's earlier events: a model input computed by
    the platform, the same way for training rows (as of each event's time, from events before it)
    and for serving (as of the request, from the entity's events so far)."""

    name: str = Field(min_length=1, description="Input name of the aggregate.")
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

    name: str = Field(min_length=1, description="Input name.")
    part: Literal["minute", "hour", "day_of_week", "day_of_month", "month"] = Field(
        description="Which part: day_of_week counts from Monday = 0."
    )
    timezone: str = Field(default="UTC", description="IANA time zone the part is read in.")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # "America" is a directory
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class LabelSpec(SpecModel):
    name: str = Field(default="label", min_length=1, description="Name of the label column in data files.")
    classes: list[int | str] = Field(min_length=2, description="Class labels.")

    @field_validator("classes", mode="before")
    @classmethod
    def _plain_classes(cls, value: Any) -> Any:
        for i, label in enumerate(value if isinstance(value, list) else []):
            if isinstance(label, bool) or not isinstance(label, int | str):
                raise SpecFieldError(f"[{i}]", f"{show(label)} is not an integer or a string ({_QUOTE_IT})")
        return value

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, value: list[int | str]) -> list[int | str]:
        seen: dict[str, int | str] = {}
        for i, label in enumerate(value):
            if str(label) in seen:  # `label_of` takes 1 for "1": they would be one class
                raise SpecFieldError(f"[{i}]", f"{label!r} is the same class as {seen[str(label)]!r}")
            seen[str(label)] = label
        return value


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

    @model_validator(mode="after")
    def _candidates(self) -> AlgorithmSpec:
        for key, values in (self.search.param_distributions if self.search is not None else {}).items():
            if not values:
                raise SpecFieldError(f"search.param_distributions.{key}", "needs at least one value")
        return self

    def build_problem(self) -> SpecFieldError | None:
        """Why scikit-learn's estimator refuses the parameters or a search candidate (it imports
        scikit-learn: `ModelSpec` asks only where estimators are built)."""
        from driftloop.algorithms import (  # imported when checked: it is slow
            estimator_value_problem,
            unknown_estimator_parameter,
        )

        for key, value in self.params.items():
            if (why := estimator_value_problem(self.name, key, value)) is not None:
                return SpecFieldError(f"params.{key}", why)
        candidates = self.search.param_distributions if self.search is not None else {}
        for key, values in candidates.items():
            if (why := unknown_estimator_parameter(self.name, key)) is not None:
                return SpecFieldError(f"search.param_distributions.{key}", why)
            for i, value in enumerate(values):
                if (why := estimator_value_problem(self.name, key, value)) is not None:
                    return SpecFieldError(f"search.param_distributions.{key}[{i}]", why)
        return None


class TrainingSpec(SpecModel):
    window_rows: int = Field(default=20_000, ge=10, description="Train on at most the newest N rows.")
    min_rows: int = Field(default=500, ge=10, description="Refuse to train on fewer rows.")
    holdout_fraction: float = Field(default=0.2, gt=0, lt=0.9, description="Newest share held out.")
    seed: int = Field(default=0, ge=0, lt=2**32, description="Random seed for the estimator.")
    parity_tolerance: float = Field(default=1e-3, gt=0, description="Max |p_onnx - p_sklearn|.")
    refit_with_holdout: bool = Field(
        default=True,
        description="Once the gate blessed a candidate, fit it again on all the window's rows, the "
        "holdout too, and serve that (the newest rows matter most on a drifting stream; the gate's "
        "evidence is the first fit's).",
    )
    wait_for_rows_s: float = Field(
        default=120.0,
        ge=0,
        description="Max wall-clock seconds a run waits for the rows its command counted to reach the "
        "training store (delivery through ingest and feature; never a policy decision).",
    )

    @model_validator(mode="after")
    def _can_train(self) -> TrainingSpec:
        if self.min_rows > self.window_rows:
            raise SpecFieldError("min_rows", f"{self.min_rows} is above window_rows ({self.window_rows})")
        return self


class GateSpec(SpecModel):
    metric: Literal["accuracy", "balanced_accuracy", "log_loss"] = Field(default="accuracy")
    floor: float = Field(default=0.5, description="Candidate must reach this (log_loss: stay below).")
    max_regression: float = Field(
        default=0.01, ge=0, description="Candidate may trail the champion by at most this."
    )
    auto_promote: bool = Field(default=True, description="Promote blessed candidates at once.")
    min_holdout_rows: int = Field(
        default=500,
        ge=1,
        description="Holdout at least this many of the newest rows (at most half the window); a "
        "candidate whose holdout is smaller is not compared with a champion: it is rejected.",
    )
    confidence: float | None = Field(
        default=0.95,
        gt=0.5,
        lt=1,
        description="Reject a candidate only when, row by row on the same holdout, it trails the "
        "champion by more than max_regression with this one-sided confidence (null: compare the two "
        "point estimates, a bare margin).",
    )

    @model_validator(mode="after")
    def _floor_in_range(self) -> GateSpec:
        if self.floor < 0 or (self.metric != "log_loss" and self.floor > 1):
            bounds = "at least 0" if self.metric == "log_loss" else "in [0, 1]"
            raise SpecFieldError("floor", f"{self.floor} is not a {self.metric} ({bounds})")
        return self


# how a warning twin is made more sensitive than the detector: (parameter, River default, factor)
MORE_SENSITIVE = {
    "adwin": ("delta", 0.002, 25.0),
    "page_hinkley": ("threshold", 50.0, 0.5),
    "kswin": ("alpha", 0.005, 10.0),
}

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


class EstimateSpec(SpecModel):
    """Accuracy estimated from the served probabilities, before labels come (each version's
    holdout calibration applied to its recent top-class probabilities)."""

    window: int = Field(
        default=500, ge=50, description="Recent predictions of a version the estimate covers."
    )
    level: float = Field(default=0.95, gt=0.5, lt=1, description="Confidence of the estimate's band.")
    floor: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Raise `DriftDetected(kind=estimate)` when the top of the champion's band falls below "
        "this, cleared once the estimate is back above it (default: the gate floor when the gate metric "
        "is accuracy; no floor otherwise).",
    )
    max_drop: float | None = Field(
        default=0.05,
        gt=0,
        le=1,
        description="Also raise it when the top of the band falls more than this below the version's own "
        "accuracy on its holdout (null: the floor only).",
    )


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
    cooldown_rows: int = Field(
        default=1_000, ge=0, description="Min labelled rows between two detections (and drift retrains)."
    )
    covariate: DistributionDriftSpec = Field(
        default_factory=DistributionDriftSpec, description="Per-feature drift of request inputs."
    )
    prediction: DistributionDriftSpec = Field(
        default_factory=DistributionDriftSpec, description="Drift of the predicted-class shares."
    )
    estimate: EstimateSpec = Field(
        default_factory=EstimateSpec, description="Accuracy estimated from served probabilities."
    )

    @model_validator(mode="after")
    def _detector_parameters(self) -> DriftSpec:
        if (problem := self.detector_problem(rule_problem)) is not None:
            raise problem
        return self

    def detector_problem(self, check: Any = None) -> SpecFieldError | None:
        """Why the detector refuses `params` or its warning twin's (`check`: the parameter table by
        default, or `driftloop.algorithms.detector_problem`, which builds River's detector)."""
        if check is None:
            from driftloop.algorithms import detector_problem  # imported when checked: it is slow

            check = detector_problem
        if (problem := check(self.detector, self.params)) is not None:
            return SpecFieldError(".".join(filter(None, ("params", problem[0]))), problem[1])
        twin = warning_params(self)
        if (problem := check(self.detector, twin)) is None:
            return None
        if self.warning_params is not None:
            return SpecFieldError(".".join(filter(None, ("warning_params", problem[0]))), problem[1])
        name, _, factor = MORE_SENSITIVE[self.detector]
        return SpecFieldError(
            f"params.{name}",
            f"the warning twin's {name} ({name} x {factor:g} = {show(twin[name])}) is refused: "
            f"{problem[1]}; change it or give warning_params",
        )


def warning_params(spec: DriftSpec) -> dict[str, Any]:
    """Parameters of the warning twin: the spec's, or the detector's made more sensitive.

    >>> warning_params(DriftSpec(params={"delta": 0.001}))
    {'delta': 0.025}
    """
    if spec.warning_params is not None:
        return dict(spec.warning_params)
    name, default, factor = MORE_SENSITIVE[spec.detector]
    return {**spec.params, name: spec.params.get(name, default) * factor}


class RetrainSpec(SpecModel):
    """When the loop retrains a model on its own, and on which rows. Counts are labelled rows of the
    model's stream and durations are in its event time (never wall-clock seconds), so a backtest
    and the live stream decide alike."""

    trigger: Literal["drift", "periodic", "both", "none"] = Field(
        default="both",
        description="drift: when the concept-drift detector fires; periodic: on a schedule; both; "
        "none: no automatic retraining (not below the floor either).",
    )
    every_rows: int | None = Field(
        default=500, ge=1, description="Periodic: retrain after this many labelled rows (null: not)."
    )
    every_s: float | None = Field(
        default=None, gt=0, description="Periodic: retrain after this many seconds of event time (null: not)."
    )
    window_rows: int = Field(
        default=5_000, ge=10, description="Rows of an automatic retrain: the newest N labelled rows (W)."
    )
    window: Literal["since_change", "last", "since_change_at_least"] = Field(
        default="since_change",
        description="since_change: from a drift retrain on, every retrain reads the newest W rows since "
        "the last estimated change point (the rows before it are another concept); last: the newest W "
        "rows, pre-change rows too; since_change_at_least: a drift retrain reads the rows since the "
        "change point, extended back to W rows when there are fewer.",
    )
    min_rows: int = Field(
        default=1_000, ge=10, description="Labelled rows since the change point a drift retrain waits for."
    )
    recency_half_life_rows: int | None = Field(
        default=2_500,
        ge=1,
        description="Weight rows by recency: a row's weight halves every N rows back (null: all alike).",
    )
    window_choices: list[int] | None = Field(
        default=None,
        description="Fit one candidate on each of these numbers of the newest rows before the holdout "
        "(at most W) and keep the one that scores best on the holdout: the window adapts to how fast "
        "the stream changes (null: fit on all of them).",
    )
    retry_rejected: bool = Field(
        default=True,
        description="Retry a rejected or failed automatic retrain once, with twice the rows, when half "
        "as many new rows again have arrived.",
    )
    below_floor_rows: int | None = Field(
        default=1_000,
        ge=10,
        description="When the champion's accuracy over this many labelled rows is below the gate floor, "
        "retrain on the newest W rows (again after as many rows while it stays below; null: never).",
    )

    @model_validator(mode="after")
    def _periodic_has_a_period(self) -> RetrainSpec:
        if self.trigger in ("periodic", "both") and self.every_rows is None and self.every_s is None:
            raise SpecFieldError("every_rows", f"trigger {self.trigger} needs every_rows or every_s")
        return self


# settings that moved, and where: a spec that still has one is refused with the hint
MOVED = {
    ("training", "cooldown_s"): "automatic retrains are spaced in labelled rows now: drift.cooldown_rows, "
    "retrain.every_rows",
    ("drift", "cooldown_s"): "use drift.cooldown_rows (labelled rows, not seconds)",
    ("drift", "retrain_min_rows"): "moved to retrain.min_rows",
    ("drift", "refresh_after_samples"): "replaced by periodic retrains (retrain.trigger, retrain.every_rows)",
}


class ServingSpec(SpecModel):
    challenger_mode: Literal["shadow", "canary"] = Field(
        default="shadow",
        description="shadow: the challenger also scores every request, results to predictions.shadow; "
        "canary: it serves `canary_share` of requests, chosen by a stable hash of request_id.",
    )
    canary_share: float = Field(default=0.1, ge=0, le=1, description="Share of requests for a canary.")


class SliceSpec(SpecModel):
    input: str = Field(description="A feature (as applications send it) or a time part to segment by.")
    edges: list[float] | None = Field(
        default=None,
        min_length=1,
        description="Increasing bucket edges: a slice per bucket (required for numeric features).",
    )

    @field_validator("edges")
    @classmethod
    def _increasing(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError(f"{value} is not strictly increasing")
        return value


class SlicesSpec(SpecModel):
    """Segments of the traffic watched apart: quality per slice and the gaps between slices."""

    by: list[SliceSpec] = Field(default_factory=list, description="Inputs to segment by.")
    top: int = Field(
        default=20, ge=1, le=200, description="Values of an input that are slices of their own, by volume; "
        "the others share the slice `other`.",
    )  # fmt: skip
    window: int = Field(default=1_000, ge=50, description="Recent predictions (and labelled ones) per slice.")
    min_rows: int = Field(
        default=200, ge=1, description="Predictions (labelled, for accuracy) a slice needs in its window to "
        "count in the gaps.",
    )  # fmt: skip
    max_accuracy_gap: float | None = Field(
        default=0.15, gt=0, le=1, description="Raise `DriftDetected(kind=slice)` when the accuracy of two "
        "slices of an input differs by more than this (null: never).",
    )  # fmt: skip
    max_positive_rate_gap: float | None = Field(
        default=None, gt=0, le=1, description="... or their rate of the positive class (null: never).",
    )  # fmt: skip
    positive: int | str | None = Field(
        default=None, description="The positive class for positive rates (default: the last class)."
    )


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
    retrain: RetrainSpec = Field(default_factory=RetrainSpec)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    slices: SlicesSpec = Field(default_factory=SlicesSpec, description="Segments watched apart.")

    @model_validator(mode="before")
    @classmethod
    def _moved_settings(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for (section, key), hint in MOVED.items():
                if isinstance(data.get(section), dict) and key in data[section]:
                    raise SpecFieldError(f"{section}.{key}", f"no longer a setting: {hint}")
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not MODEL_NAME.match(value):
            raise ValueError(f"model name {value!r} must match {MODEL_NAME.pattern}")
        return value

    @model_validator(mode="after")
    def _distinct_inputs(self) -> ModelSpec:
        paths = [
            *(f"features[{i}]" for i in range(len(self.features))),
            *(f"aggregates[{i}]" for i in range(len(self.aggregates))),
            *(f"time_parts[{i}]" for i in range(len(self.time_parts))),
        ]
        names: dict[str, str] = {}
        columns: dict[str, str] = {}  # the encoder's column -> the input making it
        for path, feature in zip(paths, self.inputs, strict=True):
            if feature.name in names:
                raise SpecFieldError(
                    f"{path}.name", f"{feature.name!r} is not unique (also {names[feature.name]})"
                )
            names[feature.name] = path
            for column in feature.columns:
                if column in columns:
                    raise SpecFieldError(
                        f"{path}.name",
                        f"input {feature.name!r} makes column {column!r}, as {columns[column]} does",
                    )
                columns[column] = f"{path} ({feature.name!r})"
        numeric = {f.name for f in self.features if f.type == "numeric"}
        for i, aggregate in enumerate(self.aggregates):
            if aggregate.of is not None and aggregate.of not in numeric:
                raise SpecFieldError(f"aggregates[{i}].of", f"{aggregate.of!r} is not a numeric feature")
        if self.label.name in names:
            raise SpecFieldError(
                "label.name", f"{self.label.name!r} is also an input ({names[self.label.name]})"
            )
        return self

    @model_validator(mode="after")
    def _algorithms_build(self, info: ValidationInfo) -> ModelSpec:
        """Where the service builds them (the validation context's `build`, all by default), the
        spec's drift detectors and estimator are built with its parameters."""
        builds = (info.context or {}).get("build", BUILDS)
        if "detectors" in builds and (problem := self.drift.detector_problem()) is not None:
            raise SpecFieldError(f"drift.{problem.path}", problem.why)
        if "estimators" in builds and (problem := self.algorithm.build_problem()) is not None:
            raise SpecFieldError(f"algorithm.{problem.path}", problem.why)
        return self

    @model_validator(mode="after")
    def _slices_known(self) -> ModelSpec:
        kinds = {f.name: f.type for f in self.features} | {t.name: "time part" for t in self.time_parts}
        for i, by in enumerate(self.slices.by):
            kind = kinds.get(by.input)
            if kind is None:
                raise SpecFieldError(f"slices.by[{i}].input", f"{by.input!r} is not a feature or a time part")
            if kind == "numeric" and not by.edges:
                raise SpecFieldError(
                    f"slices.by[{i}].edges", f"numeric feature {by.input!r} needs bucket edges"
                )
            if kind == "categorical" and by.edges:
                raise SpecFieldError(
                    f"slices.by[{i}].edges", f"categorical feature {by.input!r} takes no edges"
                )
        if len({by.input for by in self.slices.by}) != len(self.slices.by):
            raise SpecFieldError("slices.by", "an input is named twice")
        positive = self.slices.positive
        if positive is not None and self.label_of(positive) is None:
            raise SpecFieldError(
                "slices.positive", f"{positive!r} is not one of the classes {self.label.classes}"
            )
        return self

    @model_validator(mode="after")
    def _windows_fit(self) -> ModelSpec:
        if self.retrain.window_rows > self.training.window_rows:
            raise SpecFieldError(
                "retrain.window_rows", f"{self.retrain.window_rows} is above training.window_rows "
                f"({self.training.window_rows})",
            )  # fmt: skip
        if self.retrain.window_rows < self.training.min_rows:
            raise SpecFieldError(
                "retrain.window_rows", f"{self.retrain.window_rows} is below training.min_rows "
                f"({self.training.min_rows})",
            )  # fmt: skip
        return self

    @property
    def estimate_floor(self) -> float | None:
        """The estimated accuracy the champion must not fall below: `drift.estimate.floor`, else the
        gate floor when the gate metric is accuracy."""
        if self.drift.estimate.floor is not None:
            return self.drift.estimate.floor
        return self.gate.floor if self.gate.metric == "accuracy" else None

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


_FRIENDLY = {"extra_forbidden": "unknown field", "missing": "required field missing"}


def _path(loc: tuple[int | str, ...], below: str = "") -> str:
    path = ""
    for part in (*loc, *([below] if below else [])):
        part = f"[{part}]" if isinstance(part, int) else str(part)
        path += part if not path or part.startswith("[") else f".{part}"
    return path or "(the spec)"


def describe(exc: ValidationError, most: int = 3) -> str:
    """A validation error as one line: `path: why` of the first `most` problems."""
    problems = []
    for error in exc.errors(include_url=False):
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, SpecFieldError):
            problem = f"{_path(error['loc'], cause.path)}: {cause.why}"
        else:
            why = _FRIENDLY.get(error["type"], error["msg"].removeprefix("Value error, "))
            if error["type"] == "string_type" and isinstance(error.get("input"), bool | int | float):
                why = f"{show(error['input'])} is not a string ({_QUOTE_IT})"
            problem = f"{_path(error['loc'])}: {why}"
        problems.append(" ".join(problem.split()))
    more = f" (and {len(problems) - most} more)" if len(problems) > most else ""
    return "; ".join(problems[:most]) + more


class SpecRefused(ValueError):
    """A spec file that cannot be used, and why (one line); the message names the file."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path, self.why = path, why


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (YAML would keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {show(key)} is given twice", key_node.start_mark
                    )
                seen.add(key)
            except TypeError:  # an unhashable key: the base loader words its error
                pass
        return super().construct_mapping(node, deep)


def load_spec(path: Path, build: frozenset[str] = BUILDS) -> ModelSpec:
    """Parse and validate one spec file (YAML, safe loader); raises `SpecRefused`, naming the file.
    `build`: which algorithms to build to check the spec's parameters (`BUILDS`)."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecRefused(path, f"cannot be read ({exc.strerror or exc})") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecRefused(path, f"is larger than {MAX_SPEC_BYTES} bytes")
    try:
        loader = _UniqueKeyLoader(raw)
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()  # type: ignore[no-untyped-call]
    except (yaml.YAMLError, RecursionError, ValueError) as exc:  # ValueError: an int of 5,000 digits
        raise SpecRefused(path, f"is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise SpecRefused(path, f"holds {type(data).__name__}, not a mapping of spec fields")
    try:
        return ModelSpec.model_validate(data, context={"build": build})
    except ValidationError as exc:
        raise SpecRefused(path, describe(exc)) from None
    except Exception as exc:  # a check that broke must not stop a service: the file is refused
        raise SpecRefused(
            path, f"could not be checked ({type(exc).__name__}: {' '.join(str(exc).split())})"
        ) from exc


@dataclass(frozen=True)
class SpecCatalog:
    """The valid specs of a directory by model name, and each refused file with why (one line)."""

    specs: dict[str, ModelSpec]
    refused: dict[Path, str]


def read_specs(directory: Path, build: frozenset[str] = BUILDS) -> SpecCatalog:
    """Every `*.yaml`/`*.yml` spec of a directory, each accepted or refused on its own. A model name
    declared in more than one file refuses all of them: no file order decides which one serves.
    `build`: as for `load_spec`."""
    parsed: dict[Path, ModelSpec] = {}
    refused: dict[Path, str] = {}
    for path in sorted({*directory.glob("*.yaml"), *directory.glob("*.yml")}):
        try:
            parsed[path] = load_spec(path, build)
        except SpecRefused as exc:
            refused[path] = exc.why
    files: dict[str, list[Path]] = {}
    for path, spec in parsed.items():
        files.setdefault(spec.name, []).append(path)
    specs: dict[str, ModelSpec] = {}
    for path, spec in parsed.items():
        if len(files[spec.name]) == 1:
            specs[spec.name] = spec
        else:
            others = ", ".join(str(p) for p in files[spec.name] if p != path)
            refused[path] = f"model {spec.name!r} is also declared in {others}; every one of them is refused"
    return SpecCatalog(specs=specs, refused=dict(sorted(refused.items())))


def load_specs(directory: Path, build: frozenset[str] = BUILDS) -> dict[str, ModelSpec]:
    """The valid specs of a directory by model name (`read_specs`); each refused file is logged at ERROR."""
    catalog = read_specs(directory, build)
    for path, why in catalog.refused.items():
        logger.error("model spec %s refused: %s", path, why)
    return catalog.specs
