"""Online store: one Redis hash of the latest validated raw features per (model, entity), with a
TTL. Inference encodes them with the same feature definitions as training."""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from driftloop.contracts import FeatureRow
from driftloop.features import online_key


class OnlineStore:
    def __init__(self, redis: Redis, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s

    async def write(self, rows: Sequence[tuple[dict[str, float | str], FeatureRow]]) -> None:
        """Write the rows that name an entity, one pipelined round trip per batch."""
        with_entity = [(clean, row) for clean, row in rows if row.entity_id]
        if not with_entity:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for clean, row in with_entity:
                assert row.entity_id is not None
                key = online_key(row.model, row.entity_id)
                mapping: dict[str, str | float] = {**clean, "_event_time": row.event_time.isoformat()}
                pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
                pipe.expire(key, self.ttl_s)
            await pipe.execute()
