"""The lean reader against the pydicom path on every class of the benchmark's corpus (tests/bench/classes.py), at
small size: each file read with both readers, full header and main tags only, stores the same Instance (or the same
rejection), and the lean reader answers for it (no class falls back to pydicom). Private creators written as LO, SH
or UN, or not written (implicit VR), give their elements the same VRs and values.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench.classes import CLASSES, generate
from tests.readers import Instance, compare, quiet_pydicom, read

SMALL = 2  # files a class (one for the classes of several MB)
# Where the readers disagree today: (class, full header) -> pytest.mark.xfail(strict=True, reason=...); a strict
# xfail fails as soon as they agree, so the mark goes with the fix.
KNOWN_DIFFERENCES: dict[tuple[str, bool], pytest.MarkDecorator] = {}


def cases() -> list[object]:
    return [pytest.param(name, full_header, id=f"{name}-{'full' if full_header else 'main'}",
                         marks=[KNOWN_DIFFERENCES[name, full_header]] if (name, full_header) in KNOWN_DIFFERENCES
                         else [])
            for name in CLASSES for full_header in (True, False)]


@pytest.mark.parametrize(("name", "full_header"), cases())
def test_both_readers_store_the_same(tmp_path: Path, name: str, full_header: bool) -> None:
    quiet_pydicom()
    files = generate(name, tmp_path, 1 if CLASSES[name].full_files < 100 else SMALL)
    answered = [compare(str(tmp_path), path.name, full_header) for path in files]
    assert all(answered), f"{name}: the lean reader fell back to pydicom"


def _private_elements(folder: Path, name: str, use_lean: bool) -> dict[str, object]:
    """The private elements of the header of class ``name``'s first file; each creator's value without its VR."""
    generate(name, folder, 1)
    result = read(str(folder), "IM00001.dcm", True, use_lean)
    assert isinstance(result, Instance) and result.header is not None, result
    header = json.loads(result.header)
    return {tag: entry.get("Value") if int(tag[4:], 16) <= 0xFF else entry
            for tag, entry in header.items() if int(tag[:4], 16) & 1}


@pytest.mark.parametrize("use_lean", [False, True], ids=["pydicom-path", "lean"])
@pytest.mark.parametrize("name", ["ct-creator-un", "ct-creator-sh", "ct-implicit-ge"])
def test_every_creator_vr_gives_the_dictionary_vrs(tmp_path: Path, name: str, use_lean: bool) -> None:
    """The GE CT's 170 private elements under creators written as UN or SH (elements as UN), or in implicit VR,
    are stored as in the file with their VRs written (explicit VR, creators as LO): dictionary VR and value."""
    quiet_pydicom()
    written = _private_elements(tmp_path / "explicit", "ct-explicit", use_lean)
    assert _private_elements(tmp_path / name, name, use_lean) == written
    assert written["00091027"] == {"vr": "SL", "Value": [862399669]}  # the dictionary's VR, not UN


@pytest.mark.parametrize("use_lean", [False, True], ids=["pydicom-path", "lean"])
def test_a_creator_of_several_values_names_no_block(tmp_path: Path, use_lean: bool) -> None:
    """A creator written as UN reading 'A\\B' is stored as LO with its two values, and names no block: its
    element stays UN (pydicom 2.3 alone would fail on it: TypeError: unhashable type 'MultiValue')."""
    quiet_pydicom()
    private = _private_elements(tmp_path, "creator-un-multivalued", use_lean)
    assert private["00510010"] == ["A", "B"]
    assert private["00511001"] == {"vr": "UN", "InlineBinary": "VkFMVUUg"}
