"""DICOM files written element by element for the large-value tests and bench: sparse where a value is a hole (no
disk), so that a value of hundreds of MiB costs nothing to make."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

from sendit_watcher.dicom import values

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
STUDY, SERIES = "1.2.826.0.1.3680043.10.1919.1", "1.2.826.0.1.3680043.10.1919.2"
BIG = 300 << 20  # the EncapsulatedDocument's length: 300 MiB


def explicit_element(tag: int, vr: str, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr in ("UI", "OB") else b" "
    if vr in ("OB", "OW", "UN", "UT", "SQ", "UC", "UR", "OD", "OF", "OL", "OV"):
        return struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value


def implicit_element(tag: int, vr: str, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr in ("UI", "OB") else b" "
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value


def head(sop: str, implicit: bool) -> bytes:
    """Preamble, file meta and the main tags of a file."""
    syntax = "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"
    element = implicit_element if implicit else explicit_element
    meta_body = b"".join(explicit_element(tag, vr, value) for tag, vr, value in (
        (0x00020001, "OB", b"\x00\x01"), (0x00020002, "UI", ENCAPSULATED_PDF.encode()),
        (0x00020003, "UI", sop.encode()), (0x00020010, "UI", syntax.encode())))
    meta = explicit_element(0x00020000, "UL", struct.pack("<L", len(meta_body))) + meta_body
    body = b"".join(element(tag, vr, value.encode()) for tag, vr, value in (
        (0x00080016, "UI", ENCAPSULATED_PDF), (0x00080018, "UI", sop), (0x00080060, "CS", "DOC"),
        (0x00100010, "PN", "Large^Value"), (0x00100020, "LO", "LARGE-1"), (0x0020000D, "UI", STUDY),
        (0x0020000E, "UI", SERIES), (0x00200013, "IS", "1")))
    return b"\x00" * 128 + b"DICM" + meta + body


def write_file(path: Path, sop: str, *, implicit: bool = False, big: tuple[int, str, int] | None = None,
               texts: int = 0, text_size: int = 0) -> None:
    """A DICOM file written element by element: the main tags, ``texts`` UT values of ``text_size`` characters
    in private elements, then ``big`` (tag, VR, length) as a hole (sparse: no disk) and (0042,0012) after it."""
    element = implicit_element if implicit else explicit_element
    with path.open("wb") as out:
        out.write(head(sop, implicit))
        if texts:
            out.write(element(0x00290010, "LO", b"LARGE VALUES"))
            filler = ("0123456789abcdef" * (text_size // 16 + 1))[:text_size].encode()
            for n in range(texts):  # written one by one: the test's own memory stays small
                out.write(element(0x00291000 + n, "UT", filler))
        if big is not None:
            tag, vr, length = big
            out.write(element(tag, vr, b"")[:-4] + struct.pack("<L", length))
            out.seek(length, os.SEEK_CUR)  # the value: a hole, read as zeros
            out.write(element(0x00420012, "LO", b"application/pdf"))


def _repeated(unit: bytes) -> Callable[[int], bytes]:
    return lambda size: unit * size


def _blank(size: int) -> bytes:
    return b" " * (size - 4) + b"end "


# A large value inside a sequence item, by kind: its tag, VR, length, and its bytes (None: a hole, zeros on no
# disk), and how many of its bytes the lean reader may read with the full header.
IN_SEQUENCE: dict[str, tuple[int, str, int, Callable[[int], bytes] | None, Callable[[int], int]]] = {
    "OB": (0x00420011, "OB", 64 << 20, None, lambda size: 0),  # binary: left out beyond 256 bytes
    "FD": (0x0040A161, "FD", 6 << 20, None, lambda size: 0),  # 786,432 numbers: JSON over VALUE_LIMIT
    "UT": (0x0040A160, "UT", 4 << 20, _repeated(b"x"), lambda size: values.VALUE_LIMIT),  # read until certain
    "UT-blank": (0x0040A160, "UT", 2 << 20, _blank, lambda size: 2 * size),  # measured whole, then read to know
    "UT-kept": (0x0040A160, "UT", 900 << 10, _repeated(b"x"), lambda size: size),  # stored: read once
}


def write_in_sequence(path: Path, sop: str, kind: str, *, implicit: bool, defined: bool, size: int | None = None
                      ) -> None:
    """A file whose (0040,0275) sequence holds one item: (0040,0007), the large value of ``kind`` (``size`` bytes
    long if given) and (0042,0012); (0042,0010) follows the sequence. Sequence and item of defined or undefined
    length."""
    tag, vr, length, fill, _ = IN_SEQUENCE[kind]
    length = size or length
    element = implicit_element if implicit else explicit_element
    before = element(0x00400007, "LO", b"BEFORE THE VALUE")
    value_header = element(tag, vr, b"")[:-4] + struct.pack("<L", length)
    after = element(0x00420012, "LO", b"application/pdf")
    item_length = len(before) + len(value_header) + length + len(after)
    sequence = element(0x00400275, "SQ", b"")[:-4]
    if defined:
        opening = sequence + struct.pack("<LHHL", 8 + item_length, 0xFFFE, 0xE000, item_length)
        closing = b""
    else:
        opening = sequence + struct.pack("<LHHL", 0xFFFFFFFF, 0xFFFE, 0xE000, 0xFFFFFFFF)
        closing = struct.pack("<HHLHHL", 0xFFFE, 0xE00D, 0, 0xFFFE, 0xE0DD, 0)
    with path.open("wb") as out:
        out.write(head(sop, implicit) + opening + before + value_header)
        if fill is None:
            out.seek(length, os.SEEK_CUR)
        else:
            out.write(fill(length))
        out.write(after + closing + element(0x00420010, "ST", b"AFTER THE SEQUENCE"))
