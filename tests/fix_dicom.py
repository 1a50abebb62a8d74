"""DICOM fixtures: an empty watch root and a copy of pydicom's test files (studies are made by helpers.make_study)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import pydicom_test_files


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
