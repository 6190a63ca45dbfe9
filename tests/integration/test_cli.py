"""The `driftloop` entry point as a user runs it, against real ingest, registry and inference
processes on a real broker and redis-server: every command given bad arguments exits non-zero with
one line on stderr and no traceback, and `replay` reports what the platform did with each row."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from driftloop.localstack import Stack, free_port, wait_ready
from driftloop.settings import Topics
from tests.conftest import ROOT
from tests.helpers import apply_models

DRIFTLOOP = str(Path(sys.executable).parent / "driftloop")
SERVICES = ("ingest", "registry", "inference")


@dataclass
class Platform:
    run_dir: Path
    env: dict[str, str]

    def driftloop(self, *args: str, run_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
        """The real entry point, with this platform's run directory, specs and topic names."""
        argv = [
            DRIFTLOOP,
            *args,
            "--run-dir",
            str(run_dir or self.run_dir),
            "--models-dir",
            str(ROOT / "models"),
        ]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=self.env)


@pytest.fixture(scope="module")
def platform(
    kafka_bootstrap: str, redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushdb()  # the registry's store: no versions from earlier tests
    client.close()
    tmp = tmp_path_factory.mktemp("cli")
    tag = uuid.uuid4().hex[:8]
    topics = {f"DRIFTLOOP_TOPICS__{k.upper()}": f"t{tag}.{v}" for k, v in Topics().model_dump().items()}
    env = {
        **os.environ,
        **topics,
        "DRIFTLOOP_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "DRIFTLOOP_REDIS_URL": redis_server,
        "DRIFTLOOP_OBJECT_STORE_URL": str(tmp / "objects"),
        "DRIFTLOOP_OFFLINE_DIR": str(tmp / "offline"),
        "DRIFTLOOP_LOG_LEVEL": "WARNING",
    }
    names = {k: f"t{tag}.{v}" for k, v in Topics().model_dump().items()}
    asyncio.run(apply_models(kafka_bootstrap, Topics(**names)))
    stack = Stack(tmp / "run", {"kafka": int(kafka_bootstrap.rsplit(":", 1)[1])})
    stack.run_dir.mkdir()
    procs = []
    for service in SERVICES:
        stack.ports[service] = free_port()
        service_env = {**env, "DRIFTLOOP_HTTP_PORT": str(stack.ports[service]),
                       "DRIFTLOOP_DATA_DIR": str(tmp / service)}  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, "-m", f"driftloop_{service}.app"], env=service_env))
        stack.pids[service] = procs[-1].pid
    stack.save()
    try:
        wait_ready(stack, 60, only=SERVICES)
        yield Platform(stack.run_dir, {**os.environ, **topics})
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(15)


def _one_line(done: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("driftloop"), done.stderr
    assert "Traceback" not in done.stderr and message in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["replay", "missing.csv"], 2, "missing.csv: No such file or directory"),
        (["replay", "sea", "--n", "-1"], 2, "argument --n: must be at least 1"),
        (["replay", "sea", "--model", "nosuch"], 2, "no model 'nosuch'"),
        (["models", "show", "sea", "99"], 2, "the registry has no version 99 of sea"),  # a 404
        (["models", "show", "sea", "0"], 2, "argument version: must be at least 1"),
        (["models", "tag", "sea", "1", "noequals"], 2, "expected key=value, got 'noequals'"),
        (["models", "tag", "sea", "1", "k=a\nb"], 2, "has control or other non-printable characters"),
        (["models", "tag", "sea", "1", "k=v", "--timeout", "20"], 1, "ModelCommandRefused sea v1"),
        (["models", "promote", "sea", "1", "--timeout", "20"], 1, "ModelCommandRefused sea v1"),
        (["models", "rollback", "sea", "--to", "x"], 2, "argument --to: not an integer"),
        (["train", "sea", "--last-n", "0"], 2, "argument --last-n: must be at least 1"),
        (["train", "nosuch"], 2, "no model 'nosuch'"),
        (["predict", "sea", "x1"], 2, "expected key=value, got 'x1'"),
        (["predict", "sea", "x0=1", "x1=1", "x2=1", "--timeout", "20"], 1, "sea: no_champion"),
        (["demo", "--rate", "0"], 2, "argument --rate: must be above 0"),
        (["bogus"], 2, "invalid choice: 'bogus'"),
    ],
)
def test_bad_arguments_exit_non_zero_with_one_line(platform, args, code, message):
    _one_line(platform.driftloop(*args), code, message)


def test_no_stack_and_an_unreachable_broker_are_one_line(platform, tmp_path):
    _one_line(platform.driftloop("status", run_dir=tmp_path), 2, "run `driftloop up` first")
    _one_line(platform.driftloop("models", "list", run_dir=tmp_path), 2, "run `driftloop up` first")
    unreachable = f"127.0.0.1:{free_port()}"
    _one_line(
        platform.driftloop("train", "sea", "--bootstrap", unreachable), 2, "cannot reach the Kafka broker"
    )
    _one_line(platform.driftloop("replay", "sea", "--n", "5", "--bootstrap", unreachable), 2, "cannot reach")


CSV = (
    "\ufeffx0,x1,x2,y,note\r\n"
    "1,2,3,1,ok\r\n"
    "4,5,6,0,ok\r\n"
    "11,1,1,1,out of range\r\n"
    "1,,2,0,missing x1\r\n"
    "nan,1,1,0,not finite\r\n"
    "1,2,3,0,extra,cell\r\n"
    "abc,1,1,1,wrong type\r\n"
    "1,2,3,7,wrong label\r\n"
    "9,9,9,,unlabelled\r\n"
    "0.5,0.5,0.5,1.0,ok\r\n"
)


def _counts(stdout: str) -> dict[str, str]:
    return {m[0]: m[1].strip() for m in re.findall(r"^  (\S.*?)\s+(\d+ ?.*)$", stdout, re.M)}


def test_replay_reports_accepted_dead_lettered_not_sent_and_duplicates(platform, tmp_path):
    data = tmp_path / "data.csv"
    data.write_text(CSV, encoding="utf-8", newline="")
    prefix = f"it{uuid.uuid4().hex[:6]}"
    first = platform.driftloop(
        "replay", str(data), "--model", "sea", "--id-prefix", prefix, "--timeout", "20"
    )
    assert first.returncode == 1, first.stderr
    counts = _counts(first.stdout)
    assert counts["accepted"] == "4"
    assert counts["dead-lettered"] == "4  invalid_label 1, missing_feature 1, out_of_range 1, wrong_type 1"
    assert counts["not sent"] == "2  not_finite 1, ragged_row 1"
    assert counts["duplicates"] == "0" and counts["no answer"] == "0"
    assert "note: columns not in the sea spec, not sent: note" in first.stdout
    refusals = first.stderr.splitlines()
    assert refusals[:3] == [
        "driftloop: line 4: dead-lettered: out_of_range: x0=11.0 outside [0.0, 10.0]",
        "driftloop: line 5: dead-lettered: missing_feature: x1 is required",
        "driftloop: line 6: not sent: not_finite: x0 is 'nan', not a finite number (empty if missing)",
    ]
    assert len(refusals) == 5 and "Traceback" not in first.stderr

    again = platform.driftloop(
        "replay", str(data), "--model", "sea", "--id-prefix", prefix, "--timeout", "20"
    )
    counts = _counts(again.stdout)
    assert counts["accepted"] == "0"
    assert counts["duplicates"].startswith("4"), again.stdout  # stored the first time: dropped, not lost
    assert counts["dead-lettered"].startswith("4") and counts["no answer"] == "0"


def test_replay_of_clean_rows_exits_zero_and_requests_report_their_errors(platform, tmp_path):
    data = tmp_path / "clean.csv"
    data.write_text("y,x0,x1,x2\n" + "".join(f"{i % 2},{i % 10},{i % 7},{i % 3}\n" for i in range(300)))
    done = platform.driftloop("replay", str(data), "--timeout", "20")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _counts(done.stdout)["accepted"] == "300" and done.stderr == ""
    asked = platform.driftloop("replay", str(data), "--n", "50", "--to", "requests", "--timeout", "20")
    assert asked.returncode == 1
    counts = _counts(asked.stdout)
    assert counts["answered ok"] == "0" and counts["answered with error"] == "50  no_champion 50"
    assert asked.stderr.splitlines()[0] == "driftloop: line 2: error: no_champion"
