"""A benchmark corpus: pydicom's CT_small and MR_small cloned with fresh UIDs and, as in a real series, per-file
InstanceNumber, ImagePositionPatient and SliceLocation (patched in place, fixed length)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pydicom

from tests.helpers import pydicom_test_files

_PLACEHOLDERS = {kind: str(digit) * 60 for kind, digit in (("sop", 9), ("series", 8), ("study", 7))}
_NUMBER, _SLICE = "555555555", "-444444.444"  # IS and DS placeholders of fixed width
_POSITION = "-111111.111\\-222222.222\\-333333.333"


def _template(name: str) -> bytes:
    ds = pydicom.dcmread(pydicom_test_files() / name)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _PLACEHOLDERS["sop"]
    ds.SeriesInstanceUID, ds.StudyInstanceUID = _PLACEHOLDERS["series"], _PLACEHOLDERS["study"]
    ds.InstanceNumber, ds.SliceLocation, ds.ImagePositionPatient = _NUMBER, _SLICE, _POSITION.split("\\")
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _uid(seed: int, kind: int, number: int) -> bytes:
    """A valid UID of exactly 60 characters (no component starts with 0)."""
    uid = f"1.2.826.0.1.3680043.10.{kind}.1{seed:010d}.1{number:0{60 - 38}d}"
    assert len(uid) == 60
    return uid.encode()


def _instance(template: bytes, uid: bytes, number: int) -> bytes:
    """One file of a series: its SOPInstanceUID, InstanceNumber, and its slice's position 2.5 mm further on."""
    z = -100 + 2.5 * number
    position = f"{-158.1 + number % 7:+011.3f}\\{-179.0:+011.3f}\\{z:+011.3f}"
    return template.replace(_PLACEHOLDERS["sop"].encode(), uid).replace(_NUMBER.encode(), f"{number:09d}".encode()) \
        .replace(_SLICE.encode(), f"{z:+011.3f}".encode()).replace(_POSITION.encode(), position.encode())


def build(root: Path, files: int, folders: int) -> list[Path]:
    """``folders`` study folders holding ``files`` files in all under ``root`` (reused when complete)."""
    marker = root / f".complete-v3-{files}-{folders}"
    paths = [root / f"study{n:05d}" for n in range(folders)]
    if marker.exists():
        return paths
    templates = [_template("CT_small.dcm"), _template("MR_small.dcm")]
    _write_series(paths, [templates[index % 2] for index in range(folders)], files // folders)
    marker.touch()
    return paths


def _write_series(paths: list[Path], templates: list[bytes], per_folder: int) -> None:
    """In each folder, ``per_folder`` files of its template: a study and series UID of its own, and each file its
    SOPInstanceUID, InstanceNumber and slice position."""
    seed = int.from_bytes(os.urandom(4), "big")
    number = 0
    for index, (folder, template) in enumerate(zip(paths, templates, strict=True)):
        folder.mkdir(parents=True, exist_ok=True)
        template = template.replace(_PLACEHOLDERS["study"].encode(), _uid(seed, 1, index)).replace(
            _PLACEHOLDERS["series"].encode(), _uid(seed, 2, index))
        for n in range(per_folder):
            number += 1
            (folder / f"IM{n:05d}.dcm").write_bytes(_instance(template, _uid(seed, 3, number), n + 1))


# The realistic mix: by files, half explicit VR CT, a quarter implicit VR CT with GE privates, a quarter enhanced
# MR (tests/bench/classes.py); each folder one series of one class.
MIX = (("ct-explicit", 2), ("ct-implicit-ge", 1), ("mr-enhanced", 1))


def _class_template(name: str) -> bytes:
    """A class' file with this module's study, series, SOP and per-slice placeholders (the CTs' slice position
    patched per file, as in a real series)."""
    from tests.bench.classes import CLASSES, write

    file_class = CLASSES[name]
    ds = file_class.dataset()
    ds.SOPInstanceUID = _PLACEHOLDERS["sop"]
    ds.SeriesInstanceUID, ds.StudyInstanceUID = _PLACEHOLDERS["series"], _PLACEHOLDERS["study"]
    ds.InstanceNumber = _NUMBER
    if "SliceLocation" in ds:
        ds.SliceLocation, ds.ImagePositionPatient = _SLICE, _POSITION.split("\\")
    return write(ds, file_class.syntax)


def mix_classes(folders: int) -> list[str]:
    """The class of each folder: MIX's shares, interleaved."""
    cycle = [name for name, share in MIX for _ in range(share)]
    return [cycle[index % len(cycle)] for index in range(folders)]


def build_mix(root: Path, files: int, folders: int) -> list[Path]:
    """``folders`` series folders holding ``files`` files in all, in MIX's shares (reused when complete)."""
    marker = root / f".complete-mix-v1-{files}-{folders}"
    paths = [root / f"series{n:05d}" for n in range(folders)]
    if marker.exists():
        return paths
    classes = mix_classes(folders)
    templates = {name: _class_template(name) for name in set(classes)}
    _write_series(paths, [templates[name] for name in classes], files // folders)
    marker.touch()
    return paths
