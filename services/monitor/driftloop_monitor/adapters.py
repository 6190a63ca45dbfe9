"""Join state in Redis: a request's features, its result and its feedback meet under one key."""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

PARTS = ("request", "result", "feedback")


def join_key(request_id: str) -> str:
    return f"join:{request_id}"


# One round trip per batch: write every part, refresh the TTL, keep the label-window books, and
# return the joins that became complete and are not done yet, as flat [key, request, result,
# feedback, ...]. ARGV: ttl, now (ms), then (part, body, model) per key. Parsing one reply per
# command was half of the monitor's time at 4k requests/s.
_PUT = """
local ttl, now = ARGV[1], tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  local part, model = ARGV[3 * i], ARGV[3 * i + 2]
  local id = string.sub(key, 6)
  redis.call('HSET', key, part, ARGV[3 * i + 1])
  redis.call('EXPIRE', key, ttl)
  if part == 'request' then
    redis.call('ZADD', 'joins:pending:' .. model, now, id)
  elseif part == 'feedback' and redis.call('HEXISTS', key, 'request') == 0 then
    redis.call('ZADD', 'joins:orphan:' .. model, 'NX', now, id)
  end
end
local out, seen = {}, {}
for i, key in ipairs(KEYS) do
  if not seen[key] then
    seen[key] = true
    if redis.call('HLEN', key) == 3 and redis.call('HEXISTS', key, 'done') == 0 then
      local v = redis.call('HMGET', key, 'request', 'result', 'feedback')
      local model, id = ARGV[3 * i + 2], string.sub(key, 6)
      redis.call('ZREM', 'joins:pending:' .. model, id)
      redis.call('ZREM', 'joins:orphan:' .. model, id)
      table.insert(out, key)
      for j = 1, 3 do table.insert(out, v[j]) end
    end
  end
end
return out
"""
_DONE = """
for _, key in ipairs(KEYS) do redis.call('HSET', key, 'done', 1) end
return #KEYS
"""
# Per model (ARGV: requests' cutoff, orphans' cutoff, models...): requests older than the label
# window that never got their label, and labels that found no request within the grace period
# (it expired, or never came). Both are removed from the books and counted: [unlabelled, expired, ...].
_SWEEP = """
local out = {}
for i = 3, #ARGV do
  local model = ARGV[i]
  local pending = 'joins:pending:' .. model
  local orphan = 'joins:orphan:' .. model
  local unlabelled = redis.call('ZCOUNT', pending, '-inf', ARGV[1])
  redis.call('ZREMRANGEBYSCORE', pending, '-inf', ARGV[1])
  local expired = 0
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', orphan, '-inf', ARGV[2], 'LIMIT', 0, 100000)) do
    redis.call('ZREM', orphan, id)
    if redis.call('HEXISTS', 'join:' .. id, 'request') == 0 then
      redis.call('DEL', 'join:' .. id)
      expired = expired + 1
    end
  end
  table.insert(out, unlabelled)
  table.insert(out, expired)
end
return out
"""


class JoinStore:
    """Each part is written as it arrives, in any order; a request completes when all three are in.

    Labels count within a window: a request waits `ttl_s` for its label, then it is counted as
    never labelled; a label whose request is not there (the request's join expired, or never
    existed) waits `orphan_grace_s` for it, then it is counted as expired. Nothing goes silently.
    """

    def __init__(self, redis: Redis, ttl_s: int, orphan_grace_s: float = 60.0) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.orphan_grace_s = orphan_grace_s
        self._put = redis.register_script(_PUT)
        self._done = redis.register_script(_DONE)
        self._sweep = redis.register_script(_SWEEP)

    async def put(
        self, parts: Sequence[tuple[str, str, bytes, str]], now_ms: int
    ) -> dict[str, dict[str, bytes]]:
        """Write (request_id, part, body, model) parts; return the complete, unprocessed joins touched."""
        if not parts:
            return {}
        keys = [join_key(request_id) for request_id, _, _, _ in parts]
        args: list[bytes | str | int] = [self.ttl_s, now_ms]
        for _, part, body, model in parts:
            args += [part, body, model]
        flat = await self._put(keys=keys, args=args)
        complete = {}
        for i in range(0, len(flat), 4):
            request_id = flat[i].decode().removeprefix("join:")
            complete[request_id] = dict(zip(PARTS, flat[i + 1 : i + 4], strict=True))
        return complete

    async def mark_done(self, request_ids: Sequence[str]) -> None:
        """Record that these joins were processed, so a redelivery does not count them again."""
        if request_ids:
            await self._done(keys=[join_key(r) for r in request_ids])

    async def sweep(self, models: Sequence[str], now_ms: int) -> dict[str, tuple[int, int]]:
        """Per model: (requests never labelled within the window, labels that came too late)."""
        if not models:
            return {}
        cutoffs = [now_ms - self.ttl_s * 1000, now_ms - int(self.orphan_grace_s * 1000)]
        flat = await self._sweep(keys=[], args=[*cutoffs, *models])
        return {m: (int(flat[2 * i]), int(flat[2 * i + 1])) for i, m in enumerate(models)}


class InMemoryJoinStore:
    """The join store in memory, with the same answers as `JoinStore` (joins do not expire by
    themselves: only the sweep removes what it counts). For unit tests and one-process tools."""

    def __init__(self, ttl_s: int = 3600, orphan_grace_s: float = 60.0) -> None:
        self.ttl_s = ttl_s
        self.orphan_grace_s = orphan_grace_s
        self.parts: dict[str, dict[str, bytes]] = {}
        self.done: set[str] = set()
        self.pending: dict[str, dict[str, int]] = {}  # by model: request id -> when its request came
        self.orphans: dict[str, dict[str, int]] = {}  # by model: request id -> when its label came first

    async def put(
        self, parts: Sequence[tuple[str, str, bytes, str]], now_ms: int
    ) -> dict[str, dict[str, bytes]]:
        for request_id, part, body, model in parts:
            fields = self.parts.setdefault(request_id, {})
            fields[part] = body
            if part == "request":
                self.pending.setdefault(model, {})[request_id] = now_ms
            elif part == "feedback" and "request" not in fields:
                self.orphans.setdefault(model, {}).setdefault(request_id, now_ms)
        complete: dict[str, dict[str, bytes]] = {}
        for request_id, _, _, model in parts:
            fields = self.parts[request_id]
            if request_id in complete or len(fields) < len(PARTS) or request_id in self.done:
                continue
            self.pending.get(model, {}).pop(request_id, None)
            self.orphans.get(model, {}).pop(request_id, None)
            complete[request_id] = {part: fields[part] for part in PARTS}
        return complete

    async def mark_done(self, request_ids: Sequence[str]) -> None:
        self.done.update(request_ids)

    async def sweep(self, models: Sequence[str], now_ms: int) -> dict[str, tuple[int, int]]:
        swept = {}
        for model in models:
            pending = self.pending.get(model, {})
            unlabelled = [r for r, at in pending.items() if at <= now_ms - self.ttl_s * 1000]
            for request_id in unlabelled:
                del pending[request_id]
            orphans = self.orphans.get(model, {})
            expired = 0
            for request_id in [r for r, at in orphans.items() if at <= now_ms - self.orphan_grace_s * 1000]:
                del orphans[request_id]
                if "request" not in self.parts.get(request_id, {}):
                    self.parts.pop(request_id, None)
                    expired += 1
            swept[model] = (len(unlabelled), expired)
        return swept
