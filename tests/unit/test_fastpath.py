"""The pipelined hot-path loop's bookkeeping: commits follow acknowledged outputs in batch order,
and a failed send or handler brings every unsettled record back. The Kafka client is replaced by a
small in-memory log here; the loop against the real broker, with kills and restarts, is in
tests/integration/test_faults.py."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from prometheus_client import REGISTRY

from driftloop.contracts import DeadLetter
from driftloop.fastpath import PROCESSING_FAILED, FastPath, Handled, Outbox, Output
from driftloop.kafka import dead_letter
from driftloop.metrics import Tally
from driftloop.settings import ServiceSettings, Topics

TOPIC = "in"
PARTITIONS = [TopicPartition(TOPIC, p) for p in range(2)]
PER_PARTITION = 15


class Log:
    """A consumer over a fixed two-partition log: positions, seeks and commits as aiokafka's."""

    def __init__(self) -> None:
        self.positions = dict.fromkeys(PARTITIONS, 0)
        self.committed = dict.fromkeys(PARTITIONS, 0)
        self.sent: set[tuple[int, int]] = set()  # (partition, offset) whose output is acknowledged
        self.seeks: list[tuple[int, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return set(PARTITIONS)

    async def getmany(self, timeout_ms: int, max_records: int) -> dict:
        out = {}
        for tp in PARTITIONS:
            first = self.positions[tp]
            last = min(PER_PARTITION, first + max_records // 2)
            if last > first:
                out[tp] = [
                    ConsumerRecord(TOPIC, tp.partition, o, 0, 0, None, b"%d" % o, None, 0, 1, ())
                    for o in range(first, last)
                ]
                self.positions[tp] = last
        if not out:
            await asyncio.sleep(0.001)
        return out

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset
        self.seeks.append((tp.partition, offset))

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.seek(tp, 0)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            assert offset >= self.committed[tp], "a commit went backwards"
            missing = [o for o in range(offset) if (tp.partition, o) not in self.sent]
            assert not missing, f"committed past unacknowledged outputs {missing}"
            self.committed[tp] = offset

    def highwater(self, tp: TopicPartition) -> int:
        return PER_PARTITION

    async def stop(self) -> None:
        pass


class Sender:
    def __init__(self, log: Log, fail_on: set[int], ack_s: float = 0.002) -> None:
        self.log, self.fail_on, self.calls, self.ack_s = log, fail_on, 0, ack_s
        self.dead: list[DeadLetter] = []

    async def stop(self) -> None:
        pass

    async def send(self, outputs: list[Output]) -> None:
        self.calls += 1
        await asyncio.sleep(self.ack_s)  # acknowledgements take a while: the next batch is handled meanwhile
        if self.calls in self.fail_on:
            raise ConnectionError("broker went away")
        for output in outputs:
            if output.topic == Topics().events_dlq:
                letter = DeadLetter.model_validate_json(output.value)
                self.dead.append(letter)
                self.log.sent.add((letter.source_partition, letter.source_offset))
                continue
            partition, offset = output.value.split(b":")
            self.log.sent.add((int(partition), int(offset)))


@pytest.mark.parametrize("fail_on", [set(), {1}, {2}, {3, 4}])
@pytest.mark.parametrize("handler_fails_on", [None, 3])
async def test_every_record_is_sent_before_its_offset_is_committed(fail_on, handler_fails_on, monkeypatch):
    monkeypatch.setattr(asyncio, "sleep", _fast_sleep(asyncio.sleep))
    log = Log()
    resets = []
    loop = FastPath(ServiceSettings(kafka_max_records=6), "test", TOPIC, "group")
    loop.checkpoint.on_rewind(lambda: resets.append(1))
    loop.attach(log, Sender(log, fail_on))  # type: ignore[arg-type]
    calls = 0

    async def handle(records: list[ConsumerRecord]) -> list[Output]:
        nonlocal calls
        calls += 1
        if calls == handler_fails_on:
            raise ValueError("a bug")
        return [Output("out", None, b"%d:%d" % (r.partition, r.offset)) for r in records]

    await _run_until_committed(loop, log, handle)

    assert log.committed == dict.fromkeys(PARTITIONS, PER_PARTITION)
    assert log.sent == {(p, o) for p in range(2) for o in range(PER_PARTITION)}
    failures = len(fail_on) + (handler_fails_on is not None)
    # every rewind tells the checkpoint (two failures at once make one rewind)
    assert (len(resets) > 0) == (failures > 0) and len(resets) <= failures


@pytest.mark.parametrize("store_fails_on", [None, 2])
async def test_a_commit_waits_for_the_effect_alongside_and_its_failure_brings_the_batch_back(
    store_fails_on, monkeypatch
):
    monkeypatch.setattr(asyncio, "sleep", _fast_sleep(asyncio.sleep))
    log = Log()
    stored: set[tuple[int, int]] = set()
    real_commit = log.commit

    async def commit(offsets: dict[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            missing = [o for o in range(offset) if (tp.partition, o) not in stored]
            assert not missing, f"committed before the store write of {missing}"
        await real_commit(offsets)

    log.commit = commit  # type: ignore[method-assign]
    loop = FastPath(ServiceSettings(kafka_max_records=6), "test", TOPIC, "group")
    loop.attach(log, Sender(log, set()))  # type: ignore[arg-type]
    calls = 0

    async def write(records: list[ConsumerRecord], fail: bool) -> None:
        await asyncio.sleep(0.005)  # slower than the send
        if fail:
            raise ConnectionError("store went away")
        stored.update((r.partition, r.offset) for r in records)

    async def handle(records: list[ConsumerRecord]) -> Handled:
        nonlocal calls
        calls += 1
        outputs = [Output("out", None, b"%d:%d" % (r.partition, r.offset)) for r in records]
        return Handled(outputs, alongside=asyncio.ensure_future(write(records, calls == store_fails_on)))

    await _run_until_committed(loop, log, handle)
    assert log.committed == dict.fromkeys(PARTITIONS, PER_PARTITION)
    assert stored == {(p, o) for p in range(2) for o in range(PER_PARTITION)}


async def test_a_batch_from_before_a_reassignment_is_not_sought_back(monkeypatch):
    # while batch 1 (offsets 0-2) was out, the group moved the partitions away and back, and
    # another member handled 0-2 meanwhile: positions now come from the committed offsets (3).
    # When batch 1's send then fails, seeking back to its offsets would be wrong (after a broker
    # lost its topics they may even lie beyond the new end, and the consumer would wait forever).
    monkeypatch.setattr(asyncio, "sleep", _fast_sleep(asyncio.sleep))
    log = Log()
    loop = FastPath(ServiceSettings(kafka_max_records=6), "test", TOPIC, "group")
    loop.attach(log, Sender(log, fail_on={1}))  # type: ignore[arg-type]
    calls = 0

    async def handle(records: list[ConsumerRecord]) -> list[Output]:
        nonlocal calls
        calls += 1
        if calls == 1:  # the rebalance: a new generation, positions from the committed offsets
            loop.generation += 1
            log.sent |= {(p, o) for p in range(2) for o in range(3)}  # the other member's work
            log.committed, log.positions = dict.fromkeys(PARTITIONS, 3), dict.fromkeys(PARTITIONS, 3)
        return [Output("out", None, b"%d:%d" % (r.partition, r.offset)) for r in records]

    await _run_until_committed(loop, log, handle)
    # only the batch fetched after the rebalance (from offset 3) comes again
    assert sorted(log.seeks) == [(0, 3), (1, 3)], "a batch from an earlier assignment was sought back"
    assert log.sent == {(p, o) for p in range(2) for o in range(PER_PARTITION)}


async def test_a_partition_past_its_end_is_read_again_while_the_others_flow():
    # the broker lost the topic: partition 0's new log ends before the consumer's position, and
    # a fetch gets nothing from it (no error) while partition 1 keeps delivering
    from driftloop.kafka import TruncationWatch

    log = Log()
    log.positions = {PARTITIONS[0]: 40, PARTITIONS[1]: 3}  # highwater: PER_PARTITION (15)
    now = [0.0]
    watch = TruncationWatch(log, every_s=5.0, clock=lambda: now[0])  # type: ignore[arg-type]
    now[0] = 1.0
    assert await watch.fetched(6) is False  # records came: not checked yet
    now[0] = 6.0
    assert await watch.fetched(6) is True  # but at least every 5 s
    assert log.seeks == [(0, 0)] and log.positions[PARTITIONS[1]] == 3


async def test_a_stop_while_the_loop_waits_idle_commits_the_batch_being_sent():
    # all 30 records in one batch; its acknowledgement takes 50 ms, and meanwhile the loop finds
    # nothing more and waits for it. A graceful stop (SIGTERM) must not cut that wait short: the
    # outputs went out, so the offsets must be committed, or the next owner answers them again.
    log = Log()
    loop = FastPath(ServiceSettings(kafka_max_records=30), "test", TOPIC, "group")
    loop.attach(log, Sender(log, set(), ack_s=0.05))  # type: ignore[arg-type]

    async def handle(records: list[ConsumerRecord]) -> list[Output]:
        return [Output("out", None, b"%d:%d" % (r.partition, r.offset)) for r in records]

    loop._task = asyncio.create_task(loop._run(handle))
    await asyncio.sleep(0.02)  # the batch is out, the loop idle
    assert not log.sent, "the acknowledgement came too early for this test"
    await loop.stop()
    assert log.sent == {(p, o) for p in range(2) for o in range(PER_PARTITION)}
    assert log.committed == dict.fromkeys(PARTITIONS, PER_PARTITION), "sent but not committed"


async def _run_until_committed(loop: FastPath, log: Log, handle) -> None:
    """Run the loop until every record's offset is committed (or 2,000 short waits pass)."""
    task = asyncio.create_task(loop._run(handle))
    for _ in range(2000):
        if all(log.committed[tp] == PER_PARTITION for tp in PARTITIONS):
            break
        await asyncio.sleep(0.001)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _fast_sleep(sleep):
    async def fast(delay: float) -> None:  # the loop's 1 s pause after a failure, shortened
        await sleep(min(delay, 0.002))

    return fast


class Producer:
    """aiokafka's batch API, each batch answered when the test says so."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, asyncio.Future]] = []
        self.batches: list[list[bytes]] = []  # the values of each batch sent

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1}

    def create_batch(self) -> list:
        class Batch(list):
            def append(self, key, value, timestamp, headers):  # type: ignore[override]
                super().append(value)
                return True

        return Batch()

    async def send_batch(self, batch, topic: str, partition: int) -> asyncio.Future:
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.sent.append((topic, partition, future))
        self.batches.append(list(batch))
        return future


async def test_a_send_fails_only_once_all_its_batches_are_answered_and_the_next_waits_for_them():
    """A failed send that left a batch in flight, retried by the producer, would overlap the batch
    the caller sends again after a rewind: never two batches of one sender on a partition."""
    from driftloop.fastpath import BatchSender

    producer = Producer()
    sender = BatchSender(producer)  # type: ignore[arg-type]
    outputs = [Output("out", None, b"a"), Output("out", None, b"b")]  # partitions 0 and 1
    first = asyncio.create_task(sender.send(outputs))
    await asyncio.sleep(0.01)
    (_, _, p0), (_, _, p1) = producer.sent
    p0.set_exception(RuntimeError("partition 0 refused"))
    await asyncio.sleep(0.01)
    assert not first.done(), "the send gave up while partition 1's batch was still in flight"
    p1.set_result(None)
    with pytest.raises(RuntimeError, match="partition 0 refused"):
        await first

    # a send cancelled (a timeout) leaves its batches in flight: the next one waits for them
    cancelled = asyncio.create_task(sender.send(outputs))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    second = asyncio.create_task(sender.send(outputs))
    await asyncio.sleep(0.01)
    assert len(producer.sent) == 4, "a batch went out next to one still in flight"
    for _, _, future in producer.sent[2:]:
        future.set_result(None)
    await asyncio.sleep(0.01)
    assert len(producer.sent) == 6
    for _, _, future in producer.sent[4:]:
        future.set_result(None)
    await second


async def test_keyed_outputs_go_to_the_partition_every_kafka_client_picks():
    from aiokafka.partitioner import DefaultPartitioner

    from driftloop.fastpath import BatchSender

    producer = Producer()
    sender = BatchSender(producer)  # type: ignore[arg-type]
    keys = [f"user-{i}".encode() for i in range(40)] * 2  # each key twice: the second from the cache
    task = asyncio.create_task(sender.send([Output("out", k, k) for k in keys]))
    await asyncio.sleep(0.01)
    for _, _, future in producer.sent:
        future.set_result(None)
    await task
    sent_to = {
        partition: set(batch)
        for (_, partition, _), batch in zip(producer.sent, producer.batches, strict=True)
    }
    expected = {p: {k for k in keys if DefaultPartitioner()(k, [0, 1], [0, 1]) == p} for p in (0, 1)}
    assert sent_to == expected


class PerRecord:
    """A counter that remembers what it was increased for (a metric child, for a `Tally`)."""

    def __init__(self, key: tuple[int, int], seen: dict) -> None:
        self.key, self.seen = key, seen

    def inc(self, amount: float) -> None:
        self.seen[self.key] = self.seen.get(self.key, 0) + amount


POISON = (1, 7)  # partition, offset


@pytest.mark.parametrize("send_fails_on", [set(), {2}])
async def test_a_record_that_fails_alone_is_dead_lettered_and_every_other_record_flows(
    send_fails_on, monkeypatch
):
    monkeypatch.setattr(asyncio, "sleep", _fast_sleep(asyncio.sleep))
    log = Log()
    loop = FastPath(ServiceSettings(kafka_max_records=6), "test", TOPIC, "group")
    sender = Sender(log, send_fails_on)
    loop.attach(log, sender)  # type: ignore[arg-type]
    counted: dict = {}
    attempts: list[list[tuple[int, int]]] = []

    async def handle(records: list[ConsumerRecord]) -> Handled:
        attempts.append([(r.partition, r.offset) for r in records])
        tally = Tally()
        for record in records:  # counted as the handler goes: applied only once committed
            tally.inc(PerRecord((record.partition, record.offset), counted))
        if POISON in attempts[-1]:
            raise ValueError("year 11476 is out of range \ud800")
        return Handled(
            [Output("out", None, b"%d:%d" % (r.partition, r.offset)) for r in records], tally=tally
        )

    await _run_until_committed(loop, log, handle)

    assert log.committed == dict.fromkeys(PARTITIONS, PER_PARTITION)
    assert log.sent == {(p, o) for p in range(2) for o in range(PER_PARTITION)}
    (letter,) = sender.dead
    assert (letter.source_partition, letter.source_offset) == POISON
    assert letter.reason == PROCESSING_FAILED and letter.error_type == "ValueError"
    assert "year 11476" in letter.detail and letter.service == "test"
    assert [POISON] in attempts, "the record was not tried alone"
    # every other record counted exactly once, however often its batch was handled
    assert counted == {(p, o): 1 for p in range(2) for o in range(PER_PARTITION) if (p, o) != POISON}
    assert loop.failures == 0 and loop.stalled() is None


@pytest.mark.parametrize("send_fails_on", [set(), {2}])
async def test_every_record_is_counted_once_by_topic_and_outcome(send_fails_on, monkeypatch):
    """Dead letters count as rejected, outcomes the handler reports as reported, a record that fails
    alone as rejected, the rest as ok: once each, however often a batch was handled."""
    monkeypatch.setattr(asyncio, "sleep", _fast_sleep(asyncio.sleep))
    log = Log()
    service = f"counting-{len(send_fails_on)}"
    loop = FastPath(ServiceSettings(kafka_max_records=6), service, TOPIC, "group")
    loop.attach(log, Sender(log, send_fails_on))  # type: ignore[arg-type]

    async def handle(records: list[ConsumerRecord]) -> Handled:
        if POISON in [(r.partition, r.offset) for r in records]:
            raise ValueError("a bug")
        out = Outbox(Topics().events_dlq)
        out.dead_letters([dead_letter(service, r, "invalid", "no") for r in records if r.offset % 5 == 0])
        out.outputs += [Output("out", None, b"%d:%d" % (r.partition, r.offset)) for r in records]
        out.count(TOPIC, "duplicate", sum(r.offset % 7 == 1 for r in records))
        return out.handled()

    await _run_until_committed(loop, log, handle)

    def counted(outcome: str) -> float | None:
        labels = {"service": service, "topic": TOPIC, "outcome": outcome}
        return REGISTRY.get_sample_value("driftloop_messages_total", labels)

    offsets = range(PER_PARTITION)
    rejected = 2 * sum(o % 5 == 0 for o in offsets) + 1  # and the poison record
    duplicate = 2 * sum(o % 7 == 1 for o in offsets)
    assert (counted("rejected"), counted("duplicate")) == (rejected, duplicate)
    assert counted("ok") == 2 * PER_PARTITION - rejected - duplicate


def test_a_batch_of_several_topics_is_counted_by_topic_and_an_outcome_beyond_it_is_not():
    loop = FastPath(ServiceSettings(), "counting-topics", ["a", "b"], "group")
    loop._count({"a": 5, "b": 3}, {("a", "rejected"): 2, ("b", "duplicate"): 3, ("c", "rejected"): 1})
    loop._count({"b": 4}, {("b", "rejected"): 5})  # more than the batch holds: not counted

    def counted(topic: str, outcome: str) -> float | None:
        labels = {"service": "counting-topics", "topic": topic, "outcome": outcome}
        return REGISTRY.get_sample_value("driftloop_messages_total", labels)

    assert (counted("a", "ok"), counted("a", "rejected")) == (3, 2)
    assert (counted("b", "ok"), counted("b", "duplicate"), counted("b", "rejected")) == (4, 3, None)
    assert counted("c", "rejected") is None
    with pytest.raises(ValueError, match="-1 duplicate"):
        Outbox("dlq").count("a", "duplicate", -1)


async def test_an_infrastructure_fault_is_retried_until_it_heals_and_never_dead_lettered(monkeypatch):
    monkeypatch.setattr(asyncio, "sleep", _fast_sleep(asyncio.sleep))
    log = Log()
    loop = FastPath(ServiceSettings(kafka_max_records=6, stall_after_s=0.001), "test", TOPIC, "group")
    sender = Sender(log, set())
    loop.attach(log, sender)  # type: ignore[arg-type]
    calls, health = 0, []

    async def handle(records: list[ConsumerRecord]) -> list[Output]:
        nonlocal calls
        calls += 1
        if calls <= 30:  # Redis is down for a while
            await asyncio.sleep(0.002)
            health.append((loop.health(), loop.stalled()))
            raise ConnectionRefusedError("redis went away")
        return [Output("out", None, b"%d:%d" % (r.partition, r.offset)) for r in records]

    await _run_until_committed(loop, log, handle)

    assert sender.dead == [], "an outage dead-lettered records"
    assert log.sent == {(p, o) for p in range(2) for o in range(PER_PARTITION)}
    failing, why = health[-1]
    assert failing.failures == 29 and "ConnectionRefusedError: redis went away" in (failing.last_error or "")
    assert why is not None and "no commit for" in why and "redis went away" in why
    assert loop.failures == 0 and loop.last_error is None


def test_lag_counts_from_the_committed_offsets_and_a_consumer_is_stalled_only_while_records_wait():
    log = Log()
    loop = FastPath(ServiceSettings(stall_after_s=0.05), "test", TOPIC, "group")
    loop.consumer = log  # type: ignore[assignment]
    loop.committed = dict.fromkeys(PARTITIONS, 10)  # 5 records wait in each partition
    loop._observe_lag()
    assert loop.health().lag == 10 and loop.stalled() is None  # not for long yet
    loop._progress -= 1.0
    loop._observe_lag()
    assert loop.stalled() is not None and loop.health().stalled_s >= 1.0
    loop.committed = dict.fromkeys(PARTITIONS, PER_PARTITION)  # caught up
    loop._observe_lag()
    assert loop.health().lag == 0 and loop.stalled() is None
    # a loop whose handler may take long (a training run) is stalled only while it fails
    slow = FastPath(ServiceSettings(stall_after_s=0.05), "test", TOPIC, "group", may_block=True)
    slow.consumer, slow.committed = log, dict.fromkeys(PARTITIONS, 10)  # type: ignore[assignment]
    slow._progress -= 1.0
    slow._observe_lag()
    assert slow.stalled() is None
    slow.failures, slow.last_error = 3, "ValueError: x"
    assert "ValueError: x" in (slow.stalled() or "")


async def test_a_fetch_that_raises_is_retried_and_the_loop_never_ends(monkeypatch):
    # a corrupt batch on the broker, a seek that fails: the loop reports it and tries again
    monkeypatch.setattr(asyncio, "sleep", _fast_sleep(asyncio.sleep))
    log = Log()
    loop = FastPath(ServiceSettings(kafka_max_records=6, stall_after_s=0.001), "test", TOPIC, "group")
    loop.attach(log, Sender(log, set()))  # type: ignore[arg-type]
    real_getmany, fails, seen = log.getmany, [0], []

    async def getmany(timeout_ms: int, max_records: int) -> dict:
        if fails[0] < 5:
            fails[0] += 1
            await asyncio.sleep(0.002)
            seen.append(loop.stalled())
            raise RuntimeError("CorruptRecordException: the record is corrupt")
        return await real_getmany(timeout_ms, max_records)

    log.getmany = getmany  # type: ignore[method-assign]

    async def handle(records: list[ConsumerRecord]) -> list[Output]:
        return [Output("out", None, b"%d:%d" % (r.partition, r.offset)) for r in records]

    await _run_until_committed(loop, log, handle)
    assert log.committed == dict.fromkeys(PARTITIONS, PER_PARTITION)
    assert seen[-1] is not None and "CorruptRecordException" in seen[-1], seen


async def test_a_batch_fetched_before_a_rebalance_is_not_handled_or_committed(monkeypatch):
    # batch 1's send fails; while batch 2 is on its way, the group rebalances: the revocation
    # settles batch 1 (it must come again) and the same partitions come back, positions from the
    # committed offsets. Batch 2, fetched before all that, must not be committed: that would
    # commit past batch 1's records, which never went out.
    monkeypatch.setattr(asyncio, "sleep", _fast_sleep(asyncio.sleep))
    log = Log()
    loop = FastPath(ServiceSettings(kafka_max_records=6), "test", TOPIC, "group")
    loop.attach(log, Sender(log, fail_on={1}, ack_s=0.01))  # type: ignore[arg-type]
    from driftloop.kafka import TruncationWatch

    real_fetched, fetches = TruncationWatch.fetched, [0]

    async def fetched(watch: TruncationWatch, count: int) -> bool:  # the loop's first await after a fetch
        fetches[0] += bool(count)
        if fetches[0] == 2 and count:  # the rebalance, as _DrainOnRevoke and aiokafka do it
            failed = await loop.settle()
            if failed is not None:
                loop.rewind([failed])
            loop.generation += 1
            log.positions = dict(log.committed)
        return await real_fetched(watch, count)

    monkeypatch.setattr(TruncationWatch, "fetched", fetched)
    real_commit, refused = log.commit, []

    async def commit(offsets: dict[TopicPartition, int]) -> None:
        try:
            await real_commit(offsets)
        except AssertionError as exc:  # the loop would only retry: remember it happened
            refused.append(str(exc))
            raise

    log.commit = commit  # type: ignore[method-assign]

    async def handle(records: list[ConsumerRecord]) -> list[Output]:
        return [Output("out", None, b"%d:%d" % (r.partition, r.offset)) for r in records]

    await _run_until_committed(loop, log, handle)
    assert refused == [], "a commit went past records that were never sent"
    assert log.committed == dict.fromkeys(PARTITIONS, PER_PARTITION)
    assert log.sent == {(p, o) for p in range(2) for o in range(PER_PARTITION)}


async def test_a_failure_after_the_commit_does_not_bring_the_batch_back(monkeypatch):
    monkeypatch.setattr(asyncio, "sleep", _fast_sleep(asyncio.sleep))
    log = Log()
    loop = FastPath(ServiceSettings(kafka_max_records=6), "test", TOPIC, "group")
    loop.attach(log, Sender(log, set()))  # type: ignore[arg-type]
    counted: dict = {}

    class Broken:
        def inc(self, amount: float) -> None:
            raise ValueError("a metric that cannot be set")

    async def handle(records: list[ConsumerRecord]) -> Handled:
        tally = Tally()
        for record in records:
            tally.inc(PerRecord((record.partition, record.offset), counted))
        tally.inc(Broken())
        return Handled(
            [Output("out", None, b"%d:%d" % (r.partition, r.offset)) for r in records], tally=tally
        )

    await _run_until_committed(loop, log, handle)
    assert counted == {(p, o): 1 for p in range(2) for o in range(PER_PARTITION)}
    assert loop.failures == 0


async def test_a_rebalance_stops_the_search_for_a_bad_record_and_the_rest_comes_again(monkeypatch):
    # the search holds the loop's lock for up to two handler calls per record: a rebalance (or a
    # stop) that waits for it makes it rewind what it has not done yet and let go
    monkeypatch.setattr(asyncio, "sleep", _fast_sleep(asyncio.sleep))
    log = Log()
    loop = FastPath(ServiceSettings(kafka_max_records=6), "test", TOPIC, "group")
    sender = Sender(log, set())
    loop.attach(log, sender)  # type: ignore[arg-type]
    calls, revoked = 0, []

    async def revoke() -> None:  # what _DrainOnRevoke does: flag, then wait for the lock
        loop.revoking = True
        async with loop.in_flight:
            revoked.append(calls)
        loop.revoking = False

    async def handle(records: list[ConsumerRecord]) -> list[Output]:
        nonlocal calls
        calls += 1
        if calls == 5:  # the search is under way: a rebalance comes
            asyncio.get_running_loop().create_task(revoke())
        if POISON in [(r.partition, r.offset) for r in records]:
            raise ValueError("bad record")
        return [Output("out", None, b"%d:%d" % (r.partition, r.offset)) for r in records]

    await _run_until_committed(loop, log, handle)
    assert log.committed == dict.fromkeys(PARTITIONS, PER_PARTITION)
    assert [(d.source_partition, d.source_offset) for d in sender.dead] == [POISON]
    assert revoked and revoked[0] <= 7, "the rebalance waited for the whole search"
    assert len(log.seeks) >= 1, "what the search had not done was not rewound"


def test_observe_many_counts_like_observing_each_value():
    from prometheus_client import CollectorRegistry, Histogram

    from driftloop.metrics import observe_many

    registry = CollectorRegistry()
    one = Histogram("one", "", ["k"], buckets=(0.01, 0.1, 1), registry=registry).labels("a")
    many = Histogram("many", "", ["k"], buckets=(0.01, 0.1, 1), registry=registry).labels("a")
    values = [0.0, 0.01, 0.05, 0.1, 0.5, 2.0, 30.0]
    for value in values:
        for _ in range(3):
            one.observe(value)
    observe_many(many, values, times=3)
    observe_many(many, [])
    samples = {
        m.name: {
            (s.name[len(m.name) :], s.labels.get("le")): s.value for s in m.samples if "created" not in s.name
        }
        for m in registry.collect()
    }
    one_sum, many_sum = samples["one"].pop(("_sum", None)), samples["many"].pop(("_sum", None))
    assert samples["many"] == samples["one"] and samples["many"][("_count", None)] == 21
    assert many_sum == pytest.approx(one_sum) == pytest.approx(3 * sum(values))


class LateLog(Log):
    """A log whose records `late` of partition 0 are readable only from the `after`-th fetch on,
    the records past them before that, as the embedded broker serves them when producers write one
    partition at once (a consumer that takes the later ones moves past the late ones)."""

    def __init__(self, late: range, after: int) -> None:
        super().__init__()
        self.late, self.after, self.fetches = late, after, 0

    async def getmany(self, timeout_ms: int, max_records: int) -> dict:
        self.fetches += 1
        fetched = await super().getmany(timeout_ms, max_records)
        tp = PARTITIONS[0]
        if self.fetches < self.after and tp in fetched:
            fetched[tp] = [r for r in fetched[tp] if r.offset not in self.late]
        return {tp: records for tp, records in fetched.items() if records}


@pytest.mark.parametrize("per_fetch", [4, 12])  # 2 records a partition a fetch, or 6: gaps before or among
@pytest.mark.parametrize(
    ("after", "wait_ms", "skipped"), [(3, 250, False), (6, 250, False), (10_000, 20, True), (10_000, 0, True)]
)
async def test_records_a_broker_serves_late_are_read_again_before_the_ones_after_them(
    per_fetch, after, wait_ms, skipped, monkeypatch
):
    """A fetch with a gap in a partition's offsets (before its records or among them) reads the
    partition again from the gap for up to `kafka_gap_wait_ms`; a gap that outlasts it (a
    transaction's marker) is passed."""
    monkeypatch.setattr(asyncio, "sleep", _fast_sleep(asyncio.sleep))
    log = LateLog(range(2, 5), after)
    settings = ServiceSettings(kafka_max_records=per_fetch, kafka_gap_wait_ms=wait_ms)
    loop = FastPath(settings, "test", TOPIC, "group")
    loop.attach(log, Sender(log, set()))  # type: ignore[arg-type]
    handled: list[tuple[int, int]] = []

    async def handle(records: list[ConsumerRecord]) -> list[Output]:
        handled.extend((r.partition, r.offset) for r in records)
        return [Output("out", None, b"%d:%d" % (r.partition, r.offset)) for r in records]

    if skipped:  # the records passed over are never sent: the fake log's commit would refuse them
        log.sent.update((0, o) for o in log.late)
    gaps = {outcome: _gaps(loop.name, outcome) for outcome in ("reread", "passed")}
    await _run_until_committed(loop, log, handle)

    first = [o for p, o in handled if p == 0]
    assert first == [o for o in range(PER_PARTITION) if not skipped or o not in log.late]
    assert [o for p, o in handled if p == 1] == list(range(PER_PARTITION))
    rereads = _gaps(loop.name, "reread") - gaps["reread"]
    assert rereads == 0 if wait_ms == 0 else rereads >= 1
    assert _gaps(loop.name, "passed") - gaps["passed"] == skipped


class Fetches:
    """A consumer whose fetches are given in advance (partition 0 of `TOPIC`), recording seeks."""

    def __init__(self, *fetches: list[int]) -> None:
        self.fetches = list(fetches)
        self.seeks: list[int] = []

    async def getmany(self, timeout_ms: int, max_records: int | None) -> dict:
        offsets = self.fetches.pop(0)
        return {
            PARTITIONS[0]: [ConsumerRecord(TOPIC, 0, o, 0, 0, None, b"", None, 0, 1, ()) for o in offsets]
        }

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append(offset)


def _offsets(fetched: dict) -> list[int]:
    return [r.offset for records in fetched.values() for r in records]


async def test_a_guard_checks_every_hole_of_a_fetch_and_resumes_where_an_assignment_says():
    from driftloop.kafka import GapGuard

    now = [0.0]
    consumer = Fetches([0, 1, 4, 5, 8, 9], [2, 3, 4, 5, 8, 9], [6, 7, 8, 9], [12, 13], [3, 4])
    guard = GapGuard(consumer, wait_s=1.0, clock=lambda: now[0], pause_s=0)  # type: ignore[arg-type]
    assert _offsets(await guard.getmany(0)) == [0, 1] and consumer.seeks == [2]  # the first hole
    assert _offsets(await guard.getmany(0)) == [2, 3, 4, 5] and consumer.seeks == [2, 6]  # the second
    now[0] = 5.0  # offsets 10-11 never come: passed once the wait is over, the rest kept
    assert _offsets(await guard.getmany(0)) == [6, 7, 8, 9]
    assert _offsets(await guard.getmany(0)) == [] and consumer.seeks == [2, 6, 10]
    now[0] = 10.0
    consumer.fetches.insert(0, [12, 13])
    assert _offsets(await guard.getmany(0)) == [12, 13]
    assert _offsets(await guard.getmany(0)) == [3, 4]  # going back (a rewind) is no hole
    # a new assignment: positions as the group says, unless a fetch came first
    guard.reset()
    consumer.fetches = [[20, 21]]
    assert _offsets(await guard.getmany(0)) == [20, 21]
    guard.expect({PARTITIONS[0]: 15})  # the committed offset, learnt after that fetch: not a hole
    assert guard.expected[PARTITIONS[0]] == 22
    # a compacted topic has holes by design
    compacted = GapGuard(Fetches([0, 5, 9]), compacted=[TOPIC])  # type: ignore[arg-type]
    assert _offsets(await compacted.getmany(0)) == [0, 5, 9]


def _gaps(consumer: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "driftloop_consumer_offset_gaps_total", {"consumer": consumer, "outcome": outcome}
    )
    return value or 0.0
