"""Online store: one Redis hash per (model, entity) with a TTL (layout: `driftloop.features`), written
and read with one Lua script call per batch. Inference encodes what it holds with the same feature
definitions as training."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import orjson
from redis.asyncio import Redis

from driftloop.features import online_key

# KEYS: the entities' hashes; ARGV[1]: TTL (s), then per key: event ts, features JSON, event time
# ISO, the number of history fields to set (n) and to delete (m), n field/value pairs, m fields.
# An entity's features are replaced only by a newer observation's (events arrive out of order);
# its history changes always (the caller merged them). Values stay strings: Lua would print
# numbers with 14 digits.
_WRITE = """
local ttl = ARGV[1]
local at = 2
for _, key in ipairs(KEYS) do
  local stored = tonumber(redis.call('HGET', key, 'event_ts') or '-1')
  if tonumber(ARGV[at]) >= stored then
    redis.call('HSET', key, 'features', ARGV[at + 1], 'event_time', ARGV[at + 2], 'event_ts', ARGV[at])
  end
  local n, m = tonumber(ARGV[at + 3]), tonumber(ARGV[at + 4])
  at = at + 5
  for i = 0, n - 1 do
    redis.call('HSET', key, ARGV[at + 2 * i], ARGV[at + 2 * i + 1])
  end
  at = at + 2 * n
  for i = 0, m - 1 do
    redis.call('HDEL', key, ARGV[at + i])
  end
  at = at + m
  redis.call('EXPIRE', key, ttl)
end
return 0
"""

Row = tuple[str, str, datetime, dict[str, float | str], tuple[dict[bytes, bytes], list[bytes]]]


class OnlineStore:
    def __init__(self, redis: Redis, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self._write = redis.register_script(_WRITE)

    async def entities(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], dict[bytes, bytes]]:
        """The stored hash of each (model, entity) (empty when unknown), one round trip."""
        if not keys:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for model, entity in keys:
                pipe.hgetall(online_key(model, entity))
            found = await pipe.execute()
        return dict(zip(keys, found, strict=True))

    async def write(self, rows: Sequence[Row]) -> None:
        """Write (model, entity, event time, raw features, (history fields to set, to delete))
        rows, one round trip."""
        if not rows:
            return
        args: list[bytes | str | int] = [self.ttl_s]
        for _, _, when, features, (added, removed) in rows:
            args += [f"{when.timestamp():.6f}", orjson.dumps(features), when.isoformat()]
            args += [len(added), len(removed), *(x for pair in added.items() for x in pair), *removed]
        keys = [online_key(model, entity) for model, entity, _, _, _ in rows]
        await self._write(keys=keys, args=args)
