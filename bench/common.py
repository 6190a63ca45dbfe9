"""Shared by the benchmarks: percentiles, a printed table, and the JSON result file."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from driftloop.localstack import (
    broker_command,
    create_bucket,
    free_port,
    redis_command,
    s3_command,
    wait_port,
)

RESULTS = Path(__file__).resolve().parent / "results"


def p50(values: list[float]) -> float:
    return float(np.percentile(values, 50))


def table(title: str, rows: list[tuple[str, Any]]) -> str:
    width = max(len(name) for name, _ in rows)
    lines = [title, "-" * len(title)]
    for name, value in rows:
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"{name:<{width}}  {shown}")
    return "\n".join(lines)


def write(area: str, figures: dict[str, Any]) -> Path:
    """Write `bench/results/<area>.json` with the figures and where/when they were measured."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{area}.json"
    meta = {"measured_at": datetime.now(UTC).isoformat(), "machine": platform.platform()}
    path.write_text(json.dumps({**figures, "meta": meta}, indent=2) + "\n")
    return path


def start_broker_and_redis(tmp: Path) -> tuple[list[subprocess.Popen[bytes]], str, int]:
    """A tansu broker and a redis-server on free ports: (processes, bootstrap, redis port)."""
    kafka_port, redis_port = free_port(), free_port()
    procs = [
        subprocess.Popen(broker_command(kafka_port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen(redis_command(redis_port, tmp, False), stdout=subprocess.DEVNULL),
    ]
    wait_port(kafka_port, 20, "broker")
    wait_port(redis_port, 20, "redis")
    return procs, f"127.0.0.1:{kafka_port}", redis_port


def start_s3(bucket: str = "bench") -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """A local S3-protocol server with a bucket: (process, the services' DRIFTLOOP_OBJECT_STORE_* env)."""
    port = free_port()
    proc = subprocess.Popen(s3_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, 30, "S3 server")
    create_bucket(f"http://127.0.0.1:{port}", bucket)
    return proc, {
        "DRIFTLOOP_OBJECT_STORE_URL": f"s3://{bucket}/bench",
        "DRIFTLOOP_OBJECT_STORE_ENDPOINT": f"http://127.0.0.1:{port}",
        "DRIFTLOOP_OBJECT_STORE_REGION": "us-east-1",
        "DRIFTLOOP_OBJECT_STORE_ACCESS_KEY_ID": "bench",
        "DRIFTLOOP_OBJECT_STORE_SECRET_ACCESS_KEY": "bench",
        "DRIFTLOOP_OBJECT_STORE_ALLOW_HTTP": "true",
    }


def wait_ready(port: int, what: str, timeout: float = 60.0) -> None:
    """Poll a service's /readyz until it answers 200."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not become ready")
        time.sleep(0.2)


def stop_processes(procs: list[Any]) -> None:
    """SIGTERM in reverse start order, SIGKILL what is still there after 15 s."""
    for proc in reversed(procs):
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def batch_totals(port: int) -> tuple[float, float]:
    """(records, batches) a service has consumed so far, from its `driftloop_batch_size` histogram."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    totals = {"_sum": 0.0, "_count": 0.0}
    for line in text.splitlines():
        for suffix in totals:
            if line.startswith(f"driftloop_batch_size{suffix}{{"):
                totals[suffix] += float(line.rsplit(" ", 1)[1])
    return totals["_sum"], totals["_count"]
