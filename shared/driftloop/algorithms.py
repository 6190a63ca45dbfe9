"""The River drift detectors and scikit-learn estimators a spec can name: one table of each (the
monitor and training build from them), and the checks that a spec's parameters build them.

Imported by the spec's validators only when a spec is checked: River and scikit-learn take about
1.5 s to import.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError
from river import drift
from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression

from driftloop.spec import show

DETECTORS: dict[str, Any] = {
    "adwin": drift.ADWIN,
    "page_hinkley": drift.PageHinkley,
    "kswin": drift.KSWIN,
}
ESTIMATORS: dict[str, Any] = {
    "logistic_regression": LogisticRegression,
    "random_forest": RandomForestClassifier,
    "gradient_boosting": GradientBoostingClassifier,
    "hist_gradient_boosting": HistGradientBoostingClassifier,
}

# River checks few of its parameters: a negative ADWIN delta or a KSWIN seed "x" are taken, and
# an ADWIN clock of 0 panics on the first update. What each detector parameter may be:
_PROBABILITY = TypeAdapter(Annotated[float, Field(strict=True, gt=0, lt=1)])
_POSITIVE = TypeAdapter(Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)])
_NON_NEGATIVE = TypeAdapter(Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)])
_FORGETTING = TypeAdapter(Annotated[float, Field(strict=True, gt=0, le=1)])
_COUNT = TypeAdapter(Annotated[int, Field(strict=True, ge=1, lt=2**31)])
_NON_NEGATIVE_COUNT = TypeAdapter(Annotated[int, Field(strict=True, ge=0, lt=2**31)])
_SEED = TypeAdapter(Annotated[int, Field(strict=True, ge=0, lt=2**32)] | None)
_MODE = TypeAdapter(Literal["up", "down", "both"])
DETECTOR_PARAMETERS: dict[str, dict[str, TypeAdapter[Any]]] = {
    "adwin": {
        "delta": _PROBABILITY,
        "clock": _COUNT,
        "max_buckets": _COUNT,
        "min_window_length": _COUNT,
        "grace_period": _NON_NEGATIVE_COUNT,
    },
    "page_hinkley": {
        "min_instances": _NON_NEGATIVE_COUNT,
        "delta": _NON_NEGATIVE,
        "threshold": _POSITIVE,
        "alpha": _FORGETTING,
        "mode": _MODE,
    },
    "kswin": {"alpha": _PROBABILITY, "window_size": _COUNT, "stat_size": _COUNT, "seed": _SEED},
}
_PROBE = [0] * 60 + [1] * 60  # an error stream that shifts: the detectors test and fire on it


@cache
def detector_parameters(name: str) -> tuple[str, ...]:
    """The parameters of a River detector's constructor, in order."""
    return tuple(inspect.signature(DETECTORS[name]).parameters)


def detector_problem(name: str, params: Mapping[str, Any]) -> tuple[str, str] | None:
    """(parameter, why) when River's detector `name` refuses `params` or fails on a few values
    (parameter "" when no single one is to blame); None when it builds and learns."""
    accepted, rules = detector_parameters(name), DETECTOR_PARAMETERS[name]
    cls = DETECTORS[name]
    for key, value in params.items():
        if key not in accepted:
            return key, f"{cls.__name__} has no parameter {key!r} (it has {', '.join(accepted)})"
        if key not in rules:
            return key, f"cannot be set in a spec (settable: {', '.join(rules)})"
        try:
            rules[key].validate_python(value)
        except ValidationError as exc:
            return key, f"{exc.errors()[0]['msg'].lower()}, got {show(value)}"
    try:
        detector = cls(**params)
        for error in _PROBE:
            detector.update(error)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # River's Rust detectors panic: pyo3's PanicException is a BaseException
        return "", f"{cls.__name__}({show(dict(params))}) fails: {' '.join(str(exc).split())}"
    return None


@cache
def estimator_parameters(name: str) -> tuple[str, ...]:
    """The parameters of a fresh scikit-learn estimator (`get_params`), sorted."""
    return tuple(sorted(ESTIMATORS[name]().get_params()))


def unknown_estimator_parameter(name: str, key: str) -> str | None:
    """Why `key` is not a parameter of the estimator `name` (None: it is one)."""
    if key in estimator_parameters(name):
        return None
    accepted = ", ".join(estimator_parameters(name))
    return f"{ESTIMATORS[name].__name__} has no parameter {key!r} (it has {accepted})"


def estimator_value_problem(name: str, key: str, value: Any) -> str | None:
    """Why the estimator `name` refuses `value` for its parameter `key` (None: it takes it). Values
    come from a checked spec field: finite numbers, not too many."""
    if (unknown := unknown_estimator_parameter(name, key)) is not None:
        return unknown
    try:
        ESTIMATORS[name](**{key: value})._validate_params()
    except Exception as exc:  # InvalidParameterError, or whatever a constructor raises
        return " ".join(str(exc).split())
    return None
