"""Property-based tests (hypothesis) of DESIGN §10's promises, through the public `import` command.

Generated datasets carry a value of every VR (NaN and ±Inf, U+0000, bytes that are not valid in the declared
charset, backslashes, 64 KB strings, odd charsets, nested sequences with their own charset, numbers that fit no
integer) in explicit and implicit VR little endian: every file is one instance or one rejection, the folder never
fails, and the stored DICOM JSON round-trips what was written, modulo the documented representation (NUL removed,
undecodable bytes as U+FFFD, non-finite numbers as "NaN"/"Infinity"/"-Infinity").

Generated folder trees (deep, wide, names that are not UTF-8 or collide once escaped, symlinks at every level to
inside and outside, FIFOs, files changing during the import): every entry one row, no two names one row, and
nothing outside the folder is ever read (an outside DICOM canary, an outside FIFO nobody may open, atimes).

Hypothesis shares the test's schema between examples; each example imports a folder of its own and compares the
rows of that folder's batch only. Examples are derandomized (the same on every run) unless
SENDIT_HYPOTHESIS_RANDOM=1; SENDIT_HYPOTHESIS_SCALE multiplies the number of examples for a soak;
SENDIT_HYPOTHESIS_SHRINK=1 shrinks a failure to a minimal example (slow: every example is an import).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import errno
import io
import itertools
import json
import math
import os
import re
import stat
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from sendit_watcher import names
from sendit_watcher.cli import main
from sendit_watcher.config import DatabaseConfig
from sendit_watcher.db import Connection
from tests.helpers import write_config

PYDICOM3 = int(pydicom.__version__.split(".")[0]) >= 3
SCALE = float(os.environ.get("SENDIT_HYPOTHESIS_SCALE", "1"))
RANDOM = os.environ.get("SENDIT_HYPOTHESIS_RANDOM") == "1"
# Each example is a whole import: shrinking a failure would take hundreds of them. SENDIT_HYPOTHESIS_SHRINK=1 does.
PHASES = tuple(Phase) if os.environ.get("SENDIT_HYPOTHESIS_SHRINK") == "1" else (
    Phase.explicit, Phase.reuse, Phase.generate)


def examples(n: int) -> settings:
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, derandomize=not RANDOM, database=None,
                    phases=PHASES, report_multiple_bugs=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


_serial = itertools.count(1)


def uid(kind: int) -> str:
    return f"1.2.826.0.1.3680043.10.99.{kind}.{os.getpid()}.{time.time_ns()}.{next(_serial)}"


# --------------------------------------------------------------------------------------------------------------
# The import command, and what the database says about one batch
# --------------------------------------------------------------------------------------------------------------

def run_import(conffile: Path, folder: Path | bytes) -> tuple[int, list[dict[str, Any]]]:
    """``sendit-watcher --config C import --json --no-progress FOLDER`` in this process: (exit code, JSON lines)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--config", str(conffile), "import", "--json", "--no-progress", os.fsdecode(folder)])
    return code, [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


@dataclass
class BatchRows:
    batch: dict[str, Any]
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    rejected_detail: dict[str, str] = field(default_factory=dict)


def rows_of(conn: Connection, batch_id: int) -> BatchRows:
    row = conn.execute("SELECT status, files, instances, rejected, last_error FROM batch WHERE id = %s",
                       (batch_id,)).fetchone()
    assert row is not None, f"no batch row {batch_id}"
    rows = BatchRows(dict(zip(("status", "files", "instances", "rejected", "last_error"), row, strict=True)))
    for path, sop, header, number, series_number, content_date in conn.execute(
            "SELECT i.path, i.sop_instance_uid, i.header::text, i.instance_number, s.series_number, i.content_date"
            " FROM instance i JOIN series s ON s.id = i.series WHERE i.batch = %s", (batch_id,)):
        assert path not in rows.instances
        rows.instances[path] = {"sop": sop, "header": header, "instance_number": number,
                                "series_number": series_number, "content_date": content_date}
    for path, reason, detail in conn.execute("SELECT path, reason, detail FROM rejected_file WHERE batch = %s",
                                             (batch_id,)):
        assert path not in rows.rejected
        rows.rejected[path] = reason
        rows.rejected_detail[path] = detail
    conn.rollback()
    return rows


def import_folder(conffile: Path, folder: Path, conn: Connection) -> tuple[dict[str, Any], BatchRows]:
    """Import a folder through the command; not failed, and its batch's rows."""
    code, outcomes = run_import(conffile, folder)
    assert len(outcomes) == 1, outcomes
    outcome = outcomes[0]
    assert outcome["status"] != "failed" and code == 0, f"the folder failed: {outcome}"
    return outcome, rows_of(conn, outcome["batch_id"])


def check_accounting(outcome: dict[str, Any], rows: BatchRows, files: int) -> None:
    """What every import holds: one row per file, batch.files = files, every rejection with a reason."""
    assert rows.batch["status"] in ("done", "empty"), rows.batch
    assert not set(rows.instances) & set(rows.rejected), "a file is both an instance and a rejection"
    assert len(rows.instances) + len(rows.rejected) == files, (
        f"{files} files on disk, {len(rows.instances)} instance rows + {len(rows.rejected)} rejected rows: "
        f"{sorted(rows.instances)[:5]} {sorted(rows.rejected.items())[:5]}")
    assert rows.batch["files"] == files and outcome["files"] == files, (rows.batch, outcome)
    assert rows.batch["instances"] == len(rows.instances) and rows.batch["rejected"] == len(rows.rejected)
    assert all(reason.strip() for reason in rows.rejected.values()), rows.rejected


def import_and_check_accounting(conn: Connection, conffile: Path, folder: Path, files: int) -> BatchRows:
    outcome, rows = import_folder(conffile, folder, conn)
    check_accounting(outcome, rows, files)
    return rows


# --------------------------------------------------------------------------------------------------------------
# a. Generated datasets with a value of every VR
# --------------------------------------------------------------------------------------------------------------

# One standard tag per VR, the same VR in pydicom 2.3's and 3.0's dictionaries (so implicit VR reads it back).
VR_TAGS = {"AE": 0x00080054, "AS": 0x0072005F, "AT": 0x00720060, "CS": 0x00080061, "DA": 0x00181200,
           "DS": 0x00082130, "DT": 0x0008002A, "FL": 0x0018605A, "FD": 0x00081163, "IS": 0x00081160,
           "LO": 0x00080070, "LT": 0x00204000, "OB": 0x00720065, "OD": 0x00720073, "OF": 0x00720067,
           "OL": 0x00720075, "OV": 0x00720081, "OW": 0x00720069, "PN": 0x00081070, "SH": 0x00081010,
           "SL": 0x00186020, "SQ": 0x0040A730, "SS": 0x00189219, "ST": 0x00080081, "SV": 0x00720082,
           "TM": 0x00080032, "UC": 0x0072006F, "UI": 0x0008001A, "UL": 0x00081161, "UN": 0x0072006D,
           "UR": 0x00081190, "US": 0x00181244, "UT": 0x00189910, "UV": 0x00720083}
ITEM_LO, ITEM_LT, ITEM_PN = 0x00080104, 0x00080108, 0x0040A123
INSTANCE_NUMBER, SERIES_NUMBER, CONTENT_DATE = 0x00200013, 0x00200011, 0x00080023
INLINE_LIMIT = 256

ASCII = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 .,;:!?'\"()[]{}<>@#$%&*+-/|~_"
SOLID = "ABCXYZabcxyz0123456789"
# (SpecificCharacterSet, the characters written in it, the Python codec when we write raw bytes ourselves)
CHARSETS: list[tuple[list[str] | str | None, str, str | None]] = [
    (None, ASCII, None),
    ("ISO_IR 100", ASCII + "äöüßéñçøÅ¿×", None),
    ("ISO_IR 192", ASCII + "äß名前山田太郎中文😀Ωж", "utf-8"),
    (["ISO 2022 IR 6", "ISO 2022 IR 87"], ASCII + "山田太郎", None),
    ("GB18030", ASCII + "王小明中文", "gb18030"),
    ("ISO_IR 999", ASCII, None),
]
# Byte sequences that no decoder of the charset accepts (a UTF-8 encoded lone surrogate among them).
INVALID = {"utf-8": [b"\xff\xfe", b"\xed\xa0\x80", b"\xc0\xaf", b"\x80\x80", b"\xff"],
           "gb18030": [b"\xff\xff", b"\xff"]}
WEIRD_IS = ["7", "+5", " -12 ", "2147483647", "2147483648", "-2147483649", "99999999999", "-99999999999",
            "1e999"]


@dataclass
class Element:
    """One element to write (a pydicom value, or raw bytes) and the DICOM JSON element expected back (None:
    the value is not checked, only that the header loads)."""

    tag: int
    vr: str
    value: Any = None
    raw: bytes | None = None
    expected: dict[str, Any] | None = None

    def __repr__(self) -> str:  # short: hypothesis prints falsifying examples, values may be 64 KB
        shown = repr(self.raw if self.raw is not None else self.value)
        return f"Element({self.tag:08X} {self.vr} {shown[:120]}{'...' if len(shown) > 120 else ''})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis's pretty printer
        printer.text(repr(self))


@dataclass
class Spec:
    implicit: bool
    charset: int
    elements: list[Element]
    sop: str = ""
    instance_number: str = "1"
    series_number: str = "1"
    content_date: str = "20261129"


def text_strategy(alphabet: str, max_size: int, *, backslash: bool = False, controls: bool = False,
                  nul: bool = True) -> st.SearchStrategy[str]:
    """Text whose first and last characters are solid (no padding can eat them), the rest anything allowed."""
    inner = list(alphabet) + (["\\"] if backslash else []) + (["\t", "\n", "\r", "\x07"] if controls else [])
    inner += ["\x00"] if nul else []
    edge = st.sampled_from(list(SOLID))
    middle = st.text(st.sampled_from(inner), max_size=max(0, max_size - 2))
    return st.builds(lambda a, mid, b: a + mid + b, edge, middle,
                     edge)


def stored_text(value: str) -> str:
    """A written text value as the JSON holds it: NUL characters removed."""
    return value.replace("\x00", "")


def number_json(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def pad(data: bytes, with_byte: bytes = b" ") -> bytes:
    return data + with_byte if len(data) % 2 else data


@st.composite
def element_strategies(draw: st.DrawFn, charset: int, implicit: bool) -> list[Element]:
    scs, alphabet, codec = CHARSETS[charset]
    ctext = scs == ["ISO 2022 IR 6", "ISO 2022 IR 87"]  # ISO 2022: no control characters in text
    out: list[Element] = []

    def add(vr: str, value: Any, values_json: list[Any] | None) -> None:
        expected = {"vr": vr, "Value": values_json} if values_json is not None else {"vr": vr}
        out.append(Element(VR_TAGS[vr], vr, value, expected=expected))

    def many(strategy: st.SearchStrategy[Any], n: int = 3) -> list[Any]:
        return draw(st.lists(strategy, min_size=1, max_size=n))

    ae = many(text_strategy(ASCII.replace(" ", ""), 16, nul=False))
    add("AE", ae, ae)
    ages = many(st.builds(lambda n, u: f"{n:03d}{u}", st.integers(0, 999), st.sampled_from("DWMY")))
    add("AS", ages, ages)
    ats = many(st.integers(0, 2**32 - 1))
    add("AT", [Tag(t) for t in ats], [f"{t:08X}" for t in ats])
    cs = many(text_strategy("ABCDEFXYZ0123456789_ ", 16, nul=False))
    add("CS", cs, cs)
    das = many(st.builds(lambda y, m, d: f"{y:04d}{m:02d}{d:02d}", st.integers(0, 9999), st.integers(0, 19),
                         st.integers(0, 39)))
    add("DA", das, das)
    dts = [draw(st.builds(lambda y, s: f"{y:04d}1129013000.{s:06d}+0100", st.integers(1, 9999),
                          st.integers(0, 999999)))]
    add("DT", dts, dts)
    tms = many(st.builds(lambda h, m, s: f"{h:02d}{m:02d}{s:02d}.5", st.integers(0, 23), st.integers(0, 59),
                         st.integers(0, 59)))
    add("TM", tms, tms)
    for vr, width in (("FL", 32), ("FD", 64)):
        floats = many(st.floats(width=width, allow_nan=True, allow_infinity=True), 4)
        add(vr, floats, [number_json(f) for f in floats])
    # DS: decimal text, and the non-finite words some writers put there (written raw: pydicom refuses them).
    ds_words = many(st.one_of(st.floats(-1e9, 1e9, allow_nan=False).map(lambda f: f"{f:.6g}"),
                              st.sampled_from(["NaN", "inf", "-inf", "Infinity"])), 4)
    raw = pad("\\".join(ds_words).encode())
    out.append(Element(VR_TAGS["DS"], "DS", raw=raw,
                       expected={"vr": "DS", "Value": [number_json(float(w)) for w in ds_words]}))
    ints = many(st.integers(-2**31, 2**31 - 1))
    add("IS", [str(i) for i in ints], ints)
    for vr, low, high in (("SL", -2**31, 2**31 - 1), ("SS", -2**15, 2**15 - 1), ("SV", -2**63, 2**63 - 1),
                          ("UL", 0, 2**32 - 1), ("US", 0, 2**16 - 1), ("UV", 0, 2**64 - 1)):
        numbers = many(st.integers(low, high))
        add(vr, numbers, numbers)
    uids = many(st.builds(lambda a, b: f"1.2.840.{a}.{b}", st.integers(1, 10**9), st.integers(1, 10**9)))
    add("UI", uids, uids)
    url = draw(text_strategy("abcdefghijklmnopqrstuvwxyz0123456789/-._~%?=&", 60, nul=False))
    add("UR", "http://example.org/" + url, ["http://example.org/" + url])
    for vr, size, unit in (("OB", 600, 2), ("OD", 600, 8), ("OF", 600, 4), ("OL", 600, 4), ("OV", 600, 8),
                           ("OW", 600, 2), ("UN", 600, 2)):
        n = draw(st.integers(0, size // unit)) * unit
        data = draw(st.binary(min_size=n, max_size=n))
        expected: dict[str, Any] = {"vr": vr}
        if 0 < len(data) <= INLINE_LIMIT:
            expected["InlineBinary"] = base64.b64encode(data).decode()
        out.append(Element(VR_TAGS[vr], vr, data, expected=expected))
    # Text in the declared charset: multi-valued VRs without backslashes, LT/ST/UT with them.
    for vr, size in (("SH", 16), ("LO", 64), ("UC", 200)):
        values = many(text_strategy(alphabet, size, nul=vr != "SH"))
        add(vr, values, [stored_text(v) for v in values])
    names_ = many(st.builds(lambda f, g: f"{f}^{g}", text_strategy(alphabet.replace("^", "").replace("=", ""), 20,
                                                                   nul=False),
                            text_strategy(alphabet.replace("^", "").replace("=", ""), 20, nul=False)), 2)
    add("PN", names_, [{"Alphabetic": n} for n in names_])
    for vr, size in (("ST", 1024), ("LT", 10240), ("UT", 4000)):
        value = draw(text_strategy(alphabet, min(size, 300), backslash=True, controls=not ctext))
        if vr == "UT" and draw(st.booleans()):
            value = (value * (65536 // max(1, len(value)) + 1))[:65535] + "Z"  # a 64 KB string
        holes = codec is not None and vr != "ST" and draw(st.booleans())
        if holes:
            assert codec is not None
            # each hole followed by a letter: what a decoder swallows after an invalid byte is then defined
            pieces = [value] + ["Z" + p for p in draw(st.lists(text_strategy(alphabet, 40, backslash=True),
                                                               min_size=1, max_size=3))]
            bad = [draw(st.sampled_from(INVALID[codec])) for _ in pieces[1:]]
            data = pieces[0].encode(codec) + b"".join(b + p.encode(codec) for b, p in zip(bad, pieces[1:],
                                                                                           strict=True))
            out.append(Element(VR_TAGS[vr], vr, raw=pad(data),
                               expected={"vr": vr, "Value": [stored_text("\ufffd".join(pieces))]}))
        else:
            add(vr, value, [stored_text(value)])
    out.append(draw(sequence_strategy(3, implicit)))
    return out


@st.composite
def item_strategy(draw: st.DrawFn, depth: int, implicit: bool) -> tuple[Dataset, dict[str, Any]]:
    """One sequence item, maybe with its own SpecificCharacterSet, maybe with a nested sequence."""
    charset = draw(st.integers(0, len(CHARSETS) - 1))
    scs, alphabet, _ = CHARSETS[charset]
    item, expected = Dataset(), {}
    if scs is not None:
        item.SpecificCharacterSet = scs
    lo = draw(text_strategy(alphabet, 64))
    item.add_new(ITEM_LO, "LO", lo)
    expected[f"{ITEM_LO:08X}"] = {"vr": "LO", "Value": [stored_text(lo)]}
    if draw(st.booleans()):
        lt = draw(text_strategy(alphabet, 200, backslash=True))
        item.add_new(ITEM_LT, "LT", lt)
        expected[f"{ITEM_LT:08X}"] = {"vr": "LT", "Value": [stored_text(lt)]}
    if draw(st.booleans()):
        clean = alphabet.replace("^", "").replace("=", "")
        pn = draw(text_strategy(clean, 20, nul=False)) + "^" + draw(text_strategy(clean, 20, nul=False))
        item.add_new(ITEM_PN, "PN", pn)
        expected[f"{ITEM_PN:08X}"] = {"vr": "PN", "Value": [{"Alphabetic": pn}]}
    if depth > 0 and draw(st.booleans()):
        nested = draw(sequence_strategy(depth - 1, implicit))
        item.add_new(nested.tag, "SQ", nested.value)
        expected[f"{nested.tag:08X}"] = nested.expected
    return item, expected


@st.composite
def sequence_strategy(draw: st.DrawFn, depth: int, implicit: bool) -> Element:
    items = draw(st.lists(item_strategy(depth, implicit), min_size=1, max_size=2))
    return Element(VR_TAGS["SQ"], "SQ", Sequence([i for i, _ in items]),
                   expected={"vr": "SQ", "Value": [e for _, e in items]})


@st.composite
def dataset_specs(draw: st.DrawFn) -> Spec:
    implicit = draw(st.booleans())
    charset = draw(st.integers(0, len(CHARSETS) - 1))
    elements = draw(element_strategies(charset, implicit))
    spec = Spec(implicit, charset, elements)
    spec.instance_number = draw(st.sampled_from(WEIRD_IS))
    spec.series_number = draw(st.sampled_from(WEIRD_IS))
    spec.content_date = draw(st.sampled_from(["20261129", "19000101", "20261399", "00000000", "2026112"]))
    return spec


LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"}


def element_header(tag: int, vr: str, length: int, implicit: bool) -> bytes:
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack("<I", length)
    if vr in LONG_VRS:
        return head + vr.encode() + b"\0\0" + struct.pack("<I", length)
    return head + vr.encode() + struct.pack("<H", length)


def write_spec(spec: Spec, path: Path) -> None:
    """Write one generated dataset with pydicom; values pydicom would refuse or repair (NaN in DS, 1e999 in IS,
    bytes invalid in the charset) go in as a placeholder of the same length, then replaced in the bytes."""
    previous = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        ds = Dataset()
        scs = CHARSETS[spec.charset][0]
        if scs is not None:
            ds.SpecificCharacterSet = scs
        spec.sop = uid(3)
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        ds.SOPInstanceUID = spec.sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = uid(1), uid(2)
        ds.PatientID = f"PROP-{spec.sop[-12:]}"
        raws = [(e.tag, e.vr, e.raw) for e in spec.elements if e.raw is not None]
        raws += [(INSTANCE_NUMBER, "IS", pad(spec.instance_number.encode())),
                 (SERIES_NUMBER, "IS", pad(spec.series_number.encode())),
                 (CONTENT_DATE, "DA", pad(spec.content_date.encode()))]
        for element in spec.elements:
            if element.raw is None:
                ds.add_new(element.tag, element.vr, element.value)
        for tag, vr, data in raws:
            ds.add_new(tag, vr, ("1" if vr in ("IS", "DS", "DA") else "Q") * len(data))
        written = dataset_bytes(ds, spec.implicit)
        for tag, vr, data in raws:
            placeholder = element_header(tag, vr, len(data), spec.implicit)
            placeholder += (b"1" if vr in ("IS", "DS", "DA") else b"Q") * len(data)
            assert written.count(placeholder) == 1, f"generator: placeholder of {tag:08X} not found once"
            written = written.replace(placeholder, element_header(tag, vr, len(data), spec.implicit) + data)
        path.write_bytes(written)
    finally:
        pydicom.config.settings.writing_validation_mode = previous


def dataset_bytes(ds: Dataset, implicit: bool) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian if implicit else \
        pydicom.uid.ExplicitVRLittleEndian
    buffer = io.BytesIO()
    if PYDICOM3:
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    else:
        ds.is_implicit_VR, ds.is_little_endian = implicit, True
        ds.preamble = b"\0" * 128
        pydicom.dcmwrite(buffer, ds, write_like_original=False)
    return buffer.getvalue()


def fffd_runs(text: str) -> str:
    """Invalid byte sequences may become one U+FFFD each or one per byte: compare with runs collapsed."""
    return re.sub("\ufffd+", "\ufffd", text)


def assert_element(found: dict[str, Any] | None, expected: dict[str, Any], where: str) -> None:
    assert found is not None, f"{where}: element missing from the stored header"
    assert found.get("vr") == expected["vr"], f"{where}: vr {found.get('vr')!r} != {expected['vr']!r}"
    vr = expected["vr"]
    if "InlineBinary" in expected or vr in ("OB", "OD", "OF", "OL", "OV", "OW", "UN"):
        assert found.get("InlineBinary") == expected.get("InlineBinary"), f"{where}: binary value differs"
        return
    if "Value" not in expected:
        return
    values = found.get("Value")
    assert isinstance(values, list) and len(values) == len(expected["Value"]), (
        f"{where}: {vr} values {str(values)[:300]} != {str(expected['Value'])[:300]}")
    for n, (got, want) in enumerate(zip(values, expected["Value"], strict=True)):
        at = f"{where}[{n}]"
        if vr == "SQ":
            assert isinstance(got, dict), f"{at}: item is not an object: {got!r}"
            for tag, element in want.items():
                assert_element(got.get(tag), element, f"{at}.{tag}")
        elif isinstance(want, str) and vr in ("FL", "FD", "DS"):
            assert got == want, f"{at}: non-finite {vr} stored as {got!r}, documented as {want!r}"
        elif vr == "FL":
            assert isinstance(got, (int, float)) and not isinstance(got, bool), f"{at}: {got!r} is not a number"
            # as float32; -0.0 == 0.0 (PostgreSQL's numeric has no negative zero)
            assert struct.unpack("<f", struct.pack("<f", got)) == struct.unpack("<f", struct.pack("<f", want)), (
                f"{at}: FL {got!r} != {want!r}")
        elif vr in ("FD", "DS"):
            assert isinstance(got, (int, float)) and not isinstance(got, bool), f"{at}: {got!r} is not a number"
            assert float(got) == want, f"{at}: {vr} {got!r} != {want!r}"
        elif vr in ("IS", "SL", "SS", "SV", "UL", "US", "UV"):
            assert isinstance(got, int) and not isinstance(got, bool) and got == want, f"{at}: {vr} {got!r} != {want}"
        elif vr == "PN":
            assert isinstance(got, dict) and got.get("Alphabetic") == want["Alphabetic"], f"{at}: {got!r} != {want!r}"
        else:
            assert isinstance(got, str), f"{at}: {vr} {got!r} is not a string"
            assert fffd_runs(got) == fffd_runs(want), f"{at}: {vr} {got[:200]!r} != {want[:200]!r}"


def expected_integer(text: str) -> int | None:
    try:
        number = int(text.strip())
    except ValueError:
        return None
    return number if -2**31 <= number < 2**31 else None


def expected_date(text: str) -> datetime.date | None:
    try:
        return datetime.datetime.strptime(text, "%Y%m%d").date() if len(text) == 8 else None
    except ValueError:
        return None


_example = itertools.count(1)


def dataset_property(conn: Connection, base: Path, conffile: Path, specs: list[Spec], full_header: bool) -> None:
    folder = base / f"datasets-{next(_example):04d}"
    folder.mkdir()
    for n, spec in enumerate(specs):
        write_spec(spec, folder / f"IM{n:03d}.dcm")
    rows = import_and_check_accounting(conn, conffile, folder, len(specs))
    assert not rows.rejected, f"valid instances rejected: {rows.rejected_detail or rows.rejected}"
    problems: list[str] = []  # every broken promise of the example, not only the first

    def check(condition: bool, message: str) -> None:
        if not condition:
            problems.append(message)

    for n, spec in enumerate(specs):
        where = f"IM{n:03d}.dcm ({'implicit' if spec.implicit else 'explicit'} VR, charset {CHARSETS[spec.charset][0]})"
        row = rows.instances[f"IM{n:03d}.dcm"]
        check(row["sop"] == spec.sop, f"{where}: SOP {row['sop']} != {spec.sop}")
        for column, text in (("instance_number", spec.instance_number), ("series_number", spec.series_number)):
            check(row[column] == expected_integer(text),
                  f"{where}: {column} column {row[column]!r} for IS {text!r}, expected {expected_integer(text)!r}")
        check(row["content_date"] == expected_date(spec.content_date),
              f"{where}: content_date {row['content_date']!r} for DA {spec.content_date!r}")
        if not full_header:
            check(row["header"] is None, f"{where}: full_header = no, yet a header was stored")
            continue
        if row["header"] is None:
            problems.append(f"{where}: full_header = yes, no header stored")
            continue
        header = json.loads(row["header"])
        check(header.get("00080018", {}).get("Value") == [spec.sop], f"{where}: SOPInstanceUID not in the header")
        for element in spec.elements:
            if element.expected is not None:
                try:
                    assert_element(header.get(f"{element.tag:08X}"), element.expected, f"{where} {element.tag:08X}")
                except AssertionError as exc:
                    problems.append(str(exc))
        for tag, text in ((INSTANCE_NUMBER, spec.instance_number), (SERIES_NUMBER, spec.series_number)):
            number = expected_integer(text)
            if number is None and re.fullmatch(r" *[+-]?[0-9]+ *", text):
                number = int(text)  # a valid IS too big for a column is still a JSON number in the header
            if number is not None:
                check(header.get(f"{tag:08X}", {}).get("Value") == [number],
                      f"{where}: {tag:08X} IS {text!r} stored as {header.get(f'{tag:08X}')}")
    assert not problems, f"{len(problems)} values not round-tripped:\n" + "\n".join(p[:400] for p in problems)


@pytest.mark.parametrize("full_header", [True, False], ids=["full-header", "main-tags"])
def test_generated_datasets_of_every_vr_import_as_instances_and_round_trip(
        full_header: bool, database: DatabaseConfig, conn: Connection, tmp_path: Path) -> None:
    conffile = write_config(tmp_path / "watcher.conf", database, {}, full_header="yes" if full_header else "no",
                            parse_processes=1)

    @examples(40)
    @given(st.lists(dataset_specs(), min_size=1, max_size=3))
    def check(specs: list[Spec]) -> None:
        dataset_property(conn, tmp_path, conffile, specs, full_header)

    check()


def test_an_is_value_that_is_no_integer_leaves_the_column_null(database: DatabaseConfig, conn: Connection,
                                                                tmp_path: Path) -> None:
    """IS "1.5" is no integer: the column is NULL, not 1 (nor 2), and the file is still an instance."""
    conffile = write_config(tmp_path / "watcher.conf", database, {}, full_header="yes", parse_processes=1)
    spec = Spec(implicit=False, charset=0, elements=[], instance_number="1.5", series_number="-0.5")
    dataset_property(conn, tmp_path, conffile, [spec], full_header=True)


# --------------------------------------------------------------------------------------------------------------
# b. Generated folder trees
# --------------------------------------------------------------------------------------------------------------

NAME_PIECES = [b"a", b"IM0001.dcm", b"\xff\xfe", b"\xff", b"\\xff", b"\\", b"\\\\", b"\n", b"x\ny", b"\xe9t\xe9",
               b"caf\xc3\xa9", b"\xed\xa0\x80", b" ", b"-", b"..x", b"\\x", b"\\xFF", b"\x01"]


@dataclass
class Tree:
    """What a generated folder holds, by relative path (bytes): 'dicom', 'junk', 'empty', 'fifo', 'symlink'."""

    entries: dict[bytes, str] = field(default_factory=dict)
    sops: dict[bytes, str] = field(default_factory=dict)
    dirs: list[bytes] = field(default_factory=list)


@dataclass
class Outside:
    """What lies next to the batch folder, outside it: a DICOM canary, a directory holding one, a FIFO."""

    dicom: Path
    directory: Path
    fifo: Path
    sop: str
    inner_sop: str


def name_strategy() -> st.SearchStrategy[bytes]:
    return st.lists(st.sampled_from(NAME_PIECES), min_size=1, max_size=3).map(b"".join).filter(
        lambda n: n not in (b".", b"..") and len(n) < 200)


@st.composite
def tree_specs(draw: st.DrawFn, depth: int = 3) -> list[tuple[bytes, Any]]:
    """A directory: (name, kind) with kind a string, or a nested list for a sub-directory."""
    names_ = draw(st.lists(name_strategy(), min_size=0, max_size=6, unique=True))
    entries: list[tuple[bytes, Any]] = []
    for name in names_:
        kinds = ["dicom", "dicom", "junk", "empty", "fifo", "link-file", "link-dir", "link-outside-file",
                 "link-outside-dir", "link-outside-fifo", "link-dangling", "link-parent"]
        if depth > 0:
            kinds += ["dir", "dir"]
        kind = draw(st.sampled_from(kinds))
        entries.append((name, draw(tree_specs(depth - 1)) if kind == "dir" else kind))
    return entries


def small_dicom(sop: str) -> bytes:
    """A small valid instance with this SOPInstanceUID (explicit VR little endian), fresh study and series."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid(1), uid(2)
    ds.PatientID = "TREE"
    ds.Modality = "OT"
    return dataset_bytes(ds, implicit=False)


def build_tree(top: bytes, spec: list[tuple[bytes, Any]], outside: Outside, tree: Tree, rel: bytes = b"",
               chain: int = 0) -> None:
    """Create the generated entries under the directory ``top`` (bytes path), recording what each one is."""
    previous_dir: bytes | None = None
    previous_file: bytes | None = None
    for name, kind in spec:
        path, key = top + b"/" + name, (rel + b"/" + name).lstrip(b"/")
        if isinstance(kind, list):
            os.mkdir(path)
            tree.dirs.append(key)
            build_tree(path, kind, outside, tree, key)
            previous_dir = name
            continue
        if kind == "dicom":
            sop = uid(4)
            with open(path, "wb") as f:
                f.write(small_dicom(sop))
            tree.entries[key], tree.sops[key] = "dicom", sop
            previous_file = name
        elif kind == "junk":
            with open(path, "wb") as f:
                f.write(b"not DICOM at all " + name)
            tree.entries[key] = "junk"
            previous_file = name
        elif kind == "empty":
            open(path, "wb").close()
            tree.entries[key] = "empty"
        elif kind == "fifo":
            os.mkfifo(path)
            tree.entries[key] = "fifo"
        else:
            target = {"link-file": previous_file or b"nowhere", "link-dir": previous_dir or b".",
                      "link-outside-file": os.fsencode(outside.dicom),
                      "link-outside-dir": os.fsencode(outside.directory),
                      "link-outside-fifo": os.fsencode(outside.fifo),
                      "link-dangling": b"/nonexistent/sendit-watcher", "link-parent": b".."}[kind]
            os.symlink(target, path)
            tree.entries[key] = "symlink"


def build_chain(top: bytes, depth: int, outside: Outside, tree: Tree) -> None:
    """A single chain of ``depth`` directories (created by directory fd, so no path is ever too long), with a
    DICOM file and a symlink out of the folder at the bottom."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    rel = b""
    try:
        for level in range(depth):
            name = b"d" if level % 7 else b"\xff" + str(level).encode()
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
            rel = (rel + b"/" + name).lstrip(b"/")
            tree.dirs.append(rel)
        sop = uid(5)
        file_fd = os.open(b"bottom.dcm", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(file_fd, small_dicom(sop))
        os.close(file_fd)
        tree.entries[(rel + b"/bottom.dcm").lstrip(b"/")] = "dicom"
        tree.sops[(rel + b"/bottom.dcm").lstrip(b"/")] = sop
        os.symlink(os.fsencode(outside.directory), b"escape", dir_fd=fd)
        tree.entries[(rel + b"/escape").lstrip(b"/")] = "symlink"
    finally:
        os.close(fd)


def make_outside(base: Path) -> Outside:
    """Canaries next to the batch folders: a DICOM file, a directory with one, a FIFO; atimes set behind the
    mtimes, so that any read of them moves the atime even on a relatime mount."""
    area = base / f"outside-{next(_example):04d}"
    (area / "dir").mkdir(parents=True)
    outside = Outside(area / "canary.dcm", area / "dir", area / "canary.fifo", uid(6), uid(7))
    outside.dicom.write_bytes(small_dicom(outside.sop))
    (outside.directory / "inner.dcm").write_bytes(small_dicom(outside.inner_sop))
    os.mkfifo(outside.fifo)
    for path in (outside.dicom, outside.directory / "inner.dcm", outside.directory):
        info = os.stat(path)
        os.utime(path, ns=(info.st_mtime_ns - 10**12, info.st_mtime_ns))
    return outside


def atimes(outside: Outside) -> dict[str, int]:
    return {str(p): os.stat(p).st_atime_ns for p in (outside.dicom, outside.directory / "inner.dcm",
                                                        outside.directory)}


class FifoSentry:
    """Notices anyone opening one of the given FIFOs for reading: a writer's O_NONBLOCK open succeeds only when
    a reader has it open (ENXIO otherwise). The sentry then writes nothing and closes, so the reader sees EOF
    instead of hanging the test."""

    def __init__(self, fifos: list[bytes]) -> None:
        self.fifos = fifos
        self.opened: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            for fifo in self.fifos:
                try:
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                except OSError as exc:
                    if exc.errno not in (errno.ENXIO, errno.ENOENT):
                        raise
                    continue
                self.opened.append(fifo)
                os.close(fd)
            self._stop.wait(0.005)

    def __enter__(self) -> FifoSentry:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def expected_rows(tree: Tree) -> dict[str, str]:
    """Each entry's stored path: names the os module decodes (undecodable bytes as lone surrogates) as
    the product's documented reversible text."""
    return {names.to_text(os.fsdecode(path)): kind for path, kind in tree.entries.items()}


def short(paths: set[str]) -> list[str]:
    return [p if len(p) < 150 else f"...({len(p)} chars){p[-100:]}" for p in sorted(paths)[:10]]


def check_tree_rows(rows: BatchRows, tree: Tree, outside: Outside, folder: bytes) -> None:
    expected = expected_rows(tree)
    assert len(expected) == len(tree.entries), "two generated names share one stored text"
    stored = set(rows.instances) | set(rows.rejected)
    missing, extra = set(expected) - stored, stored - set(expected)
    found = [(p[-150:], rows.rejected.get(p), rows.rejected_detail.get(p)) for p in sorted(extra)[:10]]
    assert not missing and not extra, f"rows differ from the entries: missing {short(missing)}, extra {found}"
    for path in stored:  # every stored path names the entry on disk (reversible)
        assert os.path.lexists(folder + b"/" + os.fsencode(names.to_disk(path))), f"stored {path!r} is on no disk entry"
    for path, kind in expected.items():
        if kind == "dicom":
            assert path in rows.instances, f"{path!r} is a valid instance, rejected as {rows.rejected.get(path)}"
        elif kind == "symlink":
            assert rows.rejected.get(path) == "symlink", f"{path!r} is a symlink, got {rows.rejected.get(path)!r}"
        elif kind == "fifo":
            assert rows.rejected.get(path) == "not-a-regular-file", (path, rows.rejected.get(path))
        else:
            assert path in rows.rejected, f"{path!r} ({kind}) imported as an instance"
    sops = {row["sop"] for row in rows.instances.values()}
    assert outside.sop not in sops and outside.inner_sop not in sops, "a file outside the folder was imported"
    by_path = {names.to_text(os.fsdecode(p)): sop for p, sop in tree.sops.items()}
    for path, row in rows.instances.items():
        assert row["sop"] == by_path.get(path), f"{path!r} holds {row['sop']}, written as {by_path.get(path)}"


def import_tree(conn: Connection, conffile: Path, folder: Path, tree: Tree, outside: Outside,
                fifos: list[bytes]) -> BatchRows:
    before = atimes(outside)
    with FifoSentry(fifos) as sentry:
        outcome, rows = import_folder(conffile, folder, conn)
    assert not sentry.opened, f"FIFOs opened for reading by the import: {sentry.opened}"
    assert atimes(outside) == before, "a file or directory outside the folder was read (its atime moved)"
    check_tree_rows(rows, tree, outside, os.fsencode(folder))
    check_accounting(outcome, rows, len(tree.entries))
    return rows


def fifos_of(folder: Path, tree: Tree, outside: Outside) -> list[bytes]:
    return [os.fsencode(outside.fifo)] + [os.fsencode(folder) + b"/" + p for p, k in tree.entries.items()
                                          if k == "fifo"]


@pytest.fixture
def tree_conffile(database: DatabaseConfig, tmp_path: Path) -> Path:
    return write_config(tmp_path / "watcher.conf", database, {}, full_header="no", parse_processes=1)


def tree_property(conn: Connection, conffile: Path, base: Path, spec: list[tuple[bytes, Any]], chain: int) -> None:
    outside = make_outside(base)
    folder = base / f"tree-{next(_example):04d}"
    folder.mkdir()
    tree = Tree()
    build_tree(os.fsencode(folder), spec, outside, tree)
    try:
        if chain:
            build_chain(os.fsencode(folder), chain, outside, tree)
        import_tree(conn, conffile, folder, tree, outside, fifos_of(folder, tree, outside))
    finally:
        if chain > 100:  # pytest's own clean-up of old tmp dirs recurses, and would die on this chain
            subprocess.run(["rm", "-rf", "--one-file-system", str(folder)], check=True)


@examples(40)
@given(spec=tree_specs(), chain=st.sampled_from([0, 0, 0, 2, 30]))
@example(spec=[(b"\\xff", "dicom"), (b"\xff", "dicom"), (b"\\\\xff", "junk"), (b"\\", "dicom"), (b"\\\\", "dicom")],
         chain=0)
def test_generated_trees_one_row_per_entry_and_nothing_outside_read(
        spec: list[tuple[bytes, Any]], chain: int, conn: Connection, tree_conffile: Path, tmp_path: Path) -> None:
    tree_property(conn, tree_conffile, tmp_path, spec, chain)


def test_a_500_level_chain_is_walked_to_its_bottom(conn: Connection, tree_conffile: Path, tmp_path: Path) -> None:
    """Issue 11 (6): 500 nested folders (a recursive walk dies near 1,000), a non-UTF-8 name every 7 levels, an
    instance and a link out at the bottom: instance imported, link rejected, nothing outside read."""
    tree_property(conn, tree_conffile, tmp_path, [(b"sub", [(b"\xff\xfe", "dicom"), (b"a\nb", "link-outside-dir")])],
                  500)


def test_a_1200_level_chain_is_one_too_deep_row_and_nothing_else_fails(conn: Connection, tree_conffile: Path,
                                                                       tmp_path: Path) -> None:
    """1,200 nested folders: beyond the README's limit (512 levels) the rest of the chain is one `too-deep`
    rejection; the folder is not failed, everything above the limit is imported, nothing outside is read."""
    outside = make_outside(tmp_path)
    folder = tmp_path / "chain-1200"
    folder.mkdir()
    tree = Tree()
    build_tree(os.fsencode(folder), [(b"top.dcm", "dicom"), (b"\xff", "link-outside-file")], outside, tree)
    try:
        build_chain(os.fsencode(folder), 1200, outside, tree)
        before = atimes(outside)
        with FifoSentry([os.fsencode(outside.fifo)]) as sentry:
            outcome, rows = import_folder(tree_conffile, folder, conn)
        assert not sentry.opened and atimes(outside) == before, "something outside the folder was read"
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(folder)], check=True)
    deep = {path: reason for path, reason in rows.rejected.items() if reason == "too-deep"}
    assert len(deep) == 1, f"expected one too-deep row, got {short(set(deep))}"
    (cut,) = deep
    levels = cut.count("/") + 1
    assert 500 <= levels <= 520 and os.fsencode(names.to_disk(cut)) in {d for d in tree.dirs}, (levels, cut[-80:])
    below = os.fsencode(names.to_disk(cut)) + b"/"
    expected = expected_rows(Tree(entries={p: k for p, k in tree.entries.items() if not p.startswith(below)}))
    assert set(rows.instances) | set(rows.rejected) == set(expected) | {cut}
    assert "top.dcm" in rows.instances and rows.rejected.get(names.to_text(os.fsdecode(b"\xff"))) == "symlink"
    check_accounting(outcome, rows, len(expected) + 1)


@examples(200)
@given(raw_names=st.lists(name_strategy(), min_size=1, max_size=8, unique=True))
def test_stored_names_are_reversible_and_never_collide(raw_names: list[bytes]) -> None:
    texts = [names.to_text(os.fsdecode(n)) for n in raw_names]
    assert len(set(texts)) == len(texts), f"two names, one text: {raw_names} -> {texts}"
    for name, text in zip(raw_names, texts, strict=True):
        text.encode("utf-8")  # storable as PostgreSQL text
        assert "\x00" not in text
        assert os.fsencode(names.to_disk(text)) == name, (name, text)


# Files changing between the walk and the read --------------------------------------------------------------------

MUTATIONS = ["delete", "replace", "chmod", "truncate", "swap-dir-for-outside-link", "add"]


@st.composite
def mutation_plans(draw: st.DrawFn) -> tuple[int, list[tuple[str, int, float]]]:
    files = draw(st.integers(20, 60))
    plan = draw(st.lists(st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 10**6), st.floats(0, 0.02)),
                         min_size=1, max_size=12))
    return files, plan


def mutate(folder: Path, plan: list[tuple[str, int, float]], outside: Outside, started: threading.Event,
           changed: list[str]) -> None:
    started.wait(10)
    for step, (action, pick, pause) in enumerate(plan):
        time.sleep(pause)
        files = sorted(p for p in inside(folder) if stat.S_ISREG(p.lstat().st_mode))
        subdirs = sorted(p for p in folder.iterdir() if stat.S_ISDIR(p.lstat().st_mode))
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError):
            if action == "swap-dir-for-outside-link" and subdirs:
                victim = subdirs[pick % len(subdirs)]
                # a name of its own per step: a plan may draw the same pick twice (hypothesis 6.1xx does)
                victim.rename(folder.parent / f"{folder.name}-moved-{step}-{pick}")
                os.symlink(outside.directory, victim)
                changed.append(f"{action} {victim.name}")
            elif action == "add":
                (folder / f"added-{pick}.dcm").write_bytes(small_dicom(uid(8)))
                changed.append(f"{action} added-{pick}.dcm")
            elif files:
                victim = files[pick % len(files)]
                if action == "delete":
                    victim.unlink()
                elif action == "replace":
                    fresh = victim.with_name(victim.name + ".new")
                    fresh.write_bytes(small_dicom(uid(8)))
                    fresh.replace(victim)
                elif action == "chmod":
                    victim.chmod(0)
                elif action == "truncate":
                    victim.write_bytes(small_dicom(uid(8))[:200])
                changed.append(f"{action} {victim.relative_to(folder)}")


def inside(folder: Path) -> list[Path]:
    """Every entry under ``folder``, never through a symlink (the test must not read outside either)."""
    found = []
    for top, dirs, files in os.walk(folder):
        found += [Path(top) / name for name in dirs + files]
    return found


def is_whole_instance(path: bytes) -> bool:
    try:
        return bool(pydicom.dcmread(io.BytesIO(Path(os.fsdecode(path)).read_bytes())).SOPInstanceUID)
    except Exception:  # noqa: BLE001 - anything pydicom cannot read is not a whole instance
        return False


def current_tree(folder: Path) -> Tree:
    """The folder as it is now, walked by the test without following links: what the rows must mirror."""
    tree = Tree()
    for top, dirs, files, _ in os.fwalk(os.fsencode(folder)):
        rel = os.path.relpath(top, os.fsencode(folder))
        for name in files + [d for d in dirs if os.path.islink(top + b"/" + d)]:
            key = name if rel == b"." else rel + b"/" + name
            info = os.lstat(top + b"/" + name)
            tree.entries[key] = ("symlink" if stat.S_ISLNK(info.st_mode) else
                                 "fifo" if stat.S_ISFIFO(info.st_mode) else "file")
    return tree


@examples(20)
@given(plan=mutation_plans())
def test_files_changing_during_the_import_never_fail_the_folder_nor_reach_outside(
        plan: tuple[int, list[tuple[str, int, float]]], conn: Connection, tree_conffile: Path,
        tmp_path: Path) -> None:
    files, mutations = plan
    outside = make_outside(tmp_path)
    folder = tmp_path / f"moving-{next(_example):04d}"
    for n in range(files):
        sub = folder / f"series{n % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"IM{n:04d}.dcm").write_bytes(small_dicom(uid(9)))
    started, changed = threading.Event(), []
    before = atimes(outside)
    mutator = threading.Thread(target=mutate, args=(folder, mutations, outside, started, changed), daemon=True)
    mutator.start()
    started.set()
    with FifoSentry([os.fsencode(outside.fifo)]) as sentry:
        code, outcomes = run_import(tree_conffile, folder)
    mutator.join(30)
    assert not mutator.is_alive()
    assert code == 0 and outcomes and outcomes[0]["status"] != "failed", (outcomes, changed)
    rows = rows_of(conn, outcomes[0]["batch_id"])
    assert len(rows.instances) + len(rows.rejected) == rows.batch["files"] == outcomes[0]["files"], rows.batch
    sops = {row["sop"] for row in rows.instances.values()}
    assert outside.inner_sop not in sops, f"read through a swapped symlink: {changed}"
    # Put permissions back and import again: now the rows mirror the folder exactly (retries included).
    for path in inside(folder):
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode):
            path.chmod(0o755 if stat.S_ISDIR(mode) else 0o644)
    now = current_tree(folder)
    rows = import_and_check_accounting(conn, tree_conffile, folder, len(now.entries))
    assert not sentry.opened and atimes(outside) == before, "something outside the folder was read"
    assert set(rows.instances) | set(rows.rejected) == {names.to_text(os.fsdecode(p)) for p in now.entries}
    for path, kind in now.entries.items():
        text = names.to_text(os.fsdecode(path))
        if kind == "symlink":
            assert rows.rejected.get(text) == "symlink", (text, changed)
        elif kind == "file" and is_whole_instance(os.fsencode(folder) + b"/" + path):
            assert text in rows.instances, f"{text} is a whole instance now, still {rows.rejected.get(text)}: {changed}"
    assert outside.inner_sop not in {row["sop"] for row in rows.instances.values()}
