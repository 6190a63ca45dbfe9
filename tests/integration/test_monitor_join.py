"""The monitor's join state on a real redis-server: parts arrive in any order, a join completes
once, a redelivered part does not complete it again, and labels are counted within their window;
the in-memory store the unit tests use gives the same answers."""

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from driftloop_monitor.adapters import PARTS, InMemoryJoinStore, JoinStore

T = 1_700_000_000_000  # ms
STORES = {
    "redis": lambda redis, **kw: JoinStore(redis, **kw),
    "memory": lambda redis, **kw: InMemoryJoinStore(**kw),
}


@pytest.mark.parametrize("store", STORES)
async def test_parts_join_in_any_order_and_complete_once(redis_url, store):
    redis = Redis.from_url(redis_url)
    joins = STORES[store](redis, ttl_s=60)
    a, b = uuid.uuid4().hex, uuid.uuid4().hex
    try:
        assert await joins.put([(a, "feedback", b"1", "sea"), (b, "request", b"r", "sea")], T) == {}
        assert await joins.put([(a, "result", b"p", "sea")], T) == {}
        complete = await joins.put([(a, "request", b"r", "sea"), (b, "result", b"p", "sea")], T)
        assert list(complete) == [a]
        assert complete[a] == {"feedback": b"1", "result": b"p", "request": b"r"}
        await joins.mark_done([a])
        assert await joins.put([(a, "feedback", b"1", "sea")], T) == {}, "a redelivery completed it twice"
        if store == "redis":
            assert 0 < await redis.ttl(f"join:{a}") <= 60
    finally:
        await redis.aclose()


@pytest.mark.parametrize("store", STORES)
async def test_labels_outside_their_window_are_counted_not_dropped(redis_url, store):
    redis = Redis.from_url(redis_url)
    joins = STORES[store](redis, ttl_s=10, orphan_grace_s=5)
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
        if store == "redis":
            assert not await redis.exists(f"join:{late}")
        assert await joins.sweep(["sea"], T + 10_500) == {"sea": (1, 0)}  # `unlabelled` waited 10 s
        assert await joins.sweep(["sea"], T + 60_000) == {"sea": (0, 0)}  # each counted once
    finally:
        await redis.aclose()


STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.lists(st.tuples(st.integers(0, 3), st.sampled_from(PARTS)), max_size=6)),
        st.tuples(st.just("done"), st.lists(st.integers(0, 3), max_size=3)),
        st.tuples(st.just("sweep"), st.none()),
    ),
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
async def test_the_in_memory_store_answers_as_redis_does(redis_url, steps):
    redis = Redis.from_url(redis_url)
    model, prefix = f"m{uuid.uuid4().hex[:8]}", uuid.uuid4().hex  # a fresh namespace per example
    stores = [JoinStore(redis, ttl_s=10, orphan_grace_s=5), InMemoryJoinStore(ttl_s=10, orphan_grace_s=5)]
    try:
        for tick, (action, arg) in enumerate(steps):
            now = T + tick * 2_000  # 2 s a step: windows of 5 and 10 s run out within a sequence
            if action == "put":
                parts = [(f"{prefix}-{i}", part, f"{part}{i}".encode(), model) for i, part in arg]
                answers = [await store.put(parts, now) for store in stores]
            elif action == "done":
                answers = [await store.mark_done([f"{prefix}-{i}" for i in arg]) for store in stores]
            else:
                answers = [await store.sweep([model], now) for store in stores]
            assert answers[0] == answers[1], (action, arg)
    finally:
        await redis.aclose()
