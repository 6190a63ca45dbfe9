"""Online store: one Redis hash per (model, entity) with a TTL (layout: `driftloop.features`), written
and read with one Lua script call per batch. Inference encodes what it holds with the same feature
definitions as training."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import orjson
from redis.asyncio import Redis

from driftloop.aggregates import Changes
from driftloop.features import online_key

# KEYS: the entities' hashes; ARGV[1]: TTL (s); ARGV[2]: one JSON array, per key [event ts, features
# JSON, event time ISO, [history field, value, ...], [history field to delete, ...]] (one argument:
# packing thousands of them costs the client more than the script costs Redis). An entity's
# features are replaced only by a newer observation's (events arrive out of order); its history
# changes always (the caller merged them). Numbers travel as strings: Lua would round them. A stored
# `event_ts` that is not a number (a hand edit, an old writer) counts as absent: the newer row wins.
_WRITE = """
local ttl = ARGV[1]
local rows = cjson.decode(ARGV[2])
for i, key in ipairs(KEYS) do
  local row = rows[i]
  local stored = tonumber(redis.call('HGET', key, 'event_ts') or '') or -1
  if tonumber(row[1]) >= stored then
    redis.call('HSET', key, 'features', row[2], 'event_time', row[3], 'event_ts', row[1])
  end
  local set, gone = row[4], row[5]
  for j = 1, #set, 200 do
    redis.call('HSET', key, unpack(set, j, math.min(j + 199, #set)))
  end
  for j = 1, #gone, 200 do
    redis.call('HDEL', key, unpack(gone, j, math.min(j + 199, #gone)))
  end
  redis.call('EXPIRE', key, ttl)
end
return 0
"""

Row = tuple[str, str, datetime, dict[str, float | str], Changes]


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
        batch = orjson.dumps(
            [
                [
                    f"{when.timestamp():.6f}",
                    orjson.dumps(features).decode(),
                    when,  # in UTC: orjson writes it as isoformat() does
                    [x for pair in added.items() for x in pair],
                    removed,
                ]
                for _, _, when, features, (added, removed) in rows
            ]
        )
        keys = [online_key(model, entity) for model, entity, _, _, _ in rows]
        await self._write(keys=keys, args=[self.ttl_s, batch])
