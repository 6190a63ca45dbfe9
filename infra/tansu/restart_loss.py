"""tansu 0.6 (the embedded broker) can acknowledge records it never stores, right after a restart.

No driftloop code on the path: a plain aiokafka producer sends 6 keyed records every 20 ms to a
topic of 3 partitions, one batch per partition (`send_batch`, as driftloop's hot path does). tansu is
killed, started again 5 s later (empty: it keeps topics in memory) and the topic created again; the
producer carries on. Then every record is read back from the start. Records acknowledged after the
re-creation that cannot be read are printed with the (partition, offset) tansu acknowledged them at,
next to the partitions' holes: offsets below the high watermark that hold nothing. Apache Kafka
assigns offsets only to records it appends.

    .venv/bin/python infra/tansu/restart_loss.py [rounds, default 5]
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import DefaultPartitioner

from driftloop.localstack import broker_command, free_port, wait_port

TOPIC, PARTITIONS = "t", 3
ALL = list(range(PARTITIONS))
partitioner = DefaultPartitioner()


async def create(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
    finally:
        await admin.close()


async def one_round() -> tuple[int, int, list[str]]:
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(broker_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port, 20, "broker")
        return proc

    broker = start()
    await create(bootstrap)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,
        linger_ms=1,
        max_batch_size=1 << 20,
    )
    await producer.start()
    acked: dict[bytes, tuple[float, int, int]] = {}  # value → (sent at, partition, offset)
    counter = itertools.count()

    async def load() -> None:
        while True:
            await asyncio.sleep(0.02)
            sent_at = time.monotonic()
            by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
            for _ in range(6):
                n = next(counter)
                key = f"k{n % 200}".encode()
                partition = partitioner(key, ALL, ALL)
                by_partition.setdefault(partition, []).append((key, f"m{n}".encode()))
            try:
                futures = []
                for partition, records in by_partition.items():
                    batch = producer.create_batch()
                    for key, value in records:
                        batch.append(key=key, value=value, timestamp=None)
                    futures.append(await producer.send_batch(batch, TOPIC, partition=partition))
                answers = await asyncio.wait_for(asyncio.gather(*futures), timeout=5)
            except Exception:
                continue
            for (partition, records), answer in zip(by_partition.items(), answers, strict=True):
                for i, (_, value) in enumerate(records):
                    acked[value] = (sent_at, partition, answer.offset + i)

    task = asyncio.create_task(load())
    await asyncio.sleep(3)
    broker.kill()
    broker.wait()
    await asyncio.sleep(5)
    broker = start()
    # the loop stalls for 0.3 s: the producer's retries pile up and go out while the topic is being
    # created again, as when a broker comes back and every client reconnects at once
    time.sleep(0.3)
    await create(bootstrap)
    recreated = time.monotonic()
    await asyncio.sleep(5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await producer.stop()

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    partitions = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    stored: dict[int, set[int]] = {p: set() for p in range(PARTITIONS)}
    read: set[bytes] = set()
    while batches := await consumer.getmany(timeout_ms=1000):
        for tp, records in batches.items():
            for record in records:
                stored[tp.partition].add(record.offset)
                read.add(record.value or b"")
    await consumer.stop()
    broker.kill()
    broker.wait()
    after = {v: a for v, a in acked.items() if a[0] >= recreated}
    missing = sorted((v for v in after if v not in read), key=lambda v: int(v[1:]))
    holes = {p: [o for o in range(max(offs, default=-1)) if o not in offs] for p, offs in stored.items()}
    lines = [
        f"{v.decode()} sent {after[v][0] - recreated:.3f} s after the re-creation, acknowledged at "
        f"partition {after[v][1]} offset {after[v][2]}"
        for v in missing
    ] + [f"partition {p} holds nothing at offsets {h}" for p, h in holes.items() if h]
    return len(after), len(missing), lines


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    for n in range(1, rounds + 1):
        acknowledged, missing, lines = asyncio.run(one_round())
        print(
            f"round {n}: {acknowledged} records acknowledged after the restart, {missing} of them unreadable"
        )
        for line in lines:
            print(f"  {line}")


if __name__ == "__main__":
    main()
