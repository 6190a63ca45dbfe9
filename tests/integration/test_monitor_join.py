"""The monitor's join state on a real redis-server: parts arrive in any order, a join completes
once, a redelivered part does not complete it again, and labels are counted within their window."""

import uuid

from redis.asyncio import Redis

from driftloop_monitor.adapters import JoinStore

T = 1_700_000_000_000  # ms


async def test_parts_join_in_any_order_and_complete_once(redis_url):
    redis = Redis.from_url(redis_url)
    joins = JoinStore(redis, ttl_s=60)
    a, b = uuid.uuid4().hex, uuid.uuid4().hex
    try:
        assert await joins.put([(a, "feedback", b"1", "sea"), (b, "request", b"r", "sea")], T) == {}
        assert await joins.put([(a, "result", b"p", "sea")], T) == {}
        complete = await joins.put([(a, "request", b"r", "sea"), (b, "result", b"p", "sea")], T)
        assert list(complete) == [a]
        assert complete[a] == {"feedback": b"1", "result": b"p", "request": b"r"}
        await joins.mark_done([a])
        assert await joins.put([(a, "feedback", b"1", "sea")], T) == {}, "a redelivery completed it twice"
        assert 0 < await redis.ttl(f"join:{a}") <= 60
    finally:
        await redis.aclose()


async def test_labels_outside_their_window_are_counted_not_dropped(redis_url):
    redis = Redis.from_url(redis_url)
    joins = JoinStore(redis, ttl_s=10, orphan_grace_s=5)
    labelled, unlabelled, early, late = (uuid.uuid4().hex for _ in range(4))
    try:
        for rid in (labelled, unlabelled):
            await joins.put([(rid, "request", b"r", "sea"), (rid, "result", b"p", "sea")], T)
        assert list(await joins.put([(labelled, "feedback", b"1", "sea")], T + 1_000)) == [labelled]
        # a label before its request (within the grace period) still joins, and is not counted
        await joins.put([(early, "feedback", b"0", "sea")], T + 2_000)
        assert list(
            await joins.put([(early, "request", b"r", "sea"), (early, "result", b"p", "sea")], T + 3_000)
        ) == [early]
        # a label whose request is gone (expired, or never seen)
        await joins.put([(late, "feedback", b"1", "sea")], T + 4_000)

        assert await joins.sweep(["sea"], T + 5_000) == {"sea": (0, 0)}
        assert await joins.sweep(["sea"], T + 9_500) == {"sea": (0, 1)}  # `late` waited 5 s
        assert not await redis.exists(f"join:{late}")
        assert await joins.sweep(["sea"], T + 10_500) == {"sea": (1, 0)}  # `unlabelled` waited 10 s
        assert await joins.sweep(["sea"], T + 60_000) == {"sea": (0, 0)}  # each counted once
    finally:
        await redis.aclose()
