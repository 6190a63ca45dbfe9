"""The online store: an entity's latest features and recent history, written by the feature service
and read by it and by inference. One class owns the key and field layout, the writer and the readers.

Layout: one Redis hash per (model, entity), key `online:<model>:<entity_id>`, expiring
`DRIFTLOOP_ONLINE_TTL_S` after its last write:

| field | value |
|---|---|
| `features` | the latest validated raw features, as JSON (typed values round-trip exactly) |
| `event_time` | that observation's event time (ISO 8601, UTC) |
| `event_ts` | the same in epoch seconds, as text: an older event never replaces newer features |
| `h:<event id>` | models with aggregates: one field per recent event, `[time, {values}]` |

`driftloop.aggregates.History` reads and writes the `h:` fields. A batch's write is one Lua call:
features replaced only by a newer observation's, history fields set and deleted as the caller's
`History.changes` say, the TTL refreshed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from driftloop.aggregates import Changes
from driftloop.spec import ModelSpec

log = logging.getLogger(__name__)

FEATURES_FIELD = b"features"
Row = tuple[
    str, str, datetime, dict[str, float | str], Changes
]  # model, entity, event time, features, history
Stored = dict[bytes, bytes]  # an entity's hash as read


def online_key(model: str, entity_id: str) -> str:
    """Redis key of an entity's hash in the online store."""
    return f"online:{model}:{entity_id}"


def decode_stored(spec: ModelSpec, stored: bytes | str | None) -> dict[str, float | str]:
    """The raw feature values of an entity's stored JSON that the spec knows, in the spec's types
    (nothing when absent or unreadable)."""
    try:
        values = orjson.loads(stored) if stored else {}
    except orjson.JSONDecodeError:
        return {}
    out: dict[str, float | str] = {}
    if not isinstance(values, dict):
        return out
    for feature in spec.features:
        value = values.get(feature.name)
        if feature.type == "numeric" and isinstance(value, int | float) and not isinstance(value, bool):
            out[feature.name] = float(value)
        elif feature.type == "categorical" and isinstance(value, str):
            out[feature.name] = value
    return out


def _rows_json(rows: Sequence[Row]) -> bytes:
    """The write's one argument: per row [event ts, features JSON, event time, [field, value, ...],
    [field to delete, ...]] (one argument: packing thousands costs the client more than the script
    costs Redis). Numbers travel as strings: Lua would round them."""
    return orjson.dumps(
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


# KEYS: the entities' hashes; ARGV[1]: TTL (s); ARGV[2]: `_rows_json`. A stored `event_ts` that is not
# a number (a hand edit, an old writer) counts as absent: the newer row wins.
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


class OnlineStore(Protocol):
    """The online store's port (`RedisOnlineStore` in the services, `InMemoryOnlineStore` in unit
    tests)."""

    async def write(self, rows: Sequence[Row]) -> None: ...

    async def entities(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Stored]: ...

    async def fetch(self, keys: Sequence[tuple[str, str]]) -> list[Stored | None] | None: ...


class RedisOnlineStore:
    """The online store on Redis (the layout above)."""

    def __init__(self, redis: Redis, ttl_s: int = 7 * 86400, read_timeout_s: float = 1.0) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.read_timeout_s = read_timeout_s
        self._write = redis.register_script(_WRITE)

    async def write(self, rows: Sequence[Row]) -> None:
        """Write (model, entity, event time, raw features, (history fields to set, to delete))
        rows, one round trip."""
        if rows:
            keys = [online_key(model, entity) for model, entity, _, _, _ in rows]
            await self._write(keys=keys, args=[self.ttl_s, _rows_json(rows)])

    async def entities(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Stored]:
        """The stored hash of each (model, entity) (empty when unknown), one round trip; a store
        that does not answer raises (the feature service's batch is retried)."""
        if not keys:
            return {}
        return dict(zip(keys, await self._hashes(keys), strict=True))

    async def fetch(self, keys: Sequence[tuple[str, str]]) -> list[Stored | None] | None:
        """For serving: the stored hash per (model, entity), None where the entity is unknown; None
        for all when the store does not answer within `read_timeout_s` (requests then fail fast
        instead of stalling the batch)."""
        if not keys:
            return []
        try:
            found = await asyncio.wait_for(self._hashes(keys), timeout=self.read_timeout_s)
        except (RedisError, TimeoutError, OSError) as exc:
            log.warning("online store unavailable: %s", exc)
            return None
        return [stored if FEATURES_FIELD in stored else None for stored in found]

    async def _hashes(self, keys: Sequence[tuple[str, str]]) -> list[Stored]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for model, entity in keys:
                pipe.hgetall(online_key(model, entity))
            found: list[Stored] = await pipe.execute()
        return found


class InMemoryOnlineStore:
    """The online store in memory, with `RedisOnlineStore`'s answers (no expiry), for unit tests;
    `available = False` makes it answer as a store that is down."""

    def __init__(self) -> None:
        self.hashes: dict[str, Stored] = {}
        self.available = True

    async def write(self, rows: Sequence[Row]) -> None:
        self._check()
        for model, entity, when, features, (added, removed) in rows:
            stored = self.hashes.setdefault(online_key(model, entity), {})
            ts = f"{when.timestamp():.6f}"
            if float(ts) >= _number(stored.get(b"event_ts")):
                stored[FEATURES_FIELD] = orjson.dumps(features)
                stored[b"event_time"] = orjson.dumps(when).strip(b'"')
                stored[b"event_ts"] = ts.encode()
            stored.update({k.encode(): v.encode() for k, v in added.items()})
            for field in removed:
                stored.pop(field.encode(), None)

    async def entities(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Stored]:
        self._check()
        return {key: dict(self.hashes.get(online_key(*key), {})) for key in keys}

    async def fetch(self, keys: Sequence[tuple[str, str]]) -> list[Stored | None] | None:
        if not self.available:
            return None
        found = [dict(self.hashes.get(online_key(*key), {})) for key in keys]
        return [stored if FEATURES_FIELD in stored else None for stored in found]

    def _check(self) -> None:
        if not self.available:
            raise ConnectionError("online store unavailable")


def _number(raw: Any) -> float:
    """A stored `event_ts` as a number; -1 when absent or not a number (as the Lua writer reads it)."""
    try:
        return float(raw)
    except (TypeError, ValueError):
        return -1.0
