"""Per-entity streaming aggregates: the one computation behind training rows and serving rows.

An entity's `History` keeps just enough of its recent events for the spec's aggregates. A training
row for an event at time T gets `values(T)`: only events strictly before T count, so nothing from
the event itself or its future leaks in (point-in-time correct). Serving gets `values(now)` from
the same history, read from the online store. Adding an event twice (a redelivery) changes nothing.

In the online store a history is one hash field per event (`h:<event id>` → `[time, {values}]`),
so a batch writes only what it added and deletes only what it let go (`changes`), never the whole
history: with a long window, rewriting it would cost the length of the window per event.

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

from driftloop.spec import ModelSpec

Event = tuple[float, str, dict[str, float]]  # (event time in epoch seconds, event id, aggregated values)
_NUMBERS = frozenset({float, int})
Changes = tuple[dict[str, str], list[str]]  # online-store hash fields to set, to delete
HISTORY_PREFIX = "h:"  # an event's field in the entity's online-store hash
_PREFIX_BYTES = HISTORY_PREFIX.encode()


class History:
    """An entity's recent events, enough for the spec's aggregates, kept as columns in time order
    (then id order): times, ids and the aggregated features' values. Remembers what changed since
    the last `changes()`, for the online store."""

    def __init__(self, spec: ModelSpec, events: list[Event] | None = None) -> None:
        self.spec = spec
        self.of = sorted({a.of for a in spec.aggregates if a.of is not None})
        self.keep_n = max([a.last_n or 1 for a in spec.aggregates], default=0)
        self.keep_s = max([a.window_s or 0.0 for a in spec.aggregates], default=0.0)
        self._plan = [(a.stat, a.window_s, a.last_n or 1, a.of or "") for a in spec.aggregates]
        ordered = sorted(events or [])
        self.times: list[float] = [float(t) for t, _, _ in ordered]
        self.ids: list[str] = [i for _, i, _ in ordered]
        self.columns: dict[str, list[float]] = {name: [v[name] for _, _, v in ordered] for name in self.of}
        self._added: dict[str, tuple[float, dict[str, float]]] = {}  # since the last `changes()`
        self._removed: set[str] = set()  # fields to delete
        self._oldest_added: float | None = None  # time of the oldest event added since then

    @property
    def events(self) -> list[Event]:
        """The events held, oldest first."""
        return [
            (t, i, {name: self.columns[name][k] for name in self.of})
            for k, (t, i) in enumerate(zip(self.times, self.ids, strict=True))
        ]

    def values(self, at: float) -> dict[str, float]:
        """Every aggregate by name as of time `at` (epoch seconds), from the events strictly before it."""
        return dict(zip([a.name for a in self.spec.aggregates], self.vector(at), strict=True))

    def vector(self, at: float) -> list[float]:
        """`values(at)` in the spec's order."""
        times, columns = self.times, self.columns
        end = bisect.bisect_left(times, at)
        out = []
        for stat, window_s, last_n, of in self._plan:
            if window_s is not None:
                start = bisect.bisect_right(times, at - window_s, 0, end)
            else:
                start = end - last_n if end > last_n else 0
            if stat == "count":
                out.append(float(end - start))
            elif end <= start:
                out.append(0.0)  # no history yet: documented as 0, the same in training and serving
            elif stat == "last":
                out.append(columns[of][end - 1])
            elif stat == "mean":
                out.append(sum(columns[of][start:end]) / (end - start))
            elif stat == "sum":
                out.append(float(sum(columns[of][start:end])))
            elif stat == "min":
                out.append(min(columns[of][start:end]))
            else:
                out.append(max(columns[of][start:end]))
        return out

    def add(self, at: float, event_id: str, features: Mapping[str, Any]) -> None:
        """Remember an event (once per id), then forget what no aggregate can need any more."""
        if not self.spec.aggregates:
            return
        values = {name: float(features[name]) for name in self.of}
        if not self.times or at > self.times[-1]:  # the usual case: newer than all held
            k = len(self.times)
        else:
            same_from, same_to = bisect.bisect_left(self.times, at), bisect.bisect_right(self.times, at)
            k = bisect.bisect_left(self.ids, event_id, same_from, same_to)  # same time: by id
            if k < same_to and self.ids[k] == event_id:
                return  # seen: a redelivery
        self.times.insert(k, float(at))
        self.ids.insert(k, event_id)
        for name in self.of:
            self.columns[name].insert(k, values[name])
        self._added[event_id] = (float(at), values)
        if self._removed:
            self._removed.discard(HISTORY_PREFIX + event_id)
        self._oldest_added = at if self._oldest_added is None else min(self._oldest_added, at)
        if len(self.times) > self.keep_n and self.times[0] <= self._oldest_added - self.keep_s:
            self._trim(self._oldest_added)

    def _trim(self, oldest: float) -> None:
        """Forget what no aggregate of an event at `oldest` or later can need: events older than
        every window before it that are not among the `keep_n` before it. Anchored on the oldest
        event added since the last `changes()` (the batch being handled), not the newest, so that
        if the batch comes again (a crash after its store write) its events find what they found
        the first time."""
        keep_from = min(
            max(0, bisect.bisect_left(self.times, oldest) - self.keep_n),
            bisect.bisect_right(self.times, oldest - self.keep_s),
        )
        if keep_from:
            for event_id in self.ids[:keep_from]:
                if self._added.pop(event_id, None) is None:
                    self._removed.add(HISTORY_PREFIX + event_id)
            del self.times[:keep_from], self.ids[:keep_from]
            for column in self.columns.values():
                del column[:keep_from]

    def changes(self) -> Changes:
        """The online-store hash fields to set and to delete since the last call (then forgotten)."""
        added = {HISTORY_PREFIX + k: _value(t, v) for k, (t, v) in self._added.items()}
        removed = sorted(self._removed)
        self._added, self._removed, self._oldest_added = {}, set(), None
        return added, removed

    def fields(self) -> dict[str, str]:
        """Every event held, as online-store hash fields."""
        return {HISTORY_PREFIX + i: _value(t, v) for t, i, v in self.events}

    @classmethod
    def from_fields(cls, spec: ModelSpec, fields: Mapping[bytes, bytes]) -> History:
        """A history read back from an entity's online-store hash: its `h:` fields (any other
        field is not history; an unreadable one is skipped, and deleted with the next changes)."""
        history = cls(spec)
        events: list[Event] = []
        for raw_field, raw in fields.items():
            if not raw_field.startswith(_PREFIX_BYTES):
                continue
            try:
                field = raw_field.decode()
            except UnicodeDecodeError:
                continue  # not a field driftloop writes
            event = _event(field[len(HISTORY_PREFIX) :], raw, history.of)
            if event is None:
                history._removed.add(field)
            else:
                events.append(event)
        events.sort(key=lambda e: (e[0], e[1]))
        history.times = [t for t, _, _ in events]
        history.ids = [i for _, i, _ in events]
        history.columns = {name: [v[name] for _, _, v in events] for name in history.of}
        return history  # not trimmed here: the next event added trims what it can


def _value(at: float, values: dict[str, float]) -> str:
    return orjson.dumps([at, values]).decode()


def _event(event_id: str, raw: bytes, of: list[str]) -> Event | None:
    """One stored event (time, id, values), or None when it is not readable as one."""
    try:
        data = orjson.loads(raw)
        at, values = data
        if type(at) not in _NUMBERS or type(values) is not dict:
            return None
        if not all(type(values.get(name)) in _NUMBERS for name in of):
            return None
        return float(at), event_id, {name: float(values[name]) for name in of}
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return None
