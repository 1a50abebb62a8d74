"""Property-based tests (hypothesis) of generated datasets, through the public `import` command.

Generated datasets carry a value of every VR (NaN and ±Inf, U+0000, bytes that are not valid in the declared
charset, backslashes, 64 KB strings, odd charsets, nested sequences with their own charset, numbers that fit no
integer) in explicit and implicit VR little endian: every file is one instance or one rejection, the folder never
fails, and the stored DICOM JSON round-trips what was written, modulo the documented representation (NUL removed,
undecodable bytes as U+FFFD, non-finite numbers as "NaN"/"Infinity"/"-Infinity").

Hypothesis shares the test's schema between examples; each example imports a folder of its own and compares the
rows of that folder's batch only. helpers.examples says how many examples run and how to soak or shrink them.
"""

from __future__ import annotations

import base64
import datetime
import itertools
import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from sendit_watcher.config import DatabaseConfig
from sendit_watcher.db import Connection
from tests.helpers import (
    VR_TAGS,
    dataset_bytes,
    examples,
    import_and_check_accounting,
    uid,
    write_config,
)

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


