"""`make bench-broker`: what the embedded broker (tansu 0.6, `memory://` storage, as the local stack
runs it) costs as it fills. tansu keeps every record it was sent (it applies no retention), and
each fetch costs more the more it holds, in any topic. Measured here: one hop (produce -> consume)
at 1,000 records/s of 200 bytes for 10 s, its latency and the broker's CPU share, on a fresh
broker and again after loading records into another topic and into the hop's own topic. The
whole local stack writes about six records per labelled request (request, result, feedback,
labelled row, validated row, feature row): at 1,000 requests/s, a million records every three
minutes.

Usage: python -m bench.broker
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from bench.common import start_broker_and_redis, stop_processes, table, write
from bench.stack import Cpu
from bench.traffic import Reader, latency, offered_load
from driftloop.fastpath import BatchSender, Output
from driftloop.kafka import ensure_topics
from driftloop.settings import ServiceSettings

RATE, SECONDS, VALUE = 1_000, 10, b"x" * 200
LOADS = [  # (records, records per send) to another topic: large sends make few broker batches
    (1_000_000, 5_000),
    (1_000_000, 5_000),
    (30_000, 3),
    (30_000, 3),
]


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


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="driftloop-bench-broker-") as tmp:
        processes, bootstrap, _ = start_broker_and_redis(Path(tmp))
        try:
            phases = asyncio.run(run(bootstrap, processes[0].pid))
        finally:
            stop_processes(processes)
    fresh = phases[0]
    figures = {
        "phases": phases,
        "rate_per_s": RATE,
        "cpu_full_over_fresh": round(phases[-1]["broker_cpu_percent"] / fresh["broker_cpu_percent"], 2),
        "p99_full_over_fresh": round(phases[-1]["p99"] / fresh["p99"], 2),
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
            ],
        )
    )
    print(f"\nwrote {write('broker', figures)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
