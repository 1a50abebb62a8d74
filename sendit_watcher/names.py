"""File and folder names as stored text: reversible, and never two names for one text.

A name that is valid UTF-8 and holds no backslash is stored as it is (almost every name). Any other name is
escaped: each backslash doubled, each byte that is not UTF-8 written as ``\\xNN``. A stored text with a backslash
is therefore always an escaped one, so ``to_disk(to_text(name)) == name`` for every name, and two different names
never share a text.
"""

from __future__ import annotations

import re

__all__ = ["to_text", "to_disk"]

_SURROGATES = re.compile("[\udc80-\udcff]")
_ESCAPED = re.compile(r"\\(\\|x[0-9a-f]{2})")


def to_text(name: str) -> str:
    """The stored text of a name as the os module gives it (undecodable bytes as lone surrogates)."""
    if "\\" not in name and not _SURROGATES.search(name):
        return name
    doubled = name.replace("\\", "\\\\")
    return _SURROGATES.sub(lambda m: f"\\x{ord(m[0]) - 0xDC00:02x}", doubled)


def to_disk(text: str) -> str:
    """The name on disk (for the os module) of a stored text."""
    if "\\" not in text:
        return text
    return _ESCAPED.sub(lambda m: "\\" if m[1] == "\\" else chr(0xDC00 + int(m[1][1:], 16)), text)
