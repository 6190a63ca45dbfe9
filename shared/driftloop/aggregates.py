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
_NUMBERS = frozenset({float, int})


def _stat(aggregate: AggregateSpec, columns: Mapping[str, list[float]], start: int, end: int) -> float:
    if aggregate.stat == "count":
        return float(end - start)
    if end <= start:
        return 0.0  # no history yet: documented as 0, the same in training and serving
    assert aggregate.of is not None
    values = columns[aggregate.of]
    if aggregate.stat == "last":
        return float(values[end - 1])
    chosen = values[start:end]
    if aggregate.stat == "mean":
        return sum(chosen) / len(chosen)
    if aggregate.stat == "sum":
        return float(sum(chosen))
    if aggregate.stat == "min":
        return float(min(chosen))
    return float(max(chosen))


class History:
    """An entity's recent events, enough for the spec's aggregates, kept as columns in time order
    (then id order): times, ids and the aggregated features' values. JSON in the online store."""

    def __init__(self, spec: ModelSpec, events: list[Event] | None = None) -> None:
        self.spec = spec
        self.of = sorted({a.of for a in spec.aggregates if a.of is not None})
        self.keep_n = max([a.last_n or 1 for a in spec.aggregates], default=0)
        self.keep_s = max([a.window_s or 0.0 for a in spec.aggregates], default=0.0)
        ordered = sorted(events or [])
        self.times: list[float] = [float(t) for t, _, _ in ordered]
        self.ids: list[str] = [i for _, i, _ in ordered]
        self.columns: dict[str, list[float]] = {name: [v[name] for _, _, v in ordered] for name in self.of}

    @property
    def events(self) -> list[Event]:
        """The events held, oldest first."""
        return [
            (t, i, {name: self.columns[name][k] for name in self.of})
            for k, (t, i) in enumerate(zip(self.times, self.ids, strict=True))
        ]

    def values(self, at: float) -> dict[str, float]:
        """Every aggregate as of time `at` (epoch seconds), from the events strictly before it."""
        end = bisect.bisect_left(self.times, at)
        out = {}
        for aggregate in self.spec.aggregates:
            if aggregate.window_s is not None:
                start = bisect.bisect_right(self.times, at - aggregate.window_s, 0, end)
            else:
                start = max(0, end - (aggregate.last_n or 1))
            out[aggregate.name] = _stat(aggregate, self.columns, start, end)
        return out

    def add(self, at: float, event_id: str, features: Mapping[str, Any]) -> None:
        """Remember an event (once per id), then forget what no aggregate can need any more."""
        if not self.spec.aggregates:
            return
        if not self.times or at > self.times[-1]:  # the usual case: newer than all held
            self.times.append(float(at))
            self.ids.append(event_id)
            for name in self.of:
                self.columns[name].append(float(features[name]))
        else:
            same_from, same_to = bisect.bisect_left(self.times, at), bisect.bisect_right(self.times, at)
            k = same_from + bisect.bisect_left(self.ids[same_from:same_to], event_id)
            if k < same_to and self.ids[k] == event_id:
                return  # seen: a redelivery
            self.times.insert(k, float(at))
            self.ids.insert(k, event_id)
            for name in self.of:
                self.columns[name].insert(k, float(features[name]))
        newest = self.times[-1]
        keep_from = min(
            max(0, len(self.times) - self.keep_n), bisect.bisect_right(self.times, newest - self.keep_s)
        )
        if keep_from:
            del self.times[:keep_from], self.ids[:keep_from]
            for column in self.columns.values():
                del column[:keep_from]

    def dumps(self) -> bytes:
        return orjson.dumps({"t": self.times, "id": self.ids, "v": self.columns})

    @classmethod
    def loads(cls, spec: ModelSpec, raw: bytes | str | None) -> History:
        """A history read back from the online store (empty when absent or unreadable)."""
        history = cls(spec)
        if not raw:
            return history
        try:
            data = orjson.loads(raw)
            times, ids, columns = data["t"], data["id"], data["v"]
            n = len(times)
            if (
                type(times) is list
                and type(ids) is list
                and len(ids) == n
                and set(map(type, times)) <= _NUMBERS
                and set(map(type, ids)) <= {str}
                and all(
                    type(columns.get(name)) is list
                    and len(columns[name]) == n
                    and set(map(type, columns[name])) <= _NUMBERS
                    for name in history.of
                )
            ):
                history.times, history.ids = times, ids
                history.columns = {name: columns[name] for name in history.of}
        except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError):
            pass
        return history
