"""Online store: one Redis hash per (model, entity) with a TTL (layout: `driftloop.features`), written
and read with one Lua script call per batch. Inference encodes what it holds with the same feature
definitions as training."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import orjson
from redis.asyncio import Redis

from driftloop.features import online_key

# KEYS: the entities' hashes; ARGV[1]: TTL (s); ARGV[2]: JSON, per key [event ts, features JSON,
# event time ISO, history JSON or null]. An entity's features are replaced only by a newer
# observation's (events arrive out of order); its history, already merged by the caller, always.
# Values stay strings: Lua would print numbers with 14 digits.
_WRITE = """
local ttl = ARGV[1]
for i, row in ipairs(cjson.decode(ARGV[2])) do
  local key, ts = KEYS[i], row[1]
  local stored = tonumber(redis.call('HGET', key, 'event_ts') or '-1')
  if ts >= stored then
    redis.call('HSET', key, 'features', row[2], 'event_time', row[3], 'event_ts', string.format('%.6f', ts))
  end
  if row[4] ~= cjson.null then
    redis.call('HSET', key, 'history', row[4])
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
        payload = [
            [
                when.timestamp(),
                orjson.dumps(features).decode(),
                when.isoformat(),
                None if history is None else history.decode(),
            ]
            for model, entity, when, features, history in rows
        ]
        keys = [online_key(model, entity) for model, entity, _, _, _ in rows]
        await self._write(keys=keys, args=[self.ttl_s, orjson.dumps(payload)])
