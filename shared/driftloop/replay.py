"""`driftloop replay`, followed through: rows go to `events.raw` (or `predictions.requests`) and
what the platform did with each one is read back from the topics it answers on.

Observations: ingest publishes an accepted one to `events.validated` and a refused one to
`events.dlq` (the dead letter carries the original bytes, so its event id); an event id it has
stored before is dropped without a word. Readers placed at the end of those topics before the first
send match the replay's own ids (`<prefix>-<n>`). What is neither accepted nor dead-lettered once
ingest's consumer group has committed past every record sent was a duplicate (ingest commits only
after its outputs are acknowledged); otherwise it is still unanswered when the wait runs out.
Requests: inference answers each on `predictions.results`, ok or with an error.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import itertools
import time
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from driftloop import kafka
from driftloop.client import make_producer
from driftloop.contracts import Observation, PredictionRequest
from driftloop.datasets import CsvRow, Refused
from driftloop.kafka import encode, tail_from_end
from driftloop.settings import Topics

INGEST_GROUP = "ingest"  # ingest's consumer group on events.raw (`IngestSettings.group_id`)
CHUNK = 1000
PENDING, ACCEPTED, REFUSED = 0, 1, 2
Target = Literal["events", "requests"]


def reason_of(error: str) -> tuple[str, str]:
    """(reason, detail) of an error text worded `reason: detail` (or a bare reason).

    >>> reason_of("out_of_range: x0=11.0 outside [0.0, 10.0]")
    ('out_of_range', 'x0=11.0 outside [0.0, 10.0]')
    >>> reason_of("no_champion")
    ('no_champion', '')
    """
    reason, _, detail = error.partition(": ")
    return reason, detail


@dataclass
class Tally:
    """What became of the messages one replay sent, by their index in the id `<prefix>-<index>`;
    and the rows it did not send. `where` words a row's place in its source (`line 7`)."""

    prefix: str
    unit: str = "line"
    state: bytearray = field(default_factory=bytearray)
    places: array[int] = field(default_factory=lambda: array("q"))
    reasons: Counter[str] = field(default_factory=Counter)
    not_sent: Counter[str] = field(default_factory=Counter)
    examples: list[tuple[int, int, str]] = field(default_factory=list)  # heap of (-place, -n, text)
    keep: int = 5

    def sent(self, place: int) -> str:
        """Record a message about to be sent from `place`; returns its id."""
        self.places.append(place)
        self.state.append(PENDING)
        return f"{self.prefix}-{len(self.state) - 1}"

    def skipped(self, refused: Refused) -> None:
        """Record a row that is not sent."""
        self.not_sent[refused.reason] += 1
        self._example(refused.line, "not sent", refused.reason, refused.detail)

    def index(self, message_id: Any) -> int | None:
        """The index of one of this replay's ids, else None."""
        if not isinstance(message_id, str):
            return None
        prefix, _, number = message_id.rpartition("-")
        if prefix != self.prefix or not number.isdigit() or int(number) >= len(self.state):
            return None
        return int(number)

    def settle(self, message_id: Any, error: tuple[str, str] | None, verdict: str = "refused") -> bool:
        """Record the platform's answer to one of this replay's messages: None for accepted, else
        (reason, detail). Only the first answer counts (a redelivery repeats it). True when new."""
        i = self.index(message_id)
        if i is None or self.state[i] != PENDING:
            return False
        if error is None:
            self.state[i] = ACCEPTED
        else:
            self.state[i] = REFUSED
            self.reasons[error[0]] += 1
            self._example(self.places[i], verdict, *error)
        return True

    def _example(self, place: int, verdict: str, reason: str, detail: str) -> None:
        """Keep the refusals of the `keep` first places."""
        text = f"{self.unit} {place}: {verdict}: {reason}{': ' + detail if detail else ''}"
        entry = (-place, -len(self.examples), text)
        if len(self.examples) < self.keep:
            heapq.heappush(self.examples, entry)
        elif entry > self.examples[0]:
            heapq.heapreplace(self.examples, entry)

    def first_refusals(self) -> list[str]:
        """The refusals (not sent, dead-lettered, errors) of the first places, in their order."""
        return [text for _, _, text in sorted(self.examples, reverse=True)]

    @property
    def total(self) -> int:
        return len(self.state)

    @property
    def accepted(self) -> int:
        return self.state.count(ACCEPTED)

    @property
    def refused(self) -> int:
        return self.state.count(REFUSED)

    @property
    def pending(self) -> int:
        return self.state.count(PENDING)


def _by_reason(counts: Counter[str]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _json(raw: bytes | None) -> dict[str, Any]:
    try:
        data = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def read_validated(tally: Tally, raw: bytes | None) -> bool:
    """An `events.validated` record: one of ours was accepted."""
    return tally.settle(_json(raw).get("event_id"), None)


def read_dead_letter(tally: Tally, raw: bytes | None, source_topic: str) -> bool:
    """An `events.dlq` record: one of ours, read from `source_topic`, was refused."""
    letter = _json(raw)
    if letter.get("source_topic") != source_topic or not isinstance(letter.get("original"), str):
        return False
    try:
        original = _json(base64.b64decode(letter["original"], validate=True))
    except ValueError:
        return False
    reason, detail = str(letter.get("reason", "?")), str(letter.get("detail", ""))
    return tally.settle(original.get("event_id"), (reason, detail), "dead-lettered")


def read_result(tally: Tally, raw: bytes | None) -> bool:
    """A `predictions.results` record: one of our requests was answered, ok or with an error."""
    result = _json(raw)
    error = result.get("error")
    return tally.settle(result.get("request_id"), None if error is None else reason_of(str(error)), "error")


def message(to: Target, model: str, message_id: str, row: CsvRow) -> Observation | PredictionRequest:
    """The contract a row becomes."""
    if to == "requests":
        return PredictionRequest(request_id=message_id, model=model, features=row.features)
    return Observation(event_id=message_id, model=model, features=row.features, label=row.label)


@dataclass
class Replay:
    """One replay: where to, for which model, how long to wait for news of the answers."""

    bootstrap: str
    topics: Topics
    model: str
    to: Target
    tally: Tally
    timeout_s: float
    progress: Callable[[int], None] | None = None
    ends: dict[int, int] = field(default_factory=dict)  # partition -> offset of our last record
    caught_up: bool = False  # ingest committed past every record sent

    @property
    def topic(self) -> str:
        return self.topics.predictions_requests if self.to == "requests" else self.topics.events_raw

    @property
    def duplicates(self) -> int:
        """Observations ingest dropped as already stored: unanswered once it handled them all."""
        return self.tally.pending if self.caught_up else 0

    @property
    def unanswered(self) -> int:
        """Messages with no answer when the wait ran out (or not followed: `timeout_s` 0)."""
        return 0 if self.caught_up else self.tally.pending

    @property
    def failed(self) -> int:
        """Messages refused or unanswered (when followed), and rows not sent."""
        unanswered = self.unanswered if self.timeout_s > 0 else 0
        return self.tally.refused + sum(self.tally.not_sent.values()) + unanswered

    def summary(self, source: str) -> list[str]:
        """What the platform did, as lines for people."""
        tally = self.tally
        ok, refused = (
            ("answered ok", "answered with error") if self.to == "requests" else ("accepted", "dead-lettered")
        )
        lines = [f"replay of {source} for model {self.model}: {tally.total} messages to {self.topic} "
                 f"(ids {tally.prefix}-<n>)"]  # fmt: skip
        rows: list[tuple[str, int, str]] = []
        if self.timeout_s > 0:
            rows += [(ok, tally.accepted, ""), (refused, tally.refused, _by_reason(tally.reasons))]
            if self.to == "events":
                rows.append(("duplicates", self.duplicates, "ids ingest had stored before: dropped"))
            rows.append(("no answer", self.unanswered, f"nothing new for {self.timeout_s:g} s"))
        else:
            lines.append("  answers not followed (--timeout 0)")
        rows.append(("not sent", sum(tally.not_sent.values()), _by_reason(tally.not_sent)))
        for name, count, why in rows:
            lines.append(f"  {name:<20} {count:>7}  {why if count else ''}".rstrip())
        return lines

    async def run(self, rows: Iterable[CsvRow | Refused]) -> None:
        """Send the rows, then follow the answers until each message has one, ingest is known to
        have handled them all, or nothing new came for `timeout_s` (0: do not follow)."""
        readers = await self._readers() if self.timeout_s > 0 else {}
        try:
            await self._send(rows)
            if readers and self.tally.pending:
                await self._follow(readers)
        finally:
            for consumer in readers.values():
                await consumer.stop()

    async def _readers(self) -> dict[str, AIOKafkaConsumer]:
        """Readers at the end of the answer topics, with what they read again from before (a
        tansu quirk: its end offset is inside the last batch) drained and dropped."""
        names = (
            [self.topics.predictions_results]
            if self.to == "requests"
            else [self.topics.events_validated, self.topics.events_dlq]
        )
        readers: dict[str, AIOKafkaConsumer] = {}
        try:
            for name in names:
                readers[name] = await tail_from_end(self.bootstrap, name)
            until = time.monotonic() + 1.0  # bounded: on a busy topic the end moves on
            while (
                any([await c.getmany(timeout_ms=50) for c in readers.values()]) and time.monotonic() < until
            ):
                pass
        except BaseException:
            for consumer in readers.values():
                await consumer.stop()
            raise
        return readers

    async def _send(self, rows: Iterable[CsvRow | Refused]) -> None:
        producer = make_producer(self.bootstrap)
        try:
            await producer.start()
            batch: list[CsvRow] = []
            for row in itertools.chain(rows, [None]):
                if isinstance(row, Refused):
                    self.tally.skipped(row)
                elif row is not None:
                    batch.append(row)
                if batch and (row is None or len(batch) == CHUNK):
                    await self._send_batch(producer, batch)
                    batch = []
        finally:
            await producer.stop()

    async def _send_batch(self, producer: AIOKafkaProducer, batch: list[CsvRow]) -> None:
        futures = []
        for row in batch:
            message_id = self.tally.sent(row.line)
            body = encode(message(self.to, self.model, message_id, row))
            futures.append(await producer.send(self.topic, body, key=message_id.encode()))
        for sent in await asyncio.gather(*futures):
            self.ends[sent.partition] = max(self.ends.get(sent.partition, -1), sent.offset)
        if self.progress:
            self.progress(self.tally.total)

    def _read(self, topic: str, raw: bytes | None) -> bool:
        if topic == self.topics.events_validated:
            return read_validated(self.tally, raw)
        if topic == self.topics.events_dlq:
            return read_dead_letter(self.tally, raw, self.topics.events_raw)
        return read_result(self.tally, raw)

    async def _follow(self, readers: dict[str, AIOKafkaConsumer]) -> None:
        last_news, quiet_rounds = time.monotonic(), 0
        async with self._ingest_offsets() as committed_past:
            while self.tally.pending:
                news = 0
                for topic, consumer in readers.items():
                    for records in (await consumer.getmany(timeout_ms=100)).values():
                        news += sum(self._read(topic, r.value) for r in records)
                now = time.monotonic()
                last_news = now if news else last_news
                quiet_rounds = 0 if news else quiet_rounds + 1
                if self.caught_up and quiet_rounds >= 2:
                    return  # its outputs were acknowledged before it committed: all read by now
                if now - last_news > self.timeout_s:
                    return
                if committed_past is not None and not self.caught_up:
                    self.caught_up = await committed_past()
                    quiet_rounds = 0

    @contextlib.asynccontextmanager
    async def _ingest_offsets(self) -> AsyncIterator[Callable[[], Awaitable[bool]] | None]:
        """A check that ingest's group committed past every record sent (observations only)."""
        if self.to == "requests" or not self.ends:
            yield None
            return
        consumer = kafka.consumer(self.bootstrap, group_id=INGEST_GROUP)
        partitions = [TopicPartition(self.topics.events_raw, p) for p in sorted(self.ends)]

        async def committed_past() -> bool:
            for tp in partitions:
                offset = await consumer.committed(tp)
                if offset is None or offset <= self.ends[tp.partition]:
                    return False
            return True

        try:
            await consumer.start()
            consumer.assign(partitions)
            yield committed_past
        finally:
            await consumer.stop()
