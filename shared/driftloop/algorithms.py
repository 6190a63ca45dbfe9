"""The River drift detectors and scikit-learn estimators a spec can name: one table of each (the
monitor and training build from them), and the checks that a spec's parameters build them.

Imported by the spec's validators only in the services that build them (the monitor builds
detectors, training estimators, the CLI both): River and scikit-learn take about 1.7 s and
130 MB to import. Every other service checks parameters against `driftloop.parameters`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from functools import cache
from typing import Any

from driftloop.parameters import rule_problem
from driftloop.spec import show


@cache
def _detectors() -> dict[str, Any]:
    from river import drift  # the `detect` extra: the monitor (and the CLI)

    return {"adwin": drift.ADWIN, "page_hinkley": drift.PageHinkley, "kswin": drift.KSWIN}


@cache
def _estimators() -> dict[str, Any]:
    from sklearn.ensemble import (  # the `learn` extra: training (and the CLI)
        GradientBoostingClassifier,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )
    from sklearn.linear_model import LogisticRegression

    return {
        "logistic_regression": LogisticRegression,
        "random_forest": RandomForestClassifier,
        "gradient_boosting": GradientBoostingClassifier,
        "hist_gradient_boosting": HistGradientBoostingClassifier,
    }


def __getattr__(name: str) -> Any:
    """`DETECTORS` (River) and `ESTIMATORS` (scikit-learn): each table imports its library when it
    is first used, so a service that builds only one of them needs only that library."""
    if name == "DETECTORS":
        return _detectors()
    if name == "ESTIMATORS":
        return _estimators()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_PROBE = [0] * 60 + [1] * 60  # an error stream that shifts: the detectors test and fire on it


@cache
def detector_parameters(name: str) -> tuple[str, ...]:
    """The parameters of a River detector's constructor, in order."""
    return tuple(inspect.signature(_detectors()[name]).parameters)


def detector_problem(name: str, params: Mapping[str, Any]) -> tuple[str, str] | None:
    """(parameter, why) when River's detector `name` refuses `params` or fails on a few values
    (parameter "" when no single one is to blame); None when it builds and learns."""
    cls = _detectors()[name]
    if (problem := rule_problem(name, params)) is not None:
        return problem
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
    return tuple(sorted(_estimators()[name]().get_params()))


def unknown_estimator_parameter(name: str, key: str) -> str | None:
    """Why `key` is not a parameter of the estimator `name` (None: it is one)."""
    if key in estimator_parameters(name):
        return None
    accepted = ", ".join(estimator_parameters(name))
    return f"{_estimators()[name].__name__} has no parameter {key!r} (it has {accepted})"


def estimator_value_problem(name: str, key: str, value: Any) -> str | None:
    """Why the estimator `name` refuses `value` for its parameter `key` (None: it takes it). Values
    come from a checked spec field: finite numbers, not too many."""
    if (unknown := unknown_estimator_parameter(name, key)) is not None:
        return unknown
    try:
        _estimators()[name](**{key: value})._validate_params()
    except Exception as exc:  # InvalidParameterError, or whatever a constructor raises
        return " ".join(str(exc).split())
    return None
