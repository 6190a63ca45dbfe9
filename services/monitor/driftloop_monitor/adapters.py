"""Join state in Redis: a request's features, its result and its feedback meet under one key."""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

PARTS = ("request", "result", "feedback")


def join_key(request_id: str) -> str:
    return f"join:{request_id}"


class JoinStore:
    """Each part is written as it arrives, in any order; a request completes when all three are in."""

    def __init__(self, redis: Redis, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s

    async def put(self, parts: Sequence[tuple[str, str, bytes]]) -> dict[str, dict[str, bytes]]:
        """Write (request_id, part, body) triples; return the complete, unprocessed joins touched."""
        if not parts:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for request_id, part, body in parts:
                pipe.hset(join_key(request_id), part, body)
                pipe.expire(join_key(request_id), self.ttl_s)
            touched = list(dict.fromkeys(request_id for request_id, _, _ in parts))
            for request_id in touched:
                pipe.hgetall(join_key(request_id))
            found = (await pipe.execute())[-len(touched) :]
        complete = {}
        for request_id, fields in zip(touched, found, strict=True):
            decoded = {k.decode(): v for k, v in fields.items()}
            if all(p in decoded for p in PARTS) and "done" not in decoded:
                complete[request_id] = decoded
        return complete

    async def mark_done(self, request_ids: Sequence[str]) -> None:
        """Record that these joins were processed, so a redelivery does not count them again."""
        if not request_ids:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for request_id in request_ids:
                pipe.hset(join_key(request_id), "done", 1)
            await pipe.execute()
