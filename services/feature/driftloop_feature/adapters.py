"""Online store: one Redis hash per (model, entity) with a TTL: the latest validated raw features,
their event time and, for models with aggregates, the entity's recent history (`_history`).
Inference encodes them with the same feature definitions as training."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from redis.asyncio import Redis

from driftloop.contracts import FeatureRow
from driftloop.features import HISTORY_FIELD, online_key


class OnlineStore:
    def __init__(self, redis: Redis, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s

    async def histories(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bytes | None]:
        """The stored history of each (model, entity), one pipelined round trip."""
        if not keys:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for model, entity in keys:
                pipe.hget(online_key(model, entity), HISTORY_FIELD)
            found = await pipe.execute()
        return dict(zip(keys, found, strict=True))

    async def write(
        self,
        rows: Sequence[tuple[dict[str, float | str], FeatureRow]],
        histories: Mapping[tuple[str, str], bytes] | None = None,
    ) -> None:
        """Write the rows that name an entity (and their histories), one pipelined round trip."""
        with_entity = [(clean, row) for clean, row in rows if row.entity_id]
        if not with_entity:
            return
        histories = histories or {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for clean, row in with_entity:
                assert row.entity_id is not None
                key = online_key(row.model, row.entity_id)
                mapping: dict[str, str | float | bytes] = {**clean, "_event_time": row.event_time.isoformat()}
                if (row.model, row.entity_id) in histories:
                    mapping[HISTORY_FIELD] = histories[(row.model, row.entity_id)]
                pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
                pipe.expire(key, self.ttl_s)
            await pipe.execute()
