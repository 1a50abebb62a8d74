"""Helpers every test module may call: waiting on a condition, reading rows, building a Config, dropping studies.

Fixtures live in the ``fix_*`` plugins that ``conftest.py`` loads; this module holds plain functions only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from psycopg import sql

from sendit_watcher.config import Config, DatabaseConfig, ImportConfig, WatchConfig, WatcherConfig
from sendit_watcher.db import Connection


def wait_until(check: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    """Poll ``check`` every 0.1 s until it holds; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def scalar(conn: Connection, query: str, *params: object) -> object:
    """The first column of the first row (None when there is none); ends the transaction."""
    row = conn.execute(query, params).fetchone()  # type: ignore[call-overload]
    conn.rollback()
    return None if row is None else row[0]


def batch_rows(conn: Connection) -> dict[str, tuple[str, int, int]]:
    """Every batch by folder path: (status, instances, imports)."""
    rows = conn.execute("SELECT path, status, instances, imports FROM batch").fetchall()
    conn.rollback()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def done(conn: Connection, path: str, instances: int) -> Callable[[], bool]:
    """A check: the folder's batch is done with this many instances."""
    return lambda: batch_rows(conn).get(path, ("", 0, 0))[:2] == ("done", instances)


def count_rows(conn: Connection) -> dict[str, int]:
    """Row counts of every table of the hierarchy."""
    counts = {}
    for table in ("batch", "patient", "study", "series", "instance", "rejected_file"):
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
        assert row is not None
        counts[table] = int(row[0])
    conn.commit()
    return counts


def importing_host(conn: Connection) -> str | None:
    """Which host's worker holds a batch right now (its advisory lock), from its application_name."""
    row = conn.execute(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.objid > 0"
        " AND a.application_name LIKE 'sendit-watcher worker %'").fetchone()
    conn.rollback()
    return None if row is None else str(row[0]).rsplit(" on ", 1)[1]


def make_config(database: DatabaseConfig, roots: dict[str, Path] | None = None, *, full_header: bool = True,
                settle: float = 0.5, rescan: float = 0.0, workers: int = 1) -> Config:
    """A Config for tests: the given roots watched with the default processor."""
    import pyinotify

    mask = pyinotify.IN_CREATE | pyinotify.IN_MOVED_TO | pyinotify.IN_CLOSE_WRITE
    watches = tuple(WatchConfig(name, path, mask, "sendit_watcher.processors.DicomFolderImporter")
                    for name, path in (roots or {}).items())
    return Config(None, database, ImportConfig(full_header=full_header, workers=workers, parse_processes=2),
                  WatcherConfig(settle_seconds=settle, rescan_interval=rescan, drain_seconds=10, host="test-host"),
                  watches)


def pydicom_test_files() -> Path:
    """The directory of pydicom's bundled test files (real DICOM nobody here wrote)."""
    from pydicom.data import get_testdata_files

    return Path(get_testdata_files("CT_small.dcm")[0]).parent
