"""Memory is bounded per value, not per file: a value that is not stored is never read, by either reader, in either
full_header mode, and the file is still its instance; a file whose stored header is too big for a row is rejected
alone (`header-too-large`), never failing its folder. Inside a sequence too: the lean reader reads of a value only
what deciding and storing it takes, counted in bytes read (``stream.COUNTS``) and, for a 300 MiB value, in peak RSS.

The large files are sparse (a hole where the value is), so they cost no disk; they are deleted with tmp_path."""

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
from sendit_watcher.dicom import lean, stream, values
from sendit_watcher.dicom.headers import Instance, read_instance
from sendit_watcher.dicom.values import too_large_detail
from sendit_watcher.walk import FileEntry, Rejection
from tests.bench.classes import generate
from tests.fix_service import REPO
from tests.helpers import import_folder, scalar
from tests.large_files import BIG, IN_SEQUENCE, explicit_element, implicit_element, write_file, write_in_sequence
from tests.readers import compare, quiet_pydicom, read

_MEASURE = """
import json, resource, sys
from sendit_watcher.dicom import lean, stream
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
read_before = stream.COUNTS["bytes_read"]
result = read(big)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_kb": before, "after_kb": after, "instance": isinstance(result, Instance),
                  "bytes_read": stream.COUNTS["bytes_read"] - read_before,
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
    element = implicit_element if implicit else explicit_element
    fills = {"UT": b"x", "LO": b"y", "FD": struct.pack("<d", 1.5), "US": struct.pack("<H", 7), "OB": b"\x01"}
    body = element(0x00290010, "LO", b"LARGE VALUES")
    for n, (vr, size) in enumerate(elements):
        unit = fills[vr]
        value = (unit * (size // len(unit) + 1))[:size - size % len(unit)]
        body += element(0x00291000 + n, vr if vr != "LO" else "LT", value)
    with path.open("ab") as out:
        out.write(body)


def _in_sequence_cases() -> list[object]:
    return [pytest.param(kind, implicit, defined, full_header,
                         id=f"{kind}-{'implicit' if implicit else 'explicit'}-{'defined' if defined else 'undefined'}"
                            f"-{'full' if full_header else 'main'}")
            for kind in IN_SEQUENCE for implicit in (False, True) for defined in (True, False)
            for full_header in (True, False) if implicit or IN_SEQUENCE[kind][1] != "FD"]  # FD: 2-byte length


@pytest.mark.parametrize(("kind", "implicit", "defined", "full_header"), _in_sequence_cases())
def test_a_value_in_a_sequence_is_read_only_when_it_is_stored(tmp_path: Path, kind: str, implicit: bool,
                                                              defined: bool, full_header: bool) -> None:
    """A large value inside a sequence item: both readers store the same header (the value left out or kept as
    headers._bounded has it, the elements after it read), and the lean reader answers having read, besides a few
    chunks, only what it had to of the value: nothing of a binary value or of numbers left out, text until it
    has seen more than VALUE_LIMIT significant characters (all of it, and once more to store it, when it is
    blank), a stored value once; with the main tags only, nothing of any value in a sequence."""
    quiet_pydicom()
    write_in_sequence(tmp_path / "f.dcm", "1.2.826.0.1.3680043.10.1919.8.1", kind, implicit=implicit,
                      defined=defined)
    length, allowed = IN_SEQUENCE[kind][2], IN_SEQUENCE[kind][4]
    read_before = stream.COUNTS["bytes_read"]
    assert compare(str(tmp_path), "f.dcm", full_header), "the lean reader handed the file back to pydicom"
    bytes_read = stream.COUNTS["bytes_read"] - read_before
    budget = 4 * lean.FIRST_READ + (allowed(length) if full_header else 0)
    assert bytes_read <= budget, f"read {bytes_read:,} bytes of a {length:,}-byte value; at most {budget:,}"
    result = read(str(tmp_path), "f.dcm", full_header, True)
    assert isinstance(result, Instance), result
    if full_header:
        header = json.loads(result.header or "")
        item = header["00400275"]["Value"][0]
        assert item["00420012"]["Value"] == ["application/pdf"], "the element after the value was not read"
        assert header["00420010"]["Value"] == ["AFTER THE SEQUENCE"]
        assert ("Value" in item[f"{IN_SEQUENCE[kind][0]:08X}"]) == (kind == "UT-kept")


@pytest.mark.parametrize("full_header", [True, False], ids=["full-header", "main-tags"])
@pytest.mark.parametrize("defined", [True, False], ids=["defined", "undefined"])
@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_a_300_mib_value_in_a_sequence_costs_the_lean_reader_no_memory(tmp_path: Path, implicit: bool,
                                                                       defined: bool, full_header: bool) -> None:
    """A 300 MiB OB inside a sequence item, read by the lean reader in a fresh process: the peak RSS grows by
    less than 50 MB over a small file's (it was +566 to +1,766 MB: the value read into one growing buffer), less
    than 1 MiB of the file is read, and the header holds the element with its VR and the elements after it."""
    write_file(tmp_path / "small.dcm", "1.2.826.0.1.3680043.10.1919.9.1", implicit=implicit)
    write_in_sequence(tmp_path / "big.dcm", "1.2.826.0.1.3680043.10.1919.9.2", "OB", implicit=implicit,
                      defined=defined, size=BIG)
    run = subprocess.run([sys.executable, "-c", _MEASURE, str(tmp_path), "small.dcm", "big.dcm",
                          "1" if full_header else "0", "1"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=False, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    measured = json.loads(run.stdout)
    growth_mb = (measured["after_kb"] - measured["before_kb"]) / 1024
    assert measured["instance"], measured["reason"]
    assert measured["lean"] == 2, "the lean reader handed the file back to pydicom"
    assert growth_mb < 50, f"reading the file raised the peak RSS by {growth_mb:.0f} MB"
    assert measured["bytes_read"] < 1 << 20, f"read {measured['bytes_read']:,} bytes of the file"
    if full_header:
        item = json.loads(measured["header"])["00400275"]["Value"][0]
        assert item["00420011"] == {"vr": "OB"}
        assert item["00420012"]["Value"] == ["application/pdf"]
    else:
        assert measured["header"] is None


@pytest.mark.parametrize("full_header", [True, False], ids=["full-header", "main-tags"])
def test_the_window_over_a_file_never_holds_more_than_a_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             full_header: bool) -> None:
    """With 4 KiB chunks, a GE CT with a private sequence of 500 items (110 KB) and a file with a 900 KiB text
    stored from a sequence are read as the pydicom path reads them, and the lean reader's window over the file
    never holds more than a chunk: what it has walked past is dropped, a longer value is read on its own."""
    quiet_pydicom()
    chunk = 4096
    monkeypatch.setattr(lean, "FIRST_READ", chunk)
    largest = [0]
    cover = stream.Stream.cover

    def measured(self: stream.Stream, start: int, stop: int) -> bool:
        covered = cover(self, start, stop)
        largest[0] = max(largest[0], len(self.data))
        return covered

    monkeypatch.setattr(stream.Stream, "cover", measured)
    sequence = generate("private-sq-undefined", tmp_path, 1)[0]
    write_in_sequence(tmp_path / "kept.dcm", "1.2.826.0.1.3680043.10.1919.10.1", "UT-kept", implicit=False,
                      defined=True)
    for name in (sequence.name, "kept.dcm"):
        assert compare(str(tmp_path), name, full_header), "the lean reader handed the file back to pydicom"
    assert 0 < largest[0] <= chunk


def _truncated_cases() -> list[object]:
    top = [pytest.param("top", implicit, size, True, "", id=f"top-{size}-{'implicit' if implicit else 'explicit'}")
           for implicit in (False, True) for size in (600, 4000, BIG)]
    nested = [pytest.param("sequence", implicit, 0, defined, kind,
                           id=f"sequence-{kind}-{'defined' if defined else 'undefined'}-"
                              f"{'implicit' if implicit else 'explicit'}")
              for implicit in (False, True) for defined in (True, False) for kind in ("OB", "UT")]
    return top + nested


@pytest.mark.parametrize(("where", "implicit", "size", "defined", "kind"), _truncated_cases())
def test_a_value_that_runs_past_the_end_of_the_file(tmp_path: Path, where: str, implicit: bool, size: int,
                                                    defined: bool, kind: str) -> None:
    """A file cut inside a large value, at the top level (600 B, 4 KB and 300 MiB values) or in a sequence item:
    a value passed over unread is no licence to differ, both readers give the same instance or rejection in both
    modes (pydicom ends the dataset at a deferred value's end of file; the lean reader does the same or hands the
    file back)."""
    quiet_pydicom()
    path = tmp_path / "cut.dcm"
    if where == "top":
        write_file(path, "1.2.826.0.1.3680043.10.1919.12.1", implicit=implicit, big=(0x00420011, "OB", size))
        cut = min(size // 2, 10 << 20)
    else:
        write_in_sequence(path, "1.2.826.0.1.3680043.10.1919.12.2", kind, implicit=implicit, defined=defined)
        cut = IN_SEQUENCE[kind][2] // 2
    os.truncate(path, path.stat().st_size - cut)
    for full_header in (True, False):
        compare(str(tmp_path), path.name, full_header)
