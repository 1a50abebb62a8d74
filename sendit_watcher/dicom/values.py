"""The value rules both readers follow, in one place: how text is split into values and unpadded, which character
sets are decoded here, what PostgreSQL can store (no NUL, no lone surrogate, no non-finite number in jsonb), how
long a value or a header may be, and what each kind of main tag becomes as a column."""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Callable, Iterable
from typing import Any, cast

from sendit_watcher.dicom.tags import Kind, MainTag

__all__ = ["SINGLE_VALUED", "STRIPPED_VRS", "CODECS", "INLINE_BINARY_LIMIT", "VALUE_LIMIT", "HEADER_LIMIT",
           "KEY_LIMIT_BYTES", "NON_FINITE", "split_values", "charset_codec", "storable", "clean",
           "too_large_detail", "kept_in_header", "text", "columns"]

SINGLE_VALUED = frozenset({"LT", "ST", "UT", "UR"})  # a backslash is part of the value (PS3.5 6.2)
STRIPPED_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "IS", "DS"})  # leading spaces not significant
_PADDING = " \x00"  # trailing spaces and NULs pad a text value (PS3.5 6.2)
# SpecificCharacterSet (0008,0005) values whose text is decoded here, and their Python codec; any other is
# left to pydicom.
CODECS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}

# Binary values up to this many bytes are kept as InlineBinary; larger ones are bulk data and left out.
INLINE_BINARY_LIMIT = 256
# Any value longer than this, in the file or as JSON, is left out like bulk data (its element stays, with its VR);
# a top-level value longer than this in the file is never even read.
VALUE_LIMIT = 1 << 20
# A file whose stored header (its DICOM JSON, in UTF-8) is longer than this is rejected as header-too-large:
# PostgreSQL's jsonb holds at most 256 MB, and a header of small numbers takes up to 6 times its text there.
# Read as values.HEADER_LIMIT at each use (tests lower it).
HEADER_LIMIT = 32 << 20
# Main-tag values that go into a unique index: PostgreSQL cannot index a row of more than about 2.7 kB.
KEY_LIMIT_BYTES = 512

# How values JSON and jsonb cannot hold are stored (the DICOM JSON model's string form for special numbers).
NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_SURROGATE = re.compile("[\ud800-\udfff]")


def split_values(vr: str, text: str) -> list[str | None]:
    """The values of a text element: trailing padding removed, split on backslash (but for the VRs whose
    values may hold one), leading spaces removed where they are not significant, '' as None."""
    text = text.rstrip(_PADDING)
    if not text:
        return []
    if vr in SINGLE_VALUED:
        return [text]
    pieces = text.split("\\")
    if vr in STRIPPED_VRS:
        pieces = [p.strip(_PADDING) for p in pieces]
    return [p or None for p in pieces] if "" in pieces else cast("list[str | None]", pieces)


def charset_codec(value: bytes) -> str | None:
    """The Python codec of a SpecificCharacterSet value decoded here, or None: pydicom's business."""
    return CODECS.get(value.decode("ascii", "replace").strip(_PADDING))


def storable(text: str) -> str:
    """Text PostgreSQL can hold: lone surrogates replaced by U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def clean(text: str) -> str:
    """Text as PostgreSQL stores it outside a key (a header's string, the transfer syntax): NUL characters
    removed, lone surrogates replaced by U+FFFD."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    return storable(text)


def too_large_detail() -> str:
    """The rejection's detail: the same whichever reader found it, and however far it read."""
    return (f"its header is more than {HEADER_LIMIT >> 20} MiB as DICOM JSON, the most one file may store "
            "(PostgreSQL's jsonb holds at most 256 MB)")


def kept_in_header(value: Any) -> bool:
    """Whether an element's JSON "Value" is kept in the stored header: no longer than VALUE_LIMIT as JSON (a
    longer one is bulk data in all but VR, left out; its element stays, with its VR)."""
    return len(json.dumps(value, ensure_ascii=False)) <= VALUE_LIMIT


def text(value: str | None, key: bool = False) -> str | None:
    """A main tag's value (its values joined by backslash) as a text column: stripped, None when empty, NUL
    characters removed (in a key, replaced by U+FFFD: two keys that differ only by a NUL stay two), lone
    surrogates replaced by U+FFFD."""
    if value is None:
        return None
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd" if key else "")
    return storable(value).strip() or None


def _key(value: str | None) -> str:
    return text(value, True) or ""


def _uid(value: str | None) -> str | None:
    return text(value, True)


def _date(value: str | None) -> str | None:
    """A DA value as an ISO date, None unless its first eight characters are one."""
    found = text(value)
    if not found or len(found) < 8:
        return None
    try:
        return datetime.date(int(found[0:4]), int(found[4:6]), int(found[6:8])).isoformat()
    except ValueError:
        return None


def _integer(value: str | None) -> int | None:
    """The first value of an IS element as an int4 column: None when it is not a whole number that fits
    ("1.5", "1e999", "NaN", "99999999999"); "12", "+12" and "12.0" are 12."""
    found = text(value)
    first = found.split("\\")[0].strip() if found else ""
    try:
        number = int(first)
    except ValueError:
        try:
            real = float(first)
        except ValueError:
            return None
        if not (math.isfinite(real) and real.is_integer()):
            return None
        number = int(real)
    return number if -2**31 <= number < 2**31 else None


_RULES: dict[Kind, Callable[[str | None], Any]] = {Kind.TEXT: text, Kind.KEY: _key, Kind.UID: _uid,
                                                   Kind.DATE: _date, Kind.INTEGER: _integer}


def columns(text_of: Callable[[int], str | None], tags: Iterable[MainTag]) -> dict[str, Any]:
    """The columns of ``tags``, each by the rule of its kind, from ``text_of(tag)``: the tag's values joined by
    backslash, or None when it is absent. A UID column is None when the UID is missing or empty."""
    return {t.column: _RULES[t.kind](text_of(t.tag)) for t in tags}
