"""Entity histories kept in the feature process between batches.

Events are keyed by entity, so the feature process owning a partition is the only writer of its
entities' histories: it can keep them in memory and read Redis only for entities it has not seen.
Bounded (least recently used out), an entry idle longer than the online TTL is read again (Redis
may have expired it), and everything is dropped when partitions change hands or a batch comes
again (`reset`): then Redis is the truth again.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from driftloop.aggregates import History

Key = tuple[str, str]  # (model, entity)


class HistoryCache:
    def __init__(self, max_entities: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entities = max_entities
        self.ttl_s = ttl_s
        self.clock = clock
        self._items: OrderedDict[Key, tuple[History, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Key) -> History | None:
        item = self._items.get(key)
        if item is None:
            return None
        history, touched = item
        if self.clock() - touched > self.ttl_s:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return history

    def put(self, items: Iterable[tuple[Key, History]]) -> None:
        now = self.clock()
        for key, history in items:
            self._items[key] = (history, now)
            self._items.move_to_end(key)
        while len(self._items) > self.max_entities:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()
