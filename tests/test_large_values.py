"""Memory is bounded per value, not per file (issue 19, item 6): a value that is not stored is never read, by
either reader, in either full_header mode, and the file is still its instance; a file whose stored header is too
big for a row is rejected alone (`header-too-large`), never failing its folder.

The large files are sparse (a hole where the value is), so they cost no disk; they are deleted with tmp_path.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendit_watcher.batch_import import Failure
from sendit_watcher.config import Config
from sendit_watcher.db import Connection
from sendit_watcher.dicom import lean, values
from sendit_watcher.dicom.headers import Instance, read_instance
from sendit_watcher.dicom.values import too_large_detail
from sendit_watcher.walk import FileEntry, Rejection
from tests.fix_service import REPO
from tests.helpers import import_folder, scalar

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
STUDY, SERIES = "1.2.826.0.1.3680043.10.1919.1", "1.2.826.0.1.3680043.10.1919.2"
BIG = 300 << 20  # the EncapsulatedDocument's length: 300 MiB


def _explicit(tag: int, vr: str, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr in ("UI", "OB") else b" "
    if vr in ("OB", "OW", "UN", "UT", "SQ", "UC", "UR", "OD", "OF", "OL", "OV"):
        return struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value


def _implicit(tag: int, vr: str, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr in ("UI", "OB") else b" "
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value


def write_file(path: Path, sop: str, *, implicit: bool = False, big: tuple[int, str, int] | None = None,
               texts: int = 0, text_size: int = 0) -> None:
    """A DICOM file written element by element: the main tags, ``texts`` UT values of ``text_size`` characters
    in private elements, then ``big`` (tag, VR, length) as a hole (sparse: no disk) and (0042,0012) after it."""
    syntax = "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"
    element = _implicit if implicit else _explicit
    meta_body = (_explicit(0x00020001, "OB", b"\x00\x01") + _explicit(0x00020002, "UI", ENCAPSULATED_PDF.encode())
                 + _explicit(0x00020003, "UI", sop.encode()) + _explicit(0x00020010, "UI", syntax.encode()))
    meta = _explicit(0x00020000, "UL", struct.pack("<L", len(meta_body))) + meta_body
    body = b"".join(element(tag, vr, value.encode()) for tag, vr, value in (
        (0x00080016, "UI", ENCAPSULATED_PDF), (0x00080018, "UI", sop), (0x00080060, "CS", "DOC"),
        (0x00100010, "PN", "Large^Value"), (0x00100020, "LO", "LARGE-1"), (0x0020000D, "UI", STUDY),
        (0x0020000E, "UI", SERIES), (0x00200013, "IS", "1")))
    with path.open("wb") as out:
        out.write(b"\x00" * 128 + b"DICM" + meta + body)
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


_MEASURE = """
import json, resource, sys
from sendit_watcher.dicom import lean
from sendit_watcher.dicom.headers import Instance, quiet_pydicom, read_instance
from sendit_watcher.walk import FileEntry
import os
quiet_pydicom()
folder, small, big = sys.argv[1:4]
full_header, lean.ENABLED = sys.argv[4] == "1", sys.argv[5] == "1"
def read(name):
    info = os.stat(os.path.join(folder, name))
    return read_instance(folder, FileEntry(name, info.st_size, info.st_mtime_ns), full_header)
first = read(small)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = read(big)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_kb": before, "after_kb": after, "instance": isinstance(result, Instance),
                  "header": getattr(result, "header", None), "lean": lean.COUNTS["lean"],
                  "reason": getattr(result, "reason", None)}))
"""


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
@pytest.mark.parametrize("full_header", [True, False], ids=["full-header", "main-tags"])
@pytest.mark.parametrize("use_lean", [True, False], ids=["lean", "pydicom"])
def test_a_value_that_is_not_stored_is_never_read(tmp_path: Path, implicit: bool, full_header: bool,
                                                  use_lean: bool) -> None:
    """A 300 MiB EncapsulatedDocument (0042,0011): reading its file in a fresh process raises the peak RSS by
    less than 100 MB over a small file's (before, the value was read: 300 MiB at least, 600 MiB by the lean
    reader), and the file is still its instance, the element kept with its VR and no value."""
    write_file(tmp_path / "small.dcm", "1.2.826.0.1.3680043.10.1919.3.1", implicit=implicit)
    write_file(tmp_path / "big.dcm", "1.2.826.0.1.3680043.10.1919.3.2", implicit=implicit,
               big=(0x00420011, "OB", BIG))
    assert (tmp_path / "big.dcm").stat().st_size > BIG
    run = subprocess.run([sys.executable, "-c", _MEASURE, str(tmp_path), "small.dcm", "big.dcm",
                          "1" if full_header else "0", "1" if use_lean else "0"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=False, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    measured = json.loads(run.stdout)
    growth_mb = (measured["after_kb"] - measured["before_kb"]) / 1024
    assert measured["instance"], measured["reason"]
    assert growth_mb < 100, f"reading the file raised the peak RSS by {growth_mb:.0f} MB"
    if use_lean:
        assert measured["lean"] == 2, "the lean reader handed the file back to pydicom"
    if full_header:
        header = json.loads(measured["header"])
        assert header["00420011"] == {"vr": "OB"}
        assert header["00420012"]["Value"] == ["application/pdf"], "the element after the value was not read"
    else:
        assert measured["header"] is None


def test_an_unread_value_still_makes_its_instance_row(tmp_path: Path, conn: Connection, config: Config) -> None:
    """Through the importer: the file with a 300 MiB EncapsulatedDocument is an instance row whose header holds
    (0042,0011) with its VR and no value, and (0042,0012) after it."""
    folder = tmp_path / "DOCUMENT"
    folder.mkdir()
    write_file(folder / "doc.dcm", "1.2.826.0.1.3680043.10.1919.4.1", big=(0x00420011, "OB", BIG))
    outcome = import_folder(conn, config, folder)
    assert not isinstance(outcome, Failure), outcome
    assert (outcome.instances, outcome.rejected) == (1, 0)
    header = scalar(conn, "SELECT header FROM instance WHERE path = 'doc.dcm'")
    assert isinstance(header, dict)
    assert header["00420011"] == {"vr": "OB"}
    assert header["00420012"] == {"vr": "LO", "Value": ["application/pdf"]}


def test_the_testers_file_whose_header_is_too_big_for_a_row_is_rejected_alone(tmp_path: Path, conn: Connection,
                                                                               config: Config) -> None:
    """The tester's file, 270 UT values of 1,000,000 characters: its JSON header (270 MB) is more than jsonb holds
    (COPY into staging failed with SQLSTATE 54000, failing the folder). Now that file is rejected as
    `header-too-large` before it reaches PostgreSQL, and the rest of its folder is imported."""
    folder = tmp_path / "HUGE"
    folder.mkdir()
    write_file(folder / "huge.dcm", "1.2.826.0.1.3680043.10.1919.5.1", texts=270, text_size=1_000_000)
    for n in (2, 3):
        write_file(folder / f"ok{n}.dcm", f"1.2.826.0.1.3680043.10.1919.5.{n}")
    try:
        outcome = import_folder(conn, config, folder)
    finally:
        (folder / "huge.dcm").unlink()  # 270 MB of disk, freed at once
    assert not isinstance(outcome, Failure), outcome
    assert (outcome.instances, outcome.rejected) == (2, 1)
    reason = scalar(conn, "SELECT reason || ': ' || detail FROM rejected_file WHERE path = 'huge.dcm'")
    assert reason == "header-too-large: " + too_large_detail()


@pytest.mark.parametrize("use_lean", [True, False], ids=["lean", "pydicom"])
def test_a_header_over_the_limit_is_rejected_and_one_under_it_stored(tmp_path: Path, conn: Connection,
                                                                      config: Config, use_lean: bool,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """HEADER_LIMIT lowered to 2 MiB (the real 32 MiB needs 32 MB files): a file of three 1,000,000-character
    UT values is rejected as `header-too-large` by either reader, one of two such values is an instance with
    both stored, and the folder imports."""
    monkeypatch.setattr(values, "HEADER_LIMIT", 2 << 20)
    monkeypatch.setattr(lean, "ENABLED", use_lean)
    folder = tmp_path / "LIMIT"
    folder.mkdir()
    write_file(folder / "three.dcm", "1.2.826.0.1.3680043.10.1919.6.1", texts=3, text_size=1_000_000)
    write_file(folder / "two.dcm", "1.2.826.0.1.3680043.10.1919.6.2", texts=2, text_size=1_000_000)
    outcome = import_folder(conn, config, folder)
    assert not isinstance(outcome, Failure), outcome
    assert (outcome.instances, outcome.rejected) == (1, 1)
    assert scalar(conn, "SELECT reason FROM rejected_file WHERE path = 'three.dcm'") == "header-too-large"
    stored = scalar(conn, "SELECT length(header->'00291001'->'Value'->>0) + length(header->'00291000'->'Value'->>0)"
                          " FROM instance WHERE path = 'two.dcm'")
    assert stored == 2_000_000


_SIZES = st.lists(st.tuples(st.sampled_from(["UT", "LO", "FD", "US", "OB"]), st.integers(0, 6000)), max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(elements=_SIZES, implicit=st.booleans())
def test_header_too_large_exactly_when_its_json_is_over_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   elements: list[tuple[str, int]],
                                                                   implicit: bool) -> None:
    """Property, with HEADER_LIMIT lowered to 16 KiB (so that the lean reader stops early): for any
    mix of text, number and binary values, both readers give the same outcome, and it is `header-too-large`
    exactly when the header pydicom's path writes is longer than the limit in UTF-8."""
    limit = 16 << 10
    path = tmp_path / "f.dcm"
    write_mixed(path, elements, implicit)
    info = path.stat()
    entry = FileEntry("f.dcm", info.st_size, info.st_mtime_ns)
    with monkeypatch.context() as patch:
        patch.setattr(lean, "ENABLED", False)
        unbounded = read_instance(str(tmp_path), entry, True)
        assert isinstance(unbounded, Instance), unbounded
        assert unbounded.header is not None
        patch.setattr(values, "HEADER_LIMIT", limit)
        expected = read_instance(str(tmp_path), entry, True)
        patch.setattr(lean, "ENABLED", True)
        got = read_instance(str(tmp_path), entry, True)
    too_large = len(unbounded.header.encode("utf-8")) > limit
    assert isinstance(expected, Rejection) == too_large
    assert got == expected if isinstance(got, Rejection) else (
        isinstance(expected, Instance) and json.loads(got.header or "") == json.loads(expected.header or ""))
    if too_large:
        assert isinstance(got, Rejection) and got.reason == "header-too-large"


def write_mixed(path: Path, elements: list[tuple[str, int]], implicit: bool) -> None:
    """A file with the main tags and one private element per (VR, size) (implicit VR: all UN, as pydicom reads
    unknown private elements)."""
    write_file(path, "1.2.826.0.1.3680043.10.1919.7.1", implicit=implicit)
    element = _implicit if implicit else _explicit
    fills = {"UT": b"x", "LO": b"y", "FD": struct.pack("<d", 1.5), "US": struct.pack("<H", 7), "OB": b"\x01"}
    body = element(0x00290010, "LO", b"LARGE VALUES")
    for n, (vr, size) in enumerate(elements):
        unit = fills[vr]
        value = (unit * (size // len(unit) + 1))[:size - size % len(unit)]
        body += element(0x00291000 + n, vr if vr != "LO" else "LT", value)
    with path.open("ab") as out:
        out.write(body)
