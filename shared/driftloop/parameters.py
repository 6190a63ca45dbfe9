"""What a spec may set on each drift detector, and what each value may be: checked without importing
River (the services that do not build detectors check specs with this table alone; the monitor
and the CLI also build each detector, `driftloop.algorithms`). A unit test holds the table to
River's real constructors."""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError

DETECTOR_CLASSES = {"adwin": "ADWIN", "page_hinkley": "PageHinkley", "kswin": "KSWIN"}
# each River detector's constructor parameters, in order (held equal to River's by a unit test)
DETECTOR_SIGNATURES = {
    "adwin": ("delta", "clock", "max_buckets", "min_window_length", "grace_period"),
    "page_hinkley": ("min_instances", "delta", "threshold", "alpha", "mode"),
    "kswin": ("alpha", "window_size", "stat_size", "seed", "window"),
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


def rule_problem(name: str, params: Mapping[str, Any]) -> tuple[str, str] | None:
    """(parameter, why) when `params` break the table's rules for detector `name`; None when they
    keep them.

    >>> rule_problem("adwin", {"threshold": 50})[1]
    "ADWIN has no parameter 'threshold' (it has delta, clock, max_buckets, min_window_length, grace_period)"
    >>> rule_problem("adwin", {"delta": -0.1})[1]
    'input should be greater than 0, got -0.1'
    """
    rules, accepted, cls = DETECTOR_PARAMETERS[name], DETECTOR_SIGNATURES[name], DETECTOR_CLASSES[name]
    for key, value in params.items():
        if key not in accepted:
            return key, f"{cls} has no parameter {key!r} (it has {', '.join(accepted)})"
        if key not in rules:
            return key, f"cannot be set in a spec (settable: {', '.join(rules)})"
        try:
            rules[key].validate_python(value)
        except ValidationError as exc:
            return key, f"{exc.errors()[0]['msg'].lower()}, got {reprlib.repr(value)}"
    if name == "kswin":  # River's defaults: window_size 100, stat_size 30
        window_size, stat_size = params.get("window_size", 100), params.get("stat_size", 30)
        if 2 * stat_size > window_size:  # it draws stat_size samples from the first window - stat_size
            return "", f"KSWIN needs window_size ({window_size}) at least twice stat_size ({stat_size})"
    return None
