"""User text made safe to show: control characters escaped for terminals, Markdown neutralised for
model cards. What "printable" means here is Python's `str.isprintable`: no control, format (e.g. a
bidi override) or separator characters other than the space. Pure, standard library only."""

from __future__ import annotations

import re

_NOT_PRINTABLE = re.compile(r"[^ -~]")  # candidates; `str.isprintable` decides
_MARKDOWN = re.compile(r"([\\`*_\[\]<>|~&$])")  # significant inside a line of a Markdown card


def _escaped(char: str) -> str:
    if char.isprintable():
        return char
    return char.encode("unicode_escape").decode("ascii")


def escape(text: str) -> str:
    r"""The text with every non-printable character written as its Python escape.

    >>> escape("ok \x1b[31mred\nnext\u202e")
    'ok \\x1b[31mred\\nnext\\u202e'
    >>> escape("café ✓")
    'café ✓'
    """
    if text.isprintable():
        return text
    return _NOT_PRINTABLE.sub(lambda m: _escaped(m.group()), text)


def markdown(text: str) -> str:
    r"""User text for one line of Markdown: significant characters backslash-escaped, line breaks
    and other non-printable characters shown as escapes, so it cannot start a table, a list or a
    heading, nor close a code span or a table cell.

    >>> markdown("a|b\n# c *d* <b>")
    'a\\|b\\n# c \\*d\\* \\<b\\>'
    """
    return escape(_MARKDOWN.sub(r"\\\1", text))
