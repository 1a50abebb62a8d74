"""The mirror promise as a check the tests can call after every import (DESIGN.md §10): for every folder, its
instance rows + rejected rows = the regular files on disk, every row's path exists (and an instance row's file
holds that SOP Instance UID), and a SOP Instance UID on disk anywhere has exactly one instance row."""

from __future__ import annotations

import os
import stat
from collections import Counter
from pathlib import Path

import pydicom

from sendit_watcher.db import Connection
from sendit_watcher.names import to_disk

OUTSIDE_ROOTS = "/"


def regular_files(folder: Path, marker: str = "") -> set[str]:
    """Paths (relative, as the os module gives them) of the regular files under ``folder``, not following
    symbolic links; ``marker`` directly in the folder is not counted."""
    found: set[str] = set()
    for directory, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(directory, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                found.add(os.path.relpath(path, folder))
    found.discard(marker)
    return found


def sop_of(path: Path) -> str | None:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    except Exception:  # noqa: BLE001 - not DICOM (a partial file, garbage): no SOP on disk there
        return None
    uid = ds.get("SOPInstanceUID")
    return str(uid) if uid else None


def batch_folders(conn: Connection, roots: dict[str, Path]) -> dict[int, Path]:
    """Every batch's folder on disk, by batch id."""
    rows = conn.execute("SELECT id, root, path FROM batch").fetchall()
    conn.rollback()
    base = {OUTSIDE_ROOTS: Path("/"), **roots}
    return {bid: base[root] / to_disk(path) for bid, root, path in rows}


def mirror_problems(conn: Connection, roots: dict[str, Path], marker: str = "") -> list[str]:
    """Everything that breaks the mirror, as sentences (empty: the database mirrors the disk)."""
    problems: list[str] = []
    instances = conn.execute("SELECT batch, path, sop_instance_uid FROM instance").fetchall()
    rejected = conn.execute("SELECT batch, path, reason FROM rejected_file").fetchall()
    conn.rollback()
    rows_of: dict[int, list[tuple[str, str]]] = {}
    for batch, path, sop in instances:
        rows_of.setdefault(batch, []).append((path, f"instance {sop}"))
    for batch, path, reason in rejected:
        rows_of.setdefault(batch, []).append((path, f"rejected {reason}"))
    on_disk: dict[str, list[str]] = {}
    for batch, folder in batch_folders(conn, roots).items():
        rows = rows_of.get(batch, [])
        files = regular_files(folder, marker) if folder.is_dir() else set()
        if len(rows) != len(files):
            problems.append(f"{folder}: {len(rows)} rows for {len(files)} regular files on disk")
        stored = {to_disk(path) for path, _ in rows}
        for path, what in rows:
            if not os.path.lexists(folder / to_disk(path)):
                problems.append(f"{folder}: row {path!r} ({what}) has no file")
        for path in sorted(files - stored):
            problems.append(f"{folder}: file {path!r} has no row")
        for path in files:
            sop = sop_of(folder / path)
            if sop is not None:
                on_disk.setdefault(sop, []).append(str(folder / path))
    where = {sop: (batch, path) for batch, path, sop in instances}
    folders = batch_folders(conn, roots)
    counted = Counter(sop for _, _, sop in instances)
    for sop, paths in on_disk.items():
        if counted[sop] != 1:
            problems.append(f"SOP {sop} on disk at {paths}: {counted[sop]} instance rows")
    for sop, (batch, path) in where.items():
        file = folders[batch] / to_disk(path)
        if os.path.lexists(file) and sop_of(file) != sop:
            problems.append(f"instance row {sop} at {file}, which holds {sop_of(file)}")
    return problems


def assert_mirror(conn: Connection, roots: dict[str, Path] | None = None, marker: str = "") -> None:
    problems = mirror_problems(conn, roots or {}, marker)
    assert not problems, "the database does not mirror the disk:\n" + "\n".join(problems[:30])
