"""Text from run files and overrides, made safe to show: on a terminal, in a log, in a text file. Any string a
run directory or a command line gave (an override, an error message, a directory or layer name) goes through
`printable` before it is shown, so that no escape sequence reaches a terminal (none can retitle it, clear the
screen, erase lines or plant a link) and no newline splits a table row or a line. CSV and JSON outputs keep the
data exactly (their formats escape what they need); the HTML report escapes markup.
"""
from __future__ import annotations

import re

# C0 controls (ESC, newline, tab, ...), DEL and the C1 controls (U+0080-U+009F: U+009B is a CSI on its own); the
# line and paragraph separators (str.splitlines splits at them); the bidirectional formatting characters (they
# reorder what follows them); lone surrogates (undecodable bytes of a file name: no terminal can print them).
UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
                         "\ud800-\udfff]")


def escaped(character: str) -> str:
    code = ord(character)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text) -> str:
    """`text` (any value, as str()) with every control character, and so every escape sequence, shown escaped:
    ESC as the four characters \\x1b, a newline as \\x0a."""
    return UNPRINTABLE.sub(lambda match: escaped(match.group()), str(text))
