"""The monitor's join state on a real redis-server: parts arrive in any order, a join completes
once, and a redelivered part does not complete it again."""

import uuid

from redis.asyncio import Redis

from driftloop_monitor.adapters import JoinStore


async def test_parts_join_in_any_order_and_complete_once(redis_url):
    redis = Redis.from_url(redis_url)
    joins = JoinStore(redis, ttl_s=60)
    a, b = uuid.uuid4().hex, uuid.uuid4().hex
    try:
        assert await joins.put([(a, "feedback", b"1"), (b, "request", b"r")]) == {}
        assert await joins.put([(a, "result", b"p")]) == {}
        complete = await joins.put([(a, "request", b"r"), (b, "result", b"p")])
        assert list(complete) == [a]
        assert complete[a] == {"feedback": b"1", "result": b"p", "request": b"r"}
        await joins.mark_done([a])
        assert await joins.put([(a, "feedback", b"1")]) == {}, "a redelivery completed it twice"
        assert 0 < await redis.ttl(f"join:{a}") <= 60
    finally:
        await redis.aclose()
