"""Online store: one Redis hash per (model, entity) with a TTL (layout: `driftloop.features`), written
and read with one Lua script call per batch. Inference encodes what it holds with the same feature
definitions as training."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import orjson
from redis.asyncio import Redis

from driftloop.features import online_key

# KEYS: the entities' hashes; ARGV[1]: TTL (s), then four values per key: event ts, features
# JSON, event time ISO, history JSON or "" (none). An entity's features are replaced only by a
# newer observation's (events arrive out of order); its history, already merged by the caller,
# always. Values stay strings: Lua would print numbers with 14 digits.
_WRITE = """
local ttl = ARGV[1]
for i, key in ipairs(KEYS) do
  local at = 4 * i - 2
  local stored = tonumber(redis.call('HGET', key, 'event_ts') or '-1')
  if tonumber(ARGV[at]) >= stored then
    redis.call('HSET', key, 'features', ARGV[at + 1], 'event_time', ARGV[at + 2], 'event_ts', ARGV[at])
  end
  if ARGV[at + 3] ~= '' then
    redis.call('HSET', key, 'history', ARGV[at + 3])
  end
  redis.call('EXPIRE', key, ttl)
end
return 0
"""
_HISTORIES = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HGET', key, 'history') end
return out
"""


class OnlineStore:
    def __init__(self, redis: Redis, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self._write = redis.register_script(_WRITE)
        self._histories = redis.register_script(_HISTORIES)

    async def histories(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bytes | None]:
        """The stored history of each (model, entity), one round trip."""
        if not keys:
            return {}
        found = await self._histories(keys=[online_key(model, entity) for model, entity in keys])
        return {k: (v or None) for k, v in zip(keys, found, strict=True)}

    async def write(
        self, rows: Sequence[tuple[str, str, datetime, dict[str, float | str], bytes | None]]
    ) -> None:
        """Write (model, entity, event time, raw features, history or None) rows, one round trip."""
        if not rows:
            return
        args: list[bytes | str | int] = [self.ttl_s]
        for _, _, when, features, history in rows:
            args += [f"{when.timestamp():.6f}", orjson.dumps(features), when.isoformat(), history or b""]
        keys = [online_key(model, entity) for model, entity, _, _, _ in rows]
        await self._write(keys=keys, args=args)
