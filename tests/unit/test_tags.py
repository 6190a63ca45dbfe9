"""Tags are bounded and printable by contract, and user text is escaped wherever it is shown: the
CLI's terminal output and the registry's Markdown model card."""

import re

import orjson
import pytest

from driftloop.contracts import REGISTRY_COMMAND, InvalidInput, TagModel, parse
from driftloop.text import escape, markdown
from driftloop_registry.domain import render_card
from tests.helpers import model_trained


def _tag(tags):
    return TagModel(command_id="c", model="sea", version=1, tags=tags)


@pytest.mark.parametrize(
    "tags",
    [{"owner": "ml"}, {"team/area:sub-1.x_y": "Zoë ✓ 100%"}, {"stage": ""}, {"k" * 64: "v" * 256}],
)
def test_safe_tags_pass(tags):
    assert _tag(tags).tags == tags


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ({"": "v"}, "tag key '' must be 1 to 64"),
        ({"k" * 65: "v"}, "must be 1 to 64"),
        ({"a b": "v"}, "must be 1 to 64 letters"),
        ({"ключ": "v"}, "(ASCII)"),
        ({"k\n": "v"}, "must be 1 to 64"),
        ({"k": "v" * 257}, "257 characters, more than 256"),
        ({"k": "red \x1b[31m"}, "non-printable"),
        ({"k": "two\nlines"}, "non-printable"),
        ({"k": "tab\there"}, "non-printable"),
        ({"k": "bidi \u202e"}, "non-printable"),
    ],
)
def test_unsafe_tags_are_refused_by_the_contract_with_a_clear_message(tags, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _tag(tags)


def test_the_registry_dead_letters_a_tag_command_with_unsafe_tags():
    raw = orjson.dumps({"command": "TagModel", "command_id": "c", "model": "sea", "version": 1,
                        "tags": {"k": "\x1b]0;pwned\x07"}})  # fmt: skip
    with pytest.raises(InvalidInput) as caught:
        parse(REGISTRY_COMMAND, raw, {"sea"})
    assert caught.value.reason == "invalid_schema" and "non-printable" in caught.value.detail


def test_escape_shows_control_characters_and_keeps_printable_text():
    assert escape("a\x1b[2Jb\r\n\t\x00\x7f\u202e") == "a\\x1b[2Jb\\r\\n\\t\\x00\\x7f\\u202e"
    assert escape("Zoë ✓ 100% <b>") == "Zoë ✓ 100% <b>"


def test_markdown_text_cannot_start_a_line_close_a_cell_or_mark_up():
    text = markdown("x | y\n# heading\n- item `code` *b* _i_ [l](u) <script> &amp; ~s~ $m$ \\")
    assert "\n" not in text
    for char in "|`*_[]<>&~$":
        assert all(text[i - 1] == "\\" for i, c in enumerate(text) if c == char), char


def _record(tags=None, reason="manual", events=()):
    trained = model_trained().model_dump(mode="json") | {"reason": reason, "command_id": "cmd`\n|"}
    return {"version": 1, "blessed": True, "decision": "accuracy 0.85 | ok", "tags": tags or {},
            "trained": trained, "events": list(events)}  # fmt: skip


def test_a_hostile_tag_or_reason_cannot_break_the_model_card():
    plain = render_card(_record(events=[{"at": "t", "event": "ModelTagged", "reason": "why"}]), "champion")
    hostile = render_card(
        _record(
            tags={"note": "a|b\n\n# Pwned\n| x | y |", "k": "`x` <img src=x> [l](http://e)"},
            reason="drift\n## injected",
            events=[{"at": "t", "event": "ModelTagged", "reason": "why\n|---|\n<script>"}],
        ),
        "champion",
    )
    assert len(hostile.splitlines()) == len(plain.splitlines())  # no line added or split
    assert [line for line in hostile.splitlines() if line.startswith(("#", "|"))] == [
        line for line in plain.splitlines() if line.startswith(("#", "|"))
    ]  # the same headings and table rows
    tags = next(line for line in hostile.splitlines() if line.startswith("- **Tags:**"))
    assert tags == (
        "- **Tags:** k=\\`x\\` \\<img src=x\\> \\[l\\](http://e), note=a\\|b\\n\\n# Pwned\\n\\| x \\| y \\|"
    )
    user_lines = [
        line for line in hostile.splitlines() if line.startswith(("- **Tags", "- **Trained", "- t "))
    ]
    assert len(user_lines) == 3
    assert not any(re.search(r"(?<!\\)[<>`|]", line) for line in user_lines)  # no raw HTML, code, cell
