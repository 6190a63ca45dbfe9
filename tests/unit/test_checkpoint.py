"""The checkpoint: what a stream loop holds for batches not yet committed (`driftloop.checkpoint`)."""

import asyncio

import pytest
from prometheus_client import CollectorRegistry, Counter

from driftloop.checkpoint import Checkpoint
from driftloop.metrics import Tally


def test_a_claim_lasts_until_its_batch_commits_and_a_rewind_drops_every_claim():
    checkpoint = Checkpoint()
    first = checkpoint.begin()
    checkpoint.claim(["a", "b"])
    second = checkpoint.begin()  # pipelined: handled while the first is sent
    checkpoint.claim(["c"])
    assert all(map(checkpoint.claimed, "abc"))
    checkpoint.committed(first)
    assert not checkpoint.claimed("a") and checkpoint.claimed("c")
    checkpoint.rewound()  # the second failed: it comes again
    assert not checkpoint.claimed("c")
    checkpoint.committed(second)  # a late answer for a rewound batch changes nothing
    assert not any(map(checkpoint.claimed, "abc"))


def test_a_key_claimed_again_by_a_later_batch_stays_claimed_when_the_earlier_commits():
    checkpoint = Checkpoint()
    first = checkpoint.begin()
    checkpoint.claim(["a"])
    checkpoint.begin()
    checkpoint.claim(["a"])
    checkpoint.committed(first)
    assert checkpoint.claimed("a")


def test_a_memo_survives_rewinds_and_its_tally_is_applied_once_at_the_first_commit_holding_it():
    counter = Counter("c", "a counter", registry=CollectorRegistry())
    checkpoint = Checkpoint()
    checkpoint.begin()
    tally = Tally()
    tally.inc(counter, 2)
    memo = checkpoint.keep(["r1", "r2"], ["sent"], tally)
    checkpoint.rewound()  # the batch failed: handled again in two parts
    part_one = checkpoint.begin()
    assert checkpoint.recall("r1") is memo and not memo.committed
    checkpoint.committed(part_one)
    assert memo.committed and counter._value.get() == 2
    part_two = checkpoint.begin()
    assert checkpoint.recall("r2") is memo  # already out: the handler sends nothing for it again
    checkpoint.committed(part_two)
    assert counter._value.get() == 2 and checkpoint.memos == 0
    assert checkpoint.recall("r1") is None


def test_memos_are_bounded_oldest_first():
    checkpoint = Checkpoint(memo_limit=3)
    checkpoint.begin()
    for key in "abcde":
        checkpoint.keep([key], key)
    checkpoint.begin()
    assert checkpoint.memos == 3 and checkpoint.recall("a") is None and checkpoint.recall("e") is not None


async def test_a_batch_waits_for_the_effects_of_earlier_batches_whether_they_fail():
    checkpoint = Checkpoint()
    order = []

    async def write(name: str, fail: bool) -> None:
        await asyncio.sleep(0.01)
        order.append(name)
        if fail:
            raise ConnectionError("redis went away")

    checkpoint.begin()
    checkpoint.effect(asyncio.ensure_future(write("first", fail=True)))
    checkpoint.begin()
    await checkpoint.settled_effects()
    order.append("second reads")
    assert order == ["first", "second reads"]
    await checkpoint.settled_effects()  # nothing pending: returns at once


def test_rewind_listeners_are_told():
    checkpoint = Checkpoint()
    told = []
    checkpoint.on_rewind(lambda: told.append(1))
    checkpoint.rewound()
    checkpoint.rewound()
    assert told == [1, 1]


@pytest.mark.parametrize("commits_first", [True, False])
def test_a_batch_committed_out_of_order_releases_only_its_own(commits_first):
    checkpoint = Checkpoint()
    first = checkpoint.begin()
    checkpoint.keep(["x"], "x")
    second = checkpoint.begin()
    checkpoint.keep(["y"], "y")
    checkpoint.committed(first if commits_first else second)
    assert (checkpoint.recall("x") is None) == commits_first
    assert (checkpoint.recall("y") is None) != commits_first
