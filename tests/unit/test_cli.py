"""The CLI without a running platform: every user error is one line on stderr and a non-zero exit,
global options go before or after the command, `--help` imports nothing heavy, and the replay
tally matches the platform's answers to the replay's own ids."""

import base64
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from driftloop import cli
from driftloop.datasets import Refused
from driftloop.replay import Replay, Tally, read_dead_letter, read_result, read_validated
from driftloop.settings import Topics
from tests.conftest import ROOT

MODELS = str(ROOT / "models")


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["replay", "missing.csv"], "missing.csv: No such file or directory"),
        (["replay", "sea", "--n", "-5"], "argument --n: must be at least 1, not -5"),
        (["replay", "sea", "--n", "ten"], "argument --n: not an integer: 'ten'"),
        (["replay", "sea", "--concept", "9"], "sea has concepts 0..3, not 9"),
        (["replay", "sea", "--model", "nosuch"], "no model 'nosuch' in"),
        (["replay", "sea", "--timeout", "-1"], "argument --timeout: must be at least 0"),
        (["replay", "sea", "--id-prefix", "a b"], "an id prefix is 1 to 64"),
        (["replay", "x.csv", "--label", "target", "--to", "nowhere"], "invalid choice: 'nowhere'"),
        (["predict", "sea", "x1"], "expected key=value, got 'x1'"),
        (["predict", "sea", "x9=1"], "'x9' is not a feature of sea"),
        (["predict", "sea", "x0=nan"], "x0 is 'nan', not a finite number"),
        (["predict", "Sea!", "x0=1"], "not a model name: 'Sea!'"),
        (["predict", "sea", "x0=1", "--timeout", "0"], "argument --timeout: must be above 0"),
        (["models", "tag", "sea", "1", "noequals"], "expected key=value, got 'noequals'"),
        (["models", "tag", "sea", "1", "a b=c"], "tag key 'a b' must be 1 to 64"),
        (["models", "tag", "sea", "1", "k=\x1b[31m"], "tag value '\\x1b[31m' has control"),
        (["models", "tag", "sea", "0", "k=v"], "argument version: must be at least 1, not 0"),
        (["models", "show", "sea", "x"], "argument version: not an integer: 'x'"),
        (["models", "rollback", "nosuch"], "no model 'nosuch' in"),
        (["models", "promote", "sea", "1", "--timeout", "inf"], "argument --timeout: must be above 0"),
        (["models"], "the following arguments are required: action"),
        (["train", "sea", "--last-n", "0"], "argument --last-n: must be at least 1, not 0"),
        (["train", "nosuch"], "no model 'nosuch' in"),
        (["demo", "--rate", "0"], "argument --rate: must be above 0"),
        (["demo", "--drift", "0-3"], "expected two concepts as before:after"),
        (["demo", "--drift", "0:9"], "sea has concepts 0..3, not 9"),
        (["nosuch"], "invalid choice: 'nosuch'"),
        ([], "the following arguments are required: command"),
    ],
)
def test_a_user_error_is_one_line_on_stderr_and_exit_2(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)  # no local stack here
    code, out, err = _run(capsys, *argv, "--models-dir", MODELS)
    assert code == 2 and not out
    assert err.count("\n") == 1 and err.startswith("driftloop") and "Traceback" not in err, err
    assert message in err, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["status"], "no stack in"),
        (["models", "list"], "no stack in"),
        (["models", "show", "sea", "99"], "no stack in"),
        (["train", "sea"], "run `driftloop up` first"),
        (["replay", "sea", "--models-dir", "nowhere"], "models directory nowhere does not exist"),
        (["train", "sea", "--models-dir", "."], "no model specs (*.yaml) in ."),
        (["predict", "sea", "x0=1", "--bootstrap", "127.0.0.1:1"], "cannot reach the Kafka broker"),
    ],
)
def test_no_stack_no_broker_no_specs_is_one_line_too(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(capsys, "--models-dir", MODELS, *argv)
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_an_unreachable_registry_is_one_line(capsys, tmp_path, monkeypatch):
    from driftloop.localstack import Stack, free_port

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".driftloop").mkdir()
    Stack(tmp_path / ".driftloop", {"kafka": free_port(), "registry": free_port()}).save()
    code, _, err = _run(capsys, "models", "show", "sea", "1")
    assert code == 2 and err.count("\n") == 1 and "cannot reach http://127.0.0.1:" in err, err


def test_a_damaged_stack_file_is_one_line(capsys, tmp_path):
    (tmp_path / "stack.json").write_text("{oops")
    code, _, err = _run(capsys, "models", "list", "--run-dir", str(tmp_path))
    assert code == 2 and err.count("\n") == 1 and "stack.json is unreadable" in err, err


def test_a_broken_spec_directory_is_one_line(capsys, tmp_path):
    (tmp_path / "bad.yaml").write_text("name: Bad Name\nfeatures: []\n")
    code, _, err = _run(capsys, "train", "bad", "--models-dir", str(tmp_path))
    assert code == 2 and err.count("\n") == 1 and "bad.yaml refused: name:" in err, err


@pytest.mark.parametrize(
    "argv",
    [
        ["--run-dir", "r", "--models-dir", "m", "--bootstrap", "b:1", "replay", "x.csv"],
        ["replay", "x.csv", "--run-dir", "r", "--models-dir", "m", "--bootstrap", "b:1"],
        ["--run-dir", "r", "replay", "--models-dir", "m", "x.csv", "--bootstrap", "b:1"],
        ["--run-dir", "r", "models", "--models-dir", "m", "tag", "--bootstrap", "b:1", "sea", "1", "k=v"],
    ],
)
def test_global_options_go_before_or_after_the_command(argv):
    args = cli.build_parser().parse_args(argv)
    assert (args.run_dir, args.models_dir, args.bootstrap) == (Path("r"), Path("m"), "b:1")


def test_global_options_keep_their_defaults_when_absent():
    args = cli.build_parser().parse_args(["replay", "x.csv"])
    assert (args.run_dir, args.models_dir, args.bootstrap) == (
        cli.DEFAULT_RUN_DIR,
        cli.DEFAULT_MODELS_DIR,
        None,
    )


@pytest.mark.parametrize("argv", [["--help"], ["replay", "--help"], ["models", "tag", "--help"]])
def test_help_documents_the_global_options(capsys, argv):
    with pytest.raises(SystemExit) as done:
        cli.main(argv)
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert all(option in out for option in ("--run-dir", "--models-dir", "--bootstrap"))


def test_help_imports_nothing_heavy():
    """What makes `--help` slow is importing: the CLI module loads no client, model or data library."""
    heavy = ["httpx", "aiokafka", "river", "pydantic", "numpy", "sklearn", "faststream", "yaml", "orjson"]
    code = f"import sys, driftloop.cli; print([m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_predict_values_follow_the_spec_types():
    from driftloop.spec import load_specs

    specs = load_specs(ROOT / "models")
    assert cli.features_of(specs["sea"], [("x0", "01"), ("x1", " 2.5 "), ("x2", "")]) == {
        "x0": 1.0,
        "x1": 2.5,
    }
    assert cli.features_of(specs["stagger"], [("size", "01"), ("color", "1")]) == {"size": "01", "color": "1"}


def test_printed_user_text_has_its_control_characters_escaped(capsys):
    cli._say("tag: \x1b[2Jclear\nnext \u202eline")
    assert capsys.readouterr().out == "tag: \\x1b[2Jclear\nnext \\u202eline\n"


def test_a_dead_letter_of_the_command_is_its_refusal():
    original = base64.b64encode(orjson.dumps({"command_id": "c1", "tags": {"k": "\x1b"}})).decode()
    letter = orjson.dumps({"source_topic": "models.commands", "reason": "invalid_schema", "detail": "d",
                           "original": original})  # fmt: skip
    assert cli._refusal(letter, "models.commands", "c1") == "invalid_schema: d"
    assert cli._refusal(letter, "models.commands", "c2") is None
    assert cli._refusal(letter, "events.raw", "c1") is None
    assert cli._refusal(b"\x00garbage", "models.commands", "c1") is None


# ---------------------------------------------------------------- the replay tally


def _dead(event_id, reason="out_of_range", topic="events.raw"):
    original = base64.b64encode(orjson.dumps({"event_id": event_id})).decode()
    return orjson.dumps(
        {"source_topic": topic, "reason": reason, "detail": f"{event_id} bad", "original": original}
    )


def test_answers_are_matched_to_the_replay_s_own_ids_once():
    tally = Tally("run1")
    ids = [tally.sent(line) for line in (2, 3, 4, 5)]
    assert ids == ["run1-0", "run1-1", "run1-2", "run1-3"]
    assert read_validated(tally, orjson.dumps({"event_id": "run1-0"}))
    assert not read_validated(tally, orjson.dumps({"event_id": "run1-0"}))  # a redelivery: counted once
    assert not read_validated(tally, orjson.dumps({"event_id": "run2-1"}))  # another run's
    assert not read_validated(tally, orjson.dumps({"event_id": "run1-9"}))  # never sent
    assert not read_validated(tally, b"not json")
    assert read_dead_letter(tally, _dead("run1-2"), "events.raw")
    assert not read_dead_letter(tally, _dead("run1-1", topic="events.validated"), "events.raw")  # feature's
    assert not read_dead_letter(tally, b'{"source_topic": "events.raw", "original": "%%%"}', "events.raw")
    assert (tally.accepted, tally.refused, tally.pending) == (1, 1, 2)
    assert tally.reasons == Counter({"out_of_range": 1})
    assert tally.first_refusals() == ["line 4: dead-lettered: out_of_range: run1-2 bad"]


def test_results_count_ok_and_errors_by_reason():
    tally = Tally("r", unit="row")
    for place in (1, 2, 3):
        tally.sent(place)
    read_result(tally, orjson.dumps({"request_id": "r-0", "error": None}))
    read_result(tally, orjson.dumps({"request_id": "r-1", "error": "wrong_type: x0 must be a number"}))
    read_result(tally, orjson.dumps({"request_id": "r-2", "error": "no_champion"}))
    assert (tally.accepted, tally.refused) == (1, 2)
    assert tally.first_refusals() == [
        "row 2: error: wrong_type: x0 must be a number",
        "row 3: error: no_champion",
    ]


def test_the_first_refusals_are_those_of_the_first_lines_whatever_the_order_of_answers():
    tally = Tally("p", keep=3)
    for line in range(10):
        tally.sent(line)
    for i in (9, 7, 1, 8, 3, 0):
        read_dead_letter(tally, _dead(f"p-{i}"), "events.raw")
    tally.skipped(Refused(2, "ragged_row", "3 cells"))
    assert [r.split(":")[0] for r in tally.first_refusals()] == ["line 0", "line 1", "line 2"]


def _replay(tally, to="events", timeout=30.0, caught_up=False):
    replay = Replay("b:1", Topics(), "sea", to, tally, timeout)
    replay.caught_up = caught_up
    return replay


def test_unanswered_ids_are_duplicates_once_ingest_committed_past_them_else_no_answer():
    tally = Tally("p")
    for line in range(4):
        tally.sent(line)
    read_validated(tally, orjson.dumps({"event_id": "p-0"}))
    waited = _replay(tally)
    assert (waited.duplicates, waited.unanswered, waited.failed) == (0, 3, 3)
    settled = _replay(tally, caught_up=True)
    assert (settled.duplicates, settled.unanswered, settled.failed) == (3, 0, 0)


def test_the_summary_counts_every_outcome():
    tally = Tally("p")
    for line in range(5):
        tally.sent(line + 2)
    read_validated(tally, orjson.dumps({"event_id": "p-0"}))
    read_dead_letter(tally, _dead("p-1", "wrong_type"), "events.raw")
    read_dead_letter(tally, _dead("p-2", "out_of_range"), "events.raw")
    read_dead_letter(tally, _dead("p-3", "out_of_range"), "events.raw")
    tally.skipped(Refused(9, "not_finite", "x0 is 'nan'"))
    lines = _replay(tally, caught_up=True).summary("data.csv")
    assert lines[0] == "replay of data.csv for model sea: 5 messages to events.raw (ids p-<n>)"
    assert [line.split()[:2] for line in lines[1:]] == [
        ["accepted", "1"], ["dead-lettered", "3"], ["duplicates", "1"], ["no", "answer"], ["not", "sent"],
    ]  # fmt: skip
    assert lines[2].endswith("out_of_range 2, wrong_type 1")
    assert lines[5].endswith("1  not_finite 1")
    assert json.dumps(lines)  # plain text
