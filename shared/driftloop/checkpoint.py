"""What a stream loop holds between handling a batch and committing it, in one object.

A loop (`driftloop.fastpath.FastPath`) handles batch N+1 while batch N's outputs wait for their
acknowledgement; a batch that fails comes again (a rewind), or in parts (the search for a bad
record). A handler that must know about batches not yet committed asks its loop's checkpoint
instead of keeping state of its own:

- **claims**: keys a batch took (ingest: the event ids it published, before the offline store has
  them). A key stays `claimed` until that batch commits; a rewind drops every claim, since those
  batches come again.
- **memos**: what learning from a key gave (the monitor: what a join taught the detectors, and what
  it sends). A memo is `recall`ed until a batch holding it commits, across rewinds, so a batch
  handled again sends the same outputs and teaches once; its `Tally` is applied at the first commit
  of a batch holding it. At most `memo_limit` memos are kept (those of revoked partitions wait for
  a batch that never comes): the oldest go first.
- **effects**: the effect each batch runs alongside its send (the feature service's online-store
  write). `await settled_effects()` returns once those of the batches handled before have finished,
  so a read sees every earlier write.
- **rewind listeners** (`on_rewind`): told when records may come again or partitions change hands
  (the feature service drops its history cache).

The loop drives it: `begin` before a batch is handled (what the handler claims, keeps or recalls
from then on belongs to that batch), `committed` after its offsets are committed, `rewound` when
uncommitted batches come again.

>>> checkpoint = Checkpoint()
>>> first = checkpoint.begin()
>>> checkpoint.claim(["e1"])
>>> second = checkpoint.begin()
>>> checkpoint.claimed("e1")
True
>>> checkpoint.committed(first)
>>> checkpoint.claimed("e1")
False
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from driftloop.metrics import Tally


@dataclass
class Memo:
    """What learning from some keys gave (`value`), and its metric changes (applied once)."""

    value: Any
    tally: Tally | None = None
    committed: bool = False  # a batch holding it committed: its outputs are out, its tally applied


class Checkpoint:
    """Cross-batch state of one stream loop's handler (module docstring)."""

    def __init__(self, memo_limit: int = 200_000) -> None:
        self.memo_limit = memo_limit
        self._batch = 0  # the batch being handled
        self._claims: dict[Hashable, int] = {}  # key -> the batch that claimed it
        self._claimed_by: dict[int, list[Hashable]] = {}  # batch -> the keys it claimed
        self._memos: dict[Hashable, Memo] = {}  # in the order they were kept
        self._holding: dict[int, list[Hashable]] = {}  # batch -> the memo keys it kept or recalled
        self._effects: set[asyncio.Future[Any]] = set()
        self._listeners: list[Callable[[], None]] = []

    # ---------------------------------------------------------------- what handlers ask

    def claim(self, keys: Iterable[Hashable]) -> None:
        """The batch being handled takes `keys` until it commits."""
        keys = list(keys)
        self._claims.update(dict.fromkeys(keys, self._batch))
        self._claimed_by.setdefault(self._batch, []).extend(keys)

    def claimed(self, key: Hashable) -> bool:
        """Whether a batch not yet committed took `key`."""
        return key in self._claims

    def keep(self, keys: Iterable[Hashable], value: Any, tally: Tally | None = None) -> Memo:
        """Remember what learning from `keys` gave (one memo for them all), held by this batch."""
        memo = Memo(value, tally)
        held = self._holding.setdefault(self._batch, [])
        for key in keys:
            self._memos[key] = memo
            held.append(key)
        return memo

    def recall(self, key: Hashable) -> Memo | None:
        """What was kept for `key` by a batch not yet committed (now held by this one too)."""
        memo = self._memos.get(key)
        if memo is not None:
            self._holding.setdefault(self._batch, []).append(key)
        return memo

    @property
    def memos(self) -> int:
        """How many keys have a memo."""
        return len(self._memos)

    async def settled_effects(self) -> None:
        """Wait until the effects of earlier batches have finished (whether they failed: a failure
        fails its own batch, which the loop brings back)."""
        if self._effects:
            await asyncio.wait(set(self._effects))

    def on_rewind(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever uncommitted batches come again or partitions change hands."""
        self._listeners.append(listener)

    # ---------------------------------------------------------------- what the loop tells

    def begin(self) -> int:
        """A batch is about to be handled: its number, for `committed`."""
        self._batch += 1
        excess = len(self._memos) - self.memo_limit
        if excess > 0:  # rare: memos go when a batch holding them commits
            for key in list(itertools.islice(self._memos, excess)):
                del self._memos[key]
        return self._batch

    def effect(self, future: asyncio.Future[Any]) -> None:
        """The batch being handled runs `future` alongside its send."""
        self._effects.add(future)
        future.add_done_callback(self._effect_done)

    def _effect_done(self, future: asyncio.Future[Any]) -> None:
        self._effects.discard(future)
        if not future.cancelled():
            future.exception()  # retrieved: a rewound batch's failed effect is never awaited

    def committed(self, batch: int) -> None:
        """Batch `batch`'s offsets are committed: nothing will bring it back."""
        for key in self._claimed_by.pop(batch, ()):
            if self._claims.get(key) == batch:
                del self._claims[key]
        for key in self._holding.pop(batch, ()):
            memo = self._memos.pop(key, None)
            if memo is not None and not memo.committed:
                if memo.tally is not None:
                    memo.tally.apply()
                memo.committed = True

    def rewound(self) -> None:
        """Every batch not yet committed comes again: their claims go (their memos stay, to be
        recalled when they are handled again), and the listeners are told."""
        self._claims.clear()
        self._claimed_by.clear()
        self._holding.clear()
        for listener in self._listeners:
            listener()
