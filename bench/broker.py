"""`make bench-broker`: what the embedded broker (tansu 0.6, `memory://` storage, as the local stack
runs it) costs as it fills. tansu keeps every record it was sent (it applies no retention), and
each fetch costs more the more it holds, in any topic. Measured here: one hop (produce -> consume)
at 1,000 records/s of 200 bytes for 10 s, its latency and the broker's CPU share, on a fresh
broker and again after loading records into another topic and into the hop's own topic. The
whole local stack writes about six records per labelled request (request, result, feedback,
labelled row, validated row, feature row): at 1,000 requests/s, a million records every three
minutes.

Then what happens when producers write the same partitions at once: three senders with a producer
each, and three sharing one producer, each sending `RACE_RECORDS` keyed records at `RACE_RATE` a
second; two consumers read meanwhile, one plain and one through `driftloop.kafka.GapGuard`. Lost:
acknowledged and not on the topic read from its start afterwards; missed: on the topic, never
seen by the consumer reading meanwhile. Apache Kafka has neither.

Usage: python -m bench.broker
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import start_broker_and_redis, stop_processes, table, write
from bench.stack import Cpu
from bench.traffic import Reader, latency, offered_load
from driftloop.client import make_producer
from driftloop.fastpath import BatchSender, Output
from driftloop.kafka import GapGuard, ensure_topics, read_from_start
from driftloop.settings import ServiceSettings

RATE, SECONDS, VALUE = 1_000, 10, b"x" * 200
LOADS = [  # (records, records per send) to another topic: large sends make few broker batches
    (1_000_000, 5_000),
    (1_000_000, 5_000),
    (30_000, 3),
    (30_000, 3),
]

RACE_PRODUCERS, RACE_RECORDS, RACE_RATE, RACE_ROUNDS = 3, 6_000, 600, 6


async def hop(sender: BatchSender, reader: Reader, broker: int, tag: str) -> dict[str, float]:
    """Latency of one hop at `RATE` records/s for `SECONDS`, and the broker's CPU meanwhile."""
    items = [(f"{tag}-{i}".encode(), VALUE) for i in range(RATE * SECONDS)]
    cpu = Cpu({"broker": broker})
    sent, _ = await offered_load(sender, reader, "hop", items, RATE)
    return {
        **{k: round(v, 2) for k, v in latency(sent, reader).items()},
        "broker_cpu_percent": round(cpu.shares()["broker"], 1),
    }


async def fill(sender: BatchSender, topic: str, n: int, per_send: int) -> None:
    """`n` records in sends of `per_send` (each send: one broker batch per partition it touches)."""
    for start in range(0, n, per_send):
        await sender.send([Output(topic, str(i).encode(), VALUE) for i in range(start, start + per_send)])


async def _send_at_rate(producer: Any, topic: str, tag: str) -> None:
    started, sent = time.monotonic(), 0
    while sent < RACE_RECORDS:
        due = min(RACE_RECORDS, int((time.monotonic() - started) * RACE_RATE) + 1)
        keys = [f"{tag}-{i}".encode() for i in range(sent, due)]
        await asyncio.gather(*[await producer.send(topic, key, key=key) for key in keys])
        sent = due
        await asyncio.sleep(0.02)


async def _tail(reader: Any, found: set[bytes], done: asyncio.Event) -> None:
    """Read as records come (`reader`: a consumer or a `GapGuard`) until `done` and quiet for 2 s."""
    quiet = 0.0
    while not (done.is_set() and quiet > 2.0):
        fetched = await reader.getmany(timeout_ms=100, max_records=500)
        quiet = 0.0 if fetched else quiet + 0.1
        for records in fetched.values():
            found.update(r.key for r in records)


async def race(bootstrap: str, topic: str, shared: bool) -> dict[str, int]:
    """When `RACE_PRODUCERS` senders write `topic` at once, with a producer each or (`shared`)
    through one: records lost from the topic, and records a consumer reading meanwhile never got,
    plain and through a `GapGuard`."""
    await ensure_topics(ServiceSettings(kafka_bootstrap=bootstrap), [topic])
    producers = [make_producer(bootstrap) for _ in range(1 if shared else RACE_PRODUCERS)]
    await asyncio.gather(*(p.start() for p in producers))
    plain, guarded = await read_from_start(bootstrap, topic, 20), await read_from_start(bootstrap, topic, 20)
    gaps = GapGuard(guarded, name="bench")
    await gaps.from_positions()
    seen: dict[str, set[bytes]] = {"plain": set(), "guarded": set()}
    done = asyncio.Event()
    tails = [asyncio.create_task(_tail(r, seen[k], done)) for k, r in (("plain", plain), ("guarded", gaps))]
    tags = [f"{topic}-{k}" for k in range(RACE_PRODUCERS)]
    senders = [_send_at_rate(producers[k % len(producers)], topic, tag) for k, tag in enumerate(tags)]
    try:
        await asyncio.gather(*senders)
        done.set()
        await asyncio.gather(*tails)
    finally:
        for task in tails:
            task.cancel()
        await asyncio.gather(*(p.stop() for p in producers), plain.stop(), guarded.stop())
    stored: set[bytes] = set()
    consumer = await read_from_start(bootstrap, topic)
    try:
        await _tail(consumer, stored, _set(asyncio.Event()))
    finally:
        await consumer.stop()
    sent = RACE_PRODUCERS * RACE_RECORDS
    return {
        "lost": sent - len(stored),
        "missed_plain": len(stored - seen["plain"]),
        "missed_guarded": len(stored - seen["guarded"]),
    }


def _set(event: asyncio.Event) -> asyncio.Event:
    event.set()
    return event


async def run(bootstrap: str, broker: int) -> list[dict[str, Any]]:
    await ensure_topics(ServiceSettings(kafka_bootstrap=bootstrap), ["hop", "bulk"])
    sender = await BatchSender.connect(bootstrap, "bench-broker")
    reader = Reader(bootstrap, "hop")
    await reader.start()
    phases: list[dict[str, Any]] = []
    held = 0
    try:
        for round_ in range(2):  # the second: after the first round's 10,000 records, in small sends
            name = "fresh" if round_ == 0 else "after that round"
            phases.append({"phase": name, **await hop(sender, reader, broker, f"f{round_}")})
            held += RATE * SECONDS
        for i, (n, per_send) in enumerate(LOADS):
            await fill(sender, "bulk", n, per_send)
            held += n
            phase = {
                "phase": f"+{n:,} records to another topic, {per_send:,} a send",
                **await hop(sender, reader, broker, f"l{i}"),
            }
            held += RATE * SECONDS
            phases.append({**phase, "records_held": held})
            print(phases[-1], flush=True)
    finally:
        await reader.stop()
        await sender.stop()
    return phases


async def races(bootstrap: str) -> dict[str, list[dict[str, int]]]:
    """Each round: a producer per sender, then one shared."""
    figures: dict[str, list[dict[str, int]]] = {"own": [], "shared": []}
    for round_ in range(RACE_ROUNDS):
        for kind, rounds in figures.items():
            rounds.append(await race(bootstrap, f"race-{kind}-{round_}", kind == "shared"))
            print(kind, rounds[-1], flush=True)
    return figures


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="driftloop-bench-broker-") as tmp:
        processes, bootstrap, _ = start_broker_and_redis(Path(tmp))
        try:
            phases = asyncio.run(run(bootstrap, processes[0].pid))
        finally:
            stop_processes(processes)
    with tempfile.TemporaryDirectory(prefix="driftloop-bench-broker-") as tmp:
        processes, bootstrap, _ = start_broker_and_redis(Path(tmp))  # a fresh broker
        try:
            lost = asyncio.run(races(bootstrap))
        finally:
            stop_processes(processes)
    fresh = phases[0]
    figures = {
        "phases": phases,
        "rate_per_s": RATE,
        "cpu_full_over_fresh": round(phases[-1]["broker_cpu_percent"] / fresh["broker_cpu_percent"], 2),
        "p99_full_over_fresh": round(phases[-1]["p99"] / fresh["p99"], 2),
        "producers_at_once": {
            "producers": RACE_PRODUCERS,
            "records_each": RACE_RECORDS,
            "rate_per_s_each": RACE_RATE,
            "rounds_own_producers": lost["own"],
            "rounds_one_shared_producer": lost["shared"],
        },
    }
    print()
    print(
        table(
            f"bench-broker: one hop at {RATE:,} records/s on tansu (memory://) as it fills",
            [
                (p["phase"], f"p50 {p['p50']} ms  p99 {p['p99']} ms  broker CPU {p['broker_cpu_percent']}%")
                for p in phases
            ]
            + [
                ("broker CPU, full / fresh", figures["cpu_full_over_fresh"]),
                ("hop p99, full / fresh", figures["p99_full_over_fresh"]),
                *(
                    (
                        f"{RACE_PRODUCERS} senders at once, {label}: lost / missed plain / missed guarded",
                        " ".join(
                            f"{r['lost']}/{r['missed_plain']}/{r['missed_guarded']}" for r in lost[kind]
                        ),
                    )
                    for kind, label in (("own", "a producer each"), ("shared", "one producer"))
                ),
            ],
        )
    )
    print(f"\nwrote {write('broker', figures)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
