"""Per-entity streaming aggregates: the one computation behind training rows and serving rows.

An entity's `History` keeps just enough of its recent events for the spec's aggregates. A training
row for an event at time T gets `values(T)`: only events strictly before T count, so nothing from
the event itself or its future leaks in (point-in-time correct). Serving gets `values(now)` from
the same history, read from the online store. Adding an event twice (a redelivery) changes nothing.

>>> from driftloop.spec import ModelSpec
>>> spec = ModelSpec.model_validate({
...     "name": "m", "features": [{"name": "amount", "type": "numeric"}],
...     "aggregates": [{"name": "mean_2", "stat": "mean", "of": "amount", "last_n": 2},
...                    {"name": "n_60s", "stat": "count", "window_s": 60}],
...     "label": {"classes": [0, 1]}, "algorithm": {"name": "logistic_regression"}})
>>> history = History(spec)
>>> for t, amount in [(0, 10.0), (30, 20.0), (50, 60.0)]:
...     history.add(t, f"e{t}", {"amount": amount})
>>> history.values(at=50)  # as of the third event: the first two only
{'mean_2': 15.0, 'n_60s': 2.0}
>>> history.values(at=100)  # later: the last two, and what is left of the minute
{'mean_2': 40.0, 'n_60s': 1.0}
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from typing import Any

import orjson

from driftloop.spec import AggregateSpec, ModelSpec

Event = tuple[float, str, dict[str, float]]  # (event time in epoch seconds, event id, aggregated values)


def _stat(aggregate: AggregateSpec, events: list[Event]) -> float:
    if aggregate.stat == "count":
        return float(len(events))
    if not events:
        return 0.0  # no history yet: documented as 0, the same in training and serving
    values = [e[2][aggregate.of] for e in events if aggregate.of in e[2]]  # type: ignore[index]
    if not values:
        return 0.0
    if aggregate.stat == "mean":
        return sum(values) / len(values)
    if aggregate.stat == "sum":
        return float(sum(values))
    if aggregate.stat == "min":
        return min(values)
    if aggregate.stat == "max":
        return max(values)
    return values[-1]  # last


class History:
    """An entity's recent events, enough for the spec's aggregates (JSON in the online store)."""

    def __init__(self, spec: ModelSpec, events: list[Event] | None = None) -> None:
        self.spec = spec
        self.events: list[Event] = sorted(events or [])
        self.ids = {e[1] for e in self.events}
        self.of = sorted({a.of for a in spec.aggregates if a.of is not None})
        self.keep_n = max([a.last_n or 1 for a in spec.aggregates], default=0)
        self.keep_s = max([a.window_s or 0.0 for a in spec.aggregates], default=0.0)

    def values(self, at: float) -> dict[str, float]:
        """Every aggregate as of time `at` (epoch seconds), from the events strictly before it."""
        before = self.events[: bisect.bisect_left(self.events, (at,))]
        out = {}
        for aggregate in self.spec.aggregates:
            if aggregate.window_s is not None:
                start = bisect.bisect_right(before, (at - aggregate.window_s, "\uffff"))
                chosen = before[start:]
            else:
                chosen = before[-(aggregate.last_n or 1) :]
            out[aggregate.name] = _stat(aggregate, chosen)
        return out

    def add(self, at: float, event_id: str, features: Mapping[str, Any]) -> None:
        """Remember an event (once per id), then forget what no aggregate can need any more."""
        if event_id in self.ids or not self.spec.aggregates:
            return
        values = {name: float(features[name]) for name in self.of if name in features}
        bisect.insort(self.events, (at, event_id, values))
        self.ids.add(event_id)
        newest = self.events[-1][0]
        keep_from = max(0, len(self.events) - self.keep_n)
        while keep_from > 0 and newest - self.events[keep_from - 1][0] < self.keep_s:
            keep_from -= 1
        if keep_from:
            self.ids.difference_update(e[1] for e in self.events[:keep_from])
            del self.events[:keep_from]

    def dumps(self) -> bytes:
        return orjson.dumps(self.events)

    @classmethod
    def loads(cls, spec: ModelSpec, raw: bytes | str | None) -> History:
        """A history read back from the online store (empty when absent or unreadable)."""
        if not raw:
            return cls(spec)
        try:
            return cls(spec, [(float(t), str(i), dict(v)) for t, i, v in orjson.loads(raw)])
        except (orjson.JSONDecodeError, TypeError, ValueError):
            return cls(spec)
