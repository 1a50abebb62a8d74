"""DICOM fixtures: an empty watch root, a copy of pydicom's test files, and fast real studies for floods
(pydicom's CT_small.dcm with its UIDs patched in place, fixed length)."""

from __future__ import annotations

import io
import itertools
import os
import shutil
from functools import cache
from pathlib import Path

import pydicom
import pytest

from tests.helpers import pydicom_test_files

_SOP, _SERIES, _STUDY = (str(d) * 60 for d in (9, 8, 7))
_counter = itertools.count(1)
PATIENT_NAME, PATIENT_ID, PATIENT_BIRTH_DATE = "Fixture^Jane^Q", "PHI-4711-XYZ", "19610417"


@cache
def _template() -> bytes:
    ds = pydicom.dcmread(pydicom_test_files() / "CT_small.dcm")
    ds.SOPInstanceUID = _SOP
    ds.file_meta.MediaStorageSOPInstanceUID = _SOP
    ds.SeriesInstanceUID, ds.StudyInstanceUID = _SERIES, _STUDY
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, PATIENT_ID, PATIENT_BIRTH_DATE
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _uid(kind: int, number: int) -> bytes:
    """A valid UID of exactly 60 characters (no component starts with 0)."""
    uid = f"1.2.826.0.1.3680043.10.{kind}.1{os.getpid():07d}.1{number:0{60 - 35}d}"
    assert len(uid) == 60, uid
    return uid.encode()


def make_study(folder: Path, files: int) -> list[str]:
    """Write one study of ``files`` instances into ``folder``; returns their SOPInstanceUIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    study = _template().replace(_STUDY.encode(), _uid(1, next(_counter))).replace(
        _SERIES.encode(), _uid(2, next(_counter)))
    uids = []
    for n in range(files):
        sop = _uid(3, next(_counter))
        (folder / f"IM{n:05d}.dcm").write_bytes(study.replace(_SOP.encode(), sop))
        uids.append(sop.decode())
    return uids


def drop_study(root: Path, name: str, files: int) -> list[str]:
    """Write a study into ``root/NAME.tmp`` and rename it to ``NAME``, as upload tools do."""
    uids = make_study(root / f"{name}.tmp", files)
    (root / f"{name}.tmp").rename(root / name)
    return uids


@pytest.fixture
def incoming(tmp_path: Path) -> Path:
    """An empty watch root."""
    root = tmp_path / "incoming"
    root.mkdir()
    return root


@pytest.fixture
def dicom_tree(tmp_path: Path) -> Path:
    """A copy of pydicom's whole test-file tree (DICOMDIR trees, non-DICOM files, transcodings)."""
    target = tmp_path / "pydicom-tree"
    shutil.copytree(pydicom_test_files(), target)
    return target
