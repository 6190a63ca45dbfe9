"""A mean over the newest N values, updated in constant time (the monitor's quality windows and the
policy's floor see every labelled row)."""

from __future__ import annotations

import math
from collections import deque


class RollingMean:
    """The mean of the newest `size` values appended; NaN while empty. The running sum is added to
    and taken from as values come and go, and summed afresh once per `size` values so rounding
    cannot build up.

    >>> window = RollingMean(3)
    >>> for value in (1, 0, 1, 1):
    ...     window.append(value)
    >>> window.mean, len(window), window.full
    (0.6666666666666666, 3, True)
    """

    def __init__(self, size: int) -> None:
        self.values: deque[float] = deque(maxlen=size)
        self.total = 0.0
        self._since_exact = 0

    def append(self, value: float) -> None:
        values = self.values
        if len(values) == values.maxlen:
            self.total -= values[0]
        values.append(value)
        self.total += value
        self._since_exact += 1
        if self._since_exact >= (values.maxlen or 1):
            self.total, self._since_exact = math.fsum(values), 0

    @property
    def mean(self) -> float:
        return self.total / len(self.values) if self.values else math.nan

    @property
    def full(self) -> bool:
        return len(self.values) == self.values.maxlen

    def __len__(self) -> int:
        return len(self.values)
