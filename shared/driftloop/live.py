"""A labelled history played through the running stack as an application would: the first rows as
labelled observations and a bootstrap `TrainModel`, then every row as a prediction request (its
Kafka timestamp is the row's event time), and its label as feedback once `delay_rows` more rows
were sent. Every answer is scored as it comes: the prequential accuracy of the live loop, to set
beside `driftloop backtest`'s figure for the same rows, delay and spec (`make bench-learning-live`).

Event times are shifted as a block so the last row falls a day before now: Kafka timestamps cannot
be negative (some histories start before 1970) and ingest refuses event times in the future.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from driftloop.client import make_producer, send_all
from driftloop.contracts import DriftDetected, Feedback, Observation, PredictionRequest, TrainModel
from driftloop.demo import Watcher, wait_until
from driftloop.settings import Topics

Row = tuple[dict[str, Any], Any, datetime]


@dataclass
class LiveRun:
    """What the live loop served: per row after the first `initial`, correct or not, and by which
    version; the versions promoted, and when (the row being sent)."""

    initial: int
    correct: list[bool] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # the reason a row failed ("" when answered)
    promotions: list[tuple[int, str]] = field(default_factory=list)  # (version, command id)
    drifts: list[DriftDetected] = field(default_factory=list)  # concept drift the monitor reported
    seconds: float = 0.0

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct) if self.correct else float("nan")


def shifted(rows: Sequence[Row], now: datetime) -> list[Row]:
    """The rows with their event times moved as a block to end a day before `now`."""
    offset = (now - timedelta(days=1)) - rows[-1][2]
    return [(x, y, t + offset) for x, y, t in rows]


async def play(
    bootstrap: str,
    model: str,
    rows: Sequence[Row],
    initial: int,
    delay_rows: int,
    rate_per_s: float,
    topics: Topics | None = None,
    timeout_s: float = 600.0,
    progress: Any = None,
    shift: bool = True,
) -> LiveRun:
    """Play `rows` (in event-time order) through the stack at `rate_per_s` requests a second (their
    event times `shifted` first, unless `shift` is false)."""
    topics = topics or Topics()
    rows = shifted(rows, datetime.now(UTC)) if shift else rows
    run_id = uuid.uuid4().hex[:8]
    started = time.monotonic()
    watcher = await Watcher.tail(bootstrap, topics)
    producer = make_producer(bootstrap)
    await producer.start()
    run = LiveRun(initial)
    try:
        await first_model(producer, watcher, topics, model, rows[:initial], run_id, timeout_s)
        await _traffic(producer, topics, watcher, model, rows, initial, delay_rows, rate_per_s, run_id, run,
                       timeout_s, progress)  # fmt: skip
        run.promotions = [(p.version, p.command_id or "") for p in watcher.promotions if p.model == model]
        run.drifts = [d for d in watcher.drifts if d.model == model]
    finally:
        await producer.stop()
        await watcher.close()
    run.seconds = time.monotonic() - started
    return run


async def first_model(
    producer: Any,
    watcher: Watcher,
    topics: Topics,
    model: str,
    rows: Sequence[Row],
    run_id: str,
    timeout_s: float,
) -> None:
    """Send `rows` as labelled observations and a bootstrap `TrainModel` on all of them; return once
    a version of `model` is promoted."""
    history = [
        Observation(event_id=f"{run_id}-h{i}", model=model, features=x, label=y, event_time=t)
        for i, (x, y, t) in enumerate(rows)
    ]
    for start in range(0, len(history), 1_000):
        await send_all(
            producer, topics.events_raw, history[start : start + 1_000], key_of=lambda o: o.event_id
        )
    command = TrainModel(
        command_id=f"{run_id}-bootstrap", model=model, reason="bootstrap", min_rows=len(rows)
    )
    await send_all(producer, topics.training_requests, [command])
    await wait_until(lambda: any(p.model == model for p in watcher.promotions), timeout_s, "the first model")
    await _serving(producer, watcher, topics, model, rows[0][0], run_id, timeout_s)


async def _serving(
    producer: Any,
    watcher: Watcher,
    topics: Topics,
    model: str,
    x: dict[str, Any],
    run_id: str,
    timeout_s: float,
) -> None:
    """Return once inference answers `model` (a promotion is announced before inference has loaded
    the version): one unlabelled probe request every half second until one is answered."""
    deadline = time.monotonic() + timeout_s
    for n in itertools.count():
        request_id = f"{run_id}-probe{n}"
        probe = PredictionRequest(request_id=request_id, model=model, features=x)
        await send_all(producer, topics.predictions_requests, [probe], key_of=lambda r: r.request_id)
        for _ in range(10):
            await asyncio.sleep(0.05)
            if any(a.request_id == request_id and not a.error for a in watcher.results):
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"inference did not serve {model} within {timeout_s:.0f}s of its promotion")


async def _traffic(
    producer: Any,
    topics: Topics,
    watcher: Watcher,
    model: str,
    rows: Sequence[Row],
    initial: int,
    delay_rows: int,
    rate_per_s: float,
    run_id: str,
    run: LiveRun,
    timeout_s: float,
    progress: Any,
) -> None:
    truth: dict[str, tuple[int, Any]] = {}
    answered: dict[int, tuple[bool, int, str]] = {}
    labels: deque[tuple[int, str, Any]] = deque()  # (row, request id, label) awaiting their turn
    row, started, tick = initial, time.monotonic(), 0.02
    while len(answered) < len(rows) - initial:
        due = min(len(rows), initial + int((time.monotonic() - started) * rate_per_s) + 1)
        requests = []
        for i in range(row, due):
            x, y, event_time = rows[i]
            request_id = f"{run_id}-r{i}"
            truth[request_id] = (i, y)
            labels.append((i, request_id, y))
            requests.append((PredictionRequest(request_id=request_id, model=model, features=x), event_time))
        for start in range(0, len(requests), 500):
            await _send_at(producer, topics.predictions_requests, requests[start : start + 500])
        row = due
        feedback = []
        while labels and (labels[0][0] + delay_rows < row or row == len(rows)):
            _, request_id, label = labels.popleft()
            feedback.append(Feedback(request_id=request_id, model=model, label=label))
        await send_all(producer, topics.predictions_feedback, feedback, key_of=lambda f: f.request_id)
        while watcher.results:
            answer = watcher.results.popleft()
            if answer.request_id in truth:
                i, y = truth.pop(answer.request_id)
                answered[i] = (answer.prediction == str(y), answer.version, answer.error)
        if progress is not None:
            progress(row, len(answered))
        if time.monotonic() - started > timeout_s:
            missing = sorted(truth)[:5]
            raise TimeoutError(
                f"{len(rows) - initial - len(answered)} requests unanswered after {timeout_s:.0f}s"
                f" (e.g. {', '.join(missing)})"
            )
        await asyncio.sleep(tick)
    for i in range(initial, len(rows)):
        correct, version, error = answered[i]
        run.correct.append(correct)
        run.versions.append(version)
        run.errors.append(error)


async def _send_at(producer: Any, topic: str, requests: Sequence[tuple[PredictionRequest, datetime]]) -> None:
    """Send requests with their row's event time as the record timestamp (the monitor's request time)."""
    from driftloop.kafka import encode

    futures = []
    for request, event_time in requests:
        stamp = int(event_time.timestamp() * 1000)
        futures.append(
            await producer.send(topic, encode(request), key=request.request_id.encode(), timestamp_ms=stamp)
        )
    await asyncio.gather(*futures)
