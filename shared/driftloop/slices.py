"""Quality per segment of the traffic, and the gaps between segments (fairness), pure.

A spec's `slices` section names the inputs to segment by: categorical features (a slice per
value), numeric features cut at bucket edges, time parts (a slice per value). Per slice the monitor
keeps, over the newest predictions: volume, the rate of the positive class, the accuracy estimated
before labels, and once labels come the realised accuracy and its drop since the champion's first
full window. Across the slices of one input: the largest difference of accuracy and of positive
rate, and the ratio of the lowest positive rate to the highest (the "disparate impact" ratio).

Cardinality is bounded whatever the traffic: per input, the `top` values by volume are slices of
their own (a value that leaves the top has its slice dropped) and every other value shares the
slice `other`; volumes are counted with the
space-saving algorithm over at most `CAPACITY_PER_TOP * top` values, so a stream of 100,000 distinct
values holds a few hundred counters, never 100,000.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from driftloop.features import time_parts
from driftloop.rolling import RollingMean
from driftloop.spec import ModelSpec

OTHER = "other"  # the slice every value outside an input's top shares
MISSING = "missing"  # the slice of requests without the input
UNKNOWN = "unknown"  # the slice of a categorical feature's values outside its spec's categories
SPECIAL = frozenset({OTHER, MISSING, UNKNOWN})  # slices that are not a value of the input
CAPACITY_PER_TOP = 10  # counters kept per slice of an input's top
REFRESH = 500  # values counted between two refreshes of an input's top


def buckets(edges: Sequence[float]) -> list[str]:
    """The labels of the buckets `edges` cut the numbers into, lowest first.

    >>> buckets([2.5, 5.0])
    ['< 2.5', '2.5 .. 5', '>= 5']
    """
    inner = [f"{low:g} .. {high:g}" for low, high in itertools.pairwise(edges)]
    return [f"< {edges[0]:g}", *inner, f">= {edges[-1]:g}"]


class Slicer:
    """The value each slice input of a spec takes for a request: its features as sent (time parts
    from the request's time), bucketed where the spec gives edges, a category outside the spec's
    list `unknown`, an absent or unusable one `missing`. Pure: what a request is sliced by does not
    depend on the traffic before it (`SliceBook` maps values to slices).

    >>> spec = ModelSpec.model_validate({"name": "m", "features": [{"name": "x", "type": "numeric"},
    ...     {"name": "c", "type": "categorical", "categories": ["red", "blue"]}],
    ...     "label": {"classes": [0, 1]}, "algorithm": {"name": "logistic_regression"},
    ...     "slices": {"by": [{"input": "x", "edges": [0.5]}, {"input": "c"}]}})
    >>> slicer = Slicer(spec)
    >>> slicer({"x": 0.7, "c": "red"}, None), slicer({"x": "?", "c": "teal"}, None)
    ({'x': '>= 0.5', 'c': 'red'}, {'x': 'missing', 'c': 'unknown'})
    """

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        categories = {f.name: frozenset(f.categories or ()) for f in spec.features if f.type == "categorical"}
        # (input, its edges and their bucket labels, or its categories)
        self.inputs = [
            (by.input, by.edges, buckets(by.edges) if by.edges else None, categories.get(by.input))
            for by in spec.slices.by
        ]
        self.timed = bool({t.name for t in spec.time_parts} & {by.input for by in spec.slices.by})

    def __call__(self, features: Mapping[str, Any], at: datetime | None) -> dict[str, str]:
        parts = time_parts(self.spec, at) if at is not None and self.timed else {}
        out = {}
        for name, edges, labels, known in self.inputs:
            value = parts.get(name, features.get(name))
            if value is None or type(value) in _UNUSABLE:
                out[name] = MISSING
            elif labels is not None and edges is not None:  # a numeric input cut at its edges
                number = type(value) in (int, float) and math.isfinite(value)
                out[name] = labels[bisect.bisect_right(edges, value)] if number else MISSING
            else:
                if type(value) is float and value.is_integer():
                    value = int(value)  # a time part, or a category sent as a number
                text = value if type(value) is str else str(value)
                out[name] = UNKNOWN if known is not None and text not in known else text[:64]
        return out


_UNUSABLE = (bool, dict, list)


class TopValues:
    """The `top` values of one input by volume (space-saving counters, at most `capacity`); every
    other value is `OTHER`. The top is refreshed every `REFRESH` values counted, and at once while
    it has room.

    >>> top = TopValues(2)
    >>> [top.count(v) for v in "aab"], top.slice_of("c")
    (['a', 'a', 'b'], 'other')
    """

    def __init__(self, top: int, capacity: int | None = None) -> None:
        self.top = top
        self.capacity = capacity or CAPACITY_PER_TOP * top
        self.counts: dict[str, int] = {}
        self.kept: set[str] = set()
        self._since = 0
        self.refreshed = False

    def count(self, value: str) -> str:
        """Count one occurrence of `value`; the slice it belongs to now (`refreshed` says whether
        the top was just refreshed)."""
        counts = self.counts
        if value in counts:
            counts[value] += 1
        elif len(counts) < self.capacity:
            counts[value] = 1
        else:  # space-saving: the new value takes the smallest counter's place, and its count + 1
            smallest = min(counts, key=counts.__getitem__)
            counts[value] = counts.pop(smallest) + 1
        self._since += 1
        self.refreshed = (len(self.kept) < self.top and value not in self.kept) or self._since >= REFRESH
        if self.refreshed:
            self._refresh()
        return self.slice_of(value)

    def slice_of(self, value: str) -> str:
        return value if value in self.kept else OTHER

    def _refresh(self) -> None:
        self._since = 0
        self.kept = set(sorted(self.counts, key=lambda v: (-self.counts[v], v))[: self.top])


class SliceStats:
    """One slice's rolling figures over its newest `window` predictions (and labelled ones)."""

    def __init__(self, window: int) -> None:
        self.volume = 0
        self.positive = RollingMean(window)
        self.chance = RollingMean(window)  # the chance each served prediction is right (calibrated)
        self.correct = RollingMean(window)
        self.baseline: float | None = None  # accuracy over the first full labelled window

    def served(self, positive: bool, chance: float | None) -> None:
        self.volume += 1
        self.positive.append(float(positive))
        if chance is not None:
            self.chance.append(chance)

    def labelled(self, correct: bool) -> None:
        self.correct.append(float(correct))
        if self.baseline is None and self.correct.full:
            self.baseline = self.correct.mean

    @property
    def accuracy(self) -> float | None:
        return self.correct.mean if len(self.correct) else None

    @property
    def estimated(self) -> float | None:
        return self.chance.mean if len(self.chance) else None

    @property
    def positive_rate(self) -> float | None:
        return self.positive.mean if len(self.positive) else None

    @property
    def drop(self) -> float | None:
        """Accuracy lost since the slice's first full labelled window (its drift score)."""
        return None if self.baseline is None else self.baseline - self.correct.mean


@dataclass(frozen=True)
class Gap:
    """How far apart the slices of one input are (among those with `min_rows` in their window)."""

    accuracy_gap: float | None  # highest minus lowest realised accuracy
    worst: str | None  # the slice with the lowest accuracy
    positive_rate_gap: float | None  # highest minus lowest positive rate
    positive_rate_ratio: float | None  # lowest over highest positive rate
    lowest_positive: str | None  # the slice with the lowest positive rate


class SliceBook:
    """Every slice of one champion: which slice a request falls in, per slice the rolling figures,
    per input the gaps, and whether a gap is past the spec's limits (with hysteresis: a flagged
    input is cleared once its gaps are back under 80% of the limits)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        settings = spec.slices
        self.positive = str(settings.positive if settings.positive is not None else spec.label.classes[-1])
        self.tops = {by.input: TopValues(settings.top) for by in settings.by}
        self.stats: dict[tuple[str, str], SliceStats] = {}
        self.flagged: set[str] = set()
        self.pruned: list[tuple[str, str]] = []  # slices dropped from a top, for their series to go

    def _stats(self, key: tuple[str, str]) -> SliceStats:
        stats = self.stats.get(key)
        if stats is None:
            stats = self.stats[key] = SliceStats(self.spec.slices.window)
        return stats

    def served(
        self, values: Mapping[str, str], predicted: str, chance: float | None
    ) -> list[tuple[str, str]]:
        """A served prediction of a request with these slice values; the slices it counted in."""
        keys = []
        for name, top in self.tops.items():
            keys.append((name, top.count(values.get(name, MISSING))))
            if top.refreshed:
                self._prune(name, top)
        for key in keys:
            self._stats(key).served(predicted == self.positive, chance)
        return keys

    def _prune(self, name: str, top: TopValues) -> None:
        """Forget the slices of `name` whose value left its top (their traffic is `other`'s now)."""
        gone = [k for k in self.stats if k[0] == name and k[1] not in top.kept and k[1] not in SPECIAL]
        for key in gone:
            del self.stats[key]
        self.pruned += gone

    def labelled(self, values: Mapping[str, str], correct: bool) -> list[tuple[str, str]]:
        """A labelled prediction (its request's slice values): the slices whose accuracy moved."""
        keys = [(name, top.slice_of(values.get(name, MISSING))) for name, top in self.tops.items()]
        for key in keys:
            self._stats(key).labelled(correct)
        return keys

    def gap(self, name: str) -> Gap:
        """The gaps between the slices of input `name`."""
        min_rows = self.spec.slices.min_rows
        slices = [(value, stats) for (input_, value), stats in self.stats.items() if input_ == name]
        accuracy = {v: s.correct.mean for v, s in slices if len(s.correct) >= min_rows}
        positive = {v: s.positive.mean for v, s in slices if len(s.positive) >= min_rows}
        worst = min(accuracy, key=accuracy.__getitem__) if len(accuracy) > 1 else None
        lowest = min(positive, key=positive.__getitem__) if len(positive) > 1 else None
        high = max(positive.values()) if lowest is not None else None
        return Gap(
            accuracy_gap=max(accuracy.values()) - accuracy[worst] if worst is not None else None,
            worst=worst,
            positive_rate_gap=None if lowest is None or high is None else high - positive[lowest],
            positive_rate_ratio=None if lowest is None or not high else positive[lowest] / high,
            lowest_positive=lowest,
        )

    def flags(self, names: Iterable[str]) -> tuple[set[str], list[tuple[str, Gap]]]:
        """The inputs flagged once the gaps of `names` are judged, and those newly flagged with
        their gaps. Nothing changes until the caller sets `flagged` (once what it sends is sent)."""
        settings = self.spec.slices
        flagged, new = set(self.flagged), []
        for name in names:
            gap = self.gap(name)
            if name in flagged:
                if not _over(gap, settings.max_accuracy_gap, settings.max_positive_rate_gap, 0.8):
                    flagged.discard(name)
            elif _over(gap, settings.max_accuracy_gap, settings.max_positive_rate_gap, 1.0):
                flagged.add(name)
                new.append((name, gap))
        return flagged, new


def _over(gap: Gap, accuracy: float | None, positive: float | None, share: float) -> bool:
    return (
        accuracy is not None and gap.accuracy_gap is not None and gap.accuracy_gap > share * accuracy
    ) or (
        positive is not None
        and gap.positive_rate_gap is not None
        and gap.positive_rate_gap > share * positive
    )
