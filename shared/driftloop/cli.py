"""`driftloop`: the command line for people — run the local stack, replay data, train, predict, demo."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from driftloop import datasets, localstack
from driftloop.client import PredictionClient, make_producer, send_all
from driftloop.contracts import (
    LIFECYCLE,
    ApproveModel,
    LifecycleEvent,
    ModelCommandRefused,
    Observation,
    PredictionRequest,
    PromoteModel,
    RegistryCommand,
    RollbackModel,
    TagModel,
    TrainModel,
)
from driftloop.kafka import tail_from_end
from driftloop.settings import Topics
from driftloop.spec import load_specs

DEFAULT_RUN_DIR = Path(os.environ.get("DRIFTLOOP_RUN_DIR", ".driftloop"))
DEFAULT_MODELS_DIR = Path(os.environ.get("DRIFTLOOP_MODELS_DIR", "models"))


def _bootstrap(args: argparse.Namespace) -> str:
    return args.bootstrap or localstack.Stack.load(args.run_dir).bootstrap


def cmd_up(args: argparse.Namespace) -> int:
    print(f"starting the local stack in {args.run_dir} ...", flush=True)
    stack = localstack.up(args.run_dir, args.models_dir)
    _print_stack(stack)
    return 0


def _print_stack(stack: localstack.Stack) -> None:
    print(f"  kafka       {stack.bootstrap}")
    print(f"  redis       {stack.redis_url}")
    if "prometheus" in stack.pids:
        print(f"  prometheus  http://127.0.0.1:{stack.ports['prometheus']}")
    for service in localstack.SERVICES:
        print(f"  {service:<11} {stack.url(service)}  (/metrics /healthz /readyz)")
    print(f"  logs        {stack.run_dir}/logs/")


def cmd_down(args: argparse.Namespace) -> int:
    stopped = localstack.down(args.run_dir)
    print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    for name, text in localstack.status(args.run_dir).items():
        print(f"  {name:<11} {text}")
    try:
        models = _registry(args, "/v1/models")
        for row in models:
            champion = row["aliases"].get("champion")
            print(
                f"  model {row['model']}: champion {'v' + str(champion) if champion else 'none'}"
                f", {row['versions']} version(s)"
            )
    except (httpx.HTTPError, localstack.StackError) as exc:
        print(f"  registry unavailable: {exc}")
    return 0


def _registry(args: argparse.Namespace, path: str, **params: Any) -> Any:
    stack = localstack.Stack.load(args.run_dir)
    response = httpx.get(f"{stack.url('registry')}{path}", params=params, timeout=5)
    response.raise_for_status()
    return response.json()


def cmd_models_list(args: argparse.Namespace) -> int:
    for row in _registry(args, "/v1/models"):
        print(f"{row['model']}: aliases {row['aliases']}, {row['versions']} version(s)")
        for version in _registry(args, "/v1/versions", model=row["model"]):
            metrics = ", ".join(f"{k} {v:.4f}" for k, v in version["metrics"].items())
            tags = " ".join(f"{k}={v}" for k, v in version["tags"].items())
            print(
                f"  v{version['version']:<3} {version['status']:<10} {version['reason']:<9} "
                f"rows {version['rows']:<6} {metrics} {tags}".rstrip()
            )
    return 0


def cmd_models_show(args: argparse.Namespace) -> int:
    if args.markdown:
        stack = localstack.Stack.load(args.run_dir)
        response = httpx.get(
            f"{stack.url('registry')}/v1/card",
            params={"model": args.model, "version": args.version, "format": "md"},
            timeout=5,
        )
        response.raise_for_status()
        print(response.text, end="")
    else:
        print(json.dumps(_registry(args, "/v1/card", model=args.model, version=args.version), indent=2))
    return 0


def _registry_command(args: argparse.Namespace, command: RegistryCommand) -> int:
    """Send a registry command and wait for the lifecycle event that answers it."""
    topics = Topics()

    async def send() -> LifecycleEvent:
        bootstrap = _bootstrap(args)
        consumer = await tail_from_end(bootstrap, topics.models_lifecycle)
        producer = make_producer(bootstrap)
        await producer.start()
        try:
            await send_all(producer, topics.models_commands, [command])
            async with asyncio.timeout(args.timeout):
                async for record in consumer:
                    event = LIFECYCLE.validate_json(record.value or b"")
                    if event.command_id == command.command_id:
                        return event
        finally:
            await producer.stop()
            await consumer.stop()
        raise TimeoutError

    try:
        event = asyncio.run(send())
    except TimeoutError:
        print(f"no answer from the registry within {args.timeout:.0f}s", file=sys.stderr)
        return 1
    print(f"{event.event} {event.model} v{event.version}: {event.reason}")
    return 1 if isinstance(event, ModelCommandRefused) else 0


def cmd_models_promote(args: argparse.Namespace) -> int:
    kind = ApproveModel if args.command_name == "approve" else PromoteModel
    return _registry_command(
        args, kind(command_id=uuid.uuid4().hex, model=args.model, version=args.version, reason=args.reason)
    )


def cmd_models_rollback(args: argparse.Namespace) -> int:
    command = RollbackModel(
        command_id=uuid.uuid4().hex, model=args.model, to_version=args.to, reason=args.reason
    )
    return _registry_command(args, command)


def cmd_models_tag(args: argparse.Namespace) -> int:
    tags = dict(kv.split("=", 1) for kv in args.tags)
    command = TagModel(
        command_id=uuid.uuid4().hex, model=args.model, version=args.version, tags=tags, reason=args.reason
    )
    return _registry_command(args, command)


def cmd_train(args: argparse.Namespace) -> int:
    async def send() -> None:
        producer = make_producer(_bootstrap(args))
        await producer.start()
        try:
            command = TrainModel(
                command_id=uuid.uuid4().hex, model=args.model, reason="manual", last_n=args.last_n
            )
            await send_all(producer, Topics().training_requests, [command])
            print(f"sent TrainModel {command.command_id} for {args.model}")
        finally:
            await producer.stop()

    asyncio.run(send())
    return 0


def _parse_value(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def cmd_predict(args: argparse.Namespace) -> int:
    features = dict(kv.split("=", 1) for kv in args.features)

    async def ask() -> Any:
        async with PredictionClient(_bootstrap(args), timeout_s=args.timeout) as client:
            return await client.predict(
                args.model, {k: _parse_value(v) for k, v in features.items()}, args.entity
            )

    result = asyncio.run(ask())
    print(result.model_dump_json(indent=2))
    return 1 if result.error else 0


def cmd_replay(args: argparse.Namespace) -> int:
    if args.source in datasets.SYNTHETIC:
        spec = load_specs(args.models_dir).get(args.model)
        rows = datasets.synthetic(args.source, args.concept, args.seed)
        rows = datasets.conform(spec, rows) if spec else rows
    else:
        rows = datasets.csv_rows(Path(args.source), args.label)
    rows = itertools.islice(rows, args.n) if args.n else rows
    topics = Topics()
    prefix = uuid.uuid4().hex[:8]

    def message(i: int, x: dict[str, Any], y: Any) -> Any:
        if args.to == "requests":
            return PredictionRequest(request_id=f"{prefix}-{i}", model=args.model, features=x)
        return Observation(event_id=f"{prefix}-{i}", model=args.model, features=x, label=y)

    topic = topics.predictions_requests if args.to == "requests" else topics.events_raw

    async def replay() -> int:
        producer = make_producer(_bootstrap(args))
        await producer.start()
        sent, started = 0, time.monotonic()
        try:
            numbered = (message(i, x, y) for i, (x, y) in enumerate(rows))
            for chunk in iter(lambda: list(itertools.islice(numbered, 1000)), []):
                sent += await send_all(producer, topic, chunk)
                rate = sent / max(1e-6, time.monotonic() - started)
                print(f"\r  {sent} messages to {topic} ({rate:,.0f}/s)", end="", flush=True)
        finally:
            await producer.stop()
        print()
        return sent

    asyncio.run(replay())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from driftloop import demo

    before, _, after = args.drift.partition(":")
    scenario = demo.Scenario(
        dataset=args.dataset,
        concept_before=int(before),
        concept_after=int(after),
        rate_per_s=args.rate,
        history=args.history,
        before=args.before,
    )
    started = time.monotonic()
    # the demo plays on a fresh stack of its own: no versions, rows or labels from earlier runs
    run_dir = args.run_dir / "demo"
    localstack.down(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    print(f"driftloop demo: starting a fresh local stack in {run_dir}", flush=True)
    stack = localstack.up(run_dir, args.models_dir)
    _print_stack(stack)
    try:
        summary = asyncio.run(demo.run(stack.bootstrap, scenario, args.out, models_dir=args.models_dir))
    finally:
        if args.keep_up:
            print(f"the stack keeps running; stop it with: driftloop --run-dir {run_dir} down", flush=True)
        else:
            localstack.down(run_dir)
    _print_summary(summary, args.out, time.monotonic() - started)
    return 0 if summary["loop_closed"] else 1


def _print_summary(summary: dict[str, Any], out: Path, elapsed: float) -> None:
    acc, versions, wall = summary["accuracy"], summary["versions"], summary["wall_seconds"]
    lines = [
        "",
        "=" * 64,
        f"driftloop demo summary ({summary['model']}: {summary['drift']})",
        f"  drift onset at request        {summary['drift_onset_request']}",
        f"  drift detected at request     {summary['detection_request']} "
        f"(delay {summary['detection_delay_samples']} samples; "
        f"change point estimated at sample {summary['estimated_change_point_sample']})",
        f"  versions                      v{versions['initial']} -> v{versions['after_drift']}",
        f"  new version first served at   request {summary['first_request_served_by_new_version']}",
        f"  accuracy before drift         {acc['before_drift']}",
        f"  accuracy after drift (old)    {acc['after_drift_old_model']}",
        f"  accuracy after recovery       {acc['after_recovery']}",
        f"  false alarms before the drift {summary['false_alarms']}",
        f"  input / prediction alarms     {summary['distribution_alarms']['covariate']} / "
        f"{summary['distribution_alarms']['prediction']} (the scenario drifts the concept only)",
        f"  seconds: first promotion {wall['to_first_promotion']}, onset->detection "
        f"{_s(wall['onset_to_detection'])}, onset->new version serving "
        f"{_s(wall['onset_to_new_version_serving'])}, total {elapsed:.1f}",
        f"  loop closed                   {'YES' if summary['loop_closed'] else 'NO'}",
        f"  plot                          {out / 'demo.png'}",
        f"  summary                       {out / 'summary.json'}",
        "=" * 64,
    ]
    print("\n".join(lines), flush=True)


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="driftloop", description=__doc__)
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=DEFAULT_RUN_DIR,
        help="where the local stack keeps logs, pids and data (default .driftloop)",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=DEFAULT_MODELS_DIR,
        help="directory of model spec files (default models)",
    )
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: the local stack's)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the local stack").set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop the local stack").set_defaults(func=cmd_down)
    sub.add_parser("status", help="processes and champions").set_defaults(func=cmd_status)

    replay = sub.add_parser("replay", help="replay a CSV file or a SEA stream to a topic")
    replay.add_argument("source", help=f"a CSV file, or a synthetic stream: {', '.join(datasets.SYNTHETIC)}")
    replay.add_argument("--model", default="sea")
    replay.add_argument("--to", choices=["events", "requests"], default="events")
    replay.add_argument("--n", type=int, default=None, help="at most N rows (synthetic: default 10000)")
    replay.add_argument("--label", default="label", help="label column of a CSV file")
    replay.add_argument("--concept", type=int, default=0, help="concept of a synthetic stream")
    replay.add_argument("--seed", type=int, default=1)
    replay.set_defaults(func=cmd_replay)

    train = sub.add_parser("train", help="send a TrainModel command")
    train.add_argument("model")
    train.add_argument("--last-n", type=int, default=None)
    train.set_defaults(func=cmd_train)

    models = sub.add_parser("models", help="the registry: versions, cards, promote, rollback, tags")
    registry = models.add_subparsers(dest="command_name", required=True)
    registry.add_parser("list", help="models, aliases and versions").set_defaults(func=cmd_models_list)
    show = registry.add_parser("show", help="a version's model card")
    show.add_argument("model")
    show.add_argument("version", type=int)
    show.add_argument("--markdown", action="store_true", help="the Markdown card instead of JSON")
    show.set_defaults(func=cmd_models_show)
    for name, helptext in (("promote", "make a version champion (it must have passed the gate)"),
                           ("approve", "promote the version awaiting approval")):  # fmt: skip
        change = registry.add_parser(name, help=helptext)
        change.add_argument("model")
        change.add_argument("version", type=int)
        change.set_defaults(func=cmd_models_promote)
    rollback = registry.add_parser("rollback", help="put the previous (or a given) champion back")
    rollback.add_argument("model")
    rollback.add_argument("--to", type=int, default=None, help="version to restore")
    rollback.set_defaults(func=cmd_models_rollback)
    tag = registry.add_parser("tag", help="set free tags on a version (key= removes a tag)")
    tag.add_argument("model")
    tag.add_argument("version", type=int)
    tag.add_argument("tags", nargs="+", metavar="key=value")
    tag.set_defaults(func=cmd_models_tag)
    for sub_parser in registry.choices.values():
        sub_parser.add_argument("--reason", default="operator", help="recorded in the audit trail")
        sub_parser.add_argument("--timeout", type=float, default=30.0)

    predict = sub.add_parser("predict", help="send one prediction request and print its result")
    predict.add_argument("model")
    predict.add_argument("features", nargs="*", metavar="key=value")
    predict.add_argument("--entity", default=None)
    predict.add_argument("--timeout", type=float, default=10.0)
    predict.set_defaults(func=cmd_predict)

    demo = sub.add_parser("demo", help="run the closed-loop drift demo on the local stack")
    demo.add_argument("--out", type=Path, default=Path("var/demo"))
    demo.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    demo.add_argument("--history", type=int, default=5000)
    demo.add_argument("--before", type=int, default=5000, help="requests before the drift")
    demo.add_argument("--dataset", default="sea", choices=sorted(datasets.SYNTHETIC), help="synthetic stream")
    demo.add_argument("--drift", default="0:3", help="concepts before:after the drift (sea 0:3)")
    demo.add_argument("--keep-up", action="store_true", help="leave the stack running")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "replay" and args.source in datasets.SYNTHETIC and args.n is None:
        args.n = 10_000
    try:
        return int(args.func(args))
    except localstack.StackError as exc:
        print(f"driftloop: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
