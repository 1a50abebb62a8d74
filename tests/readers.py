"""The two header readers as tests and benchmarks reach them: the only place they import them from, and the one
comparison of the lean reader against the pydicom path (lean enabled or not, the same Instance or Rejection).

Kept apart from tests/helpers.py, which imports the database and worker modules: a benchmark process measuring
its peak RSS should hold the readers alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from sendit_watcher.dicom import lean
from sendit_watcher.dicom.headers import Instance, quiet_pydicom, read_instance
from sendit_watcher.walk import FileEntry, Rejection

__all__ = ["Instance", "Rejection", "canonical", "compare", "counts", "lean", "outcome", "quiet_pydicom", "read",
           "reset_counts"]


def read(folder: str, path: str, full_header: bool, use_lean: bool) -> Instance | Rejection:
    """``read_instance`` of the file at ``path`` below ``folder``, with the lean reader enabled or not."""
    info = os.stat(os.path.join(folder, path))
    enabled = lean.ENABLED
    lean.ENABLED = use_lean
    try:
        return read_instance(folder, FileEntry(path, info.st_size, info.st_mtime_ns), full_header)
    finally:
        lean.ENABLED = enabled


def reset_counts() -> None:
    lean.reset_counts()


def counts() -> tuple[int, int]:
    """Files this process read with the lean reader, and files it handed back to pydicom."""
    return lean.COUNTS["lean"], lean.COUNTS["fallback"]


def canonical(header: str | None) -> str | None:
    """The JSON header parsed and written again with sorted keys: equal text means equal values and types."""
    return None if header is None else json.dumps(json.loads(header), sort_keys=True)


def outcome(result: Instance | Rejection) -> Any:
    if isinstance(result, Rejection):
        return ("rejected", result.reason, result.detail)
    return dataclasses.replace(result, header=canonical(result.header))


def compare(folder: str, path: str, full_header: bool) -> bool:
    """Assert lean == pydicom path for one file; True when the lean reader answered (did not fall back)."""
    expected = outcome(read(folder, path, full_header, False))
    before = lean.COUNTS["lean"]
    actual = outcome(read(folder, path, full_header, True))
    assert actual == expected, f"{path} (full_header={full_header})"
    return lean.COUNTS["lean"] > before
