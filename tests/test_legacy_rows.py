"""Rows recorded by versions 1.0 and 1.1: their folder fingerprint is name, size and mtime (no
ctime), and their files have no ctime_ns. After an upgrade the catch-up scan reads none of their unchanged folders,
and a changed one reads its new files only."""

from __future__ import annotations

import os
from pathlib import Path

from sendit_watcher import batches
from sendit_watcher.catchup import scan_roots
from sendit_watcher.config import Config, DatabaseConfig
from sendit_watcher.db import Connection
from sendit_watcher.importer import Result
from sendit_watcher.parsers import InlineParser
from sendit_watcher.walk import fingerprint, legacy_fingerprint, walk
from sendit_watcher.worker import import_next
from tests.helpers import batch_rows, import_folder, make_config, make_study


def as_1_0_recorded(conn: Connection, folder: Path) -> None:
    """The batch and file rows of ``folder`` as 1.0.0 left them (migration 0003 added ctime_ns as NULL)."""
    entries = list(walk(str(folder)))
    assert legacy_fingerprint(entries) != fingerprint(entries)
    conn.execute("UPDATE batch SET fingerprint = %s WHERE path = %s", (legacy_fingerprint(entries), folder.name))
    conn.execute("UPDATE instance SET ctime_ns = NULL")
    conn.commit()


def scan(database: DatabaseConfig, config: Config) -> list[tuple[str, str]]:
    return scan_roots(database, {"incoming": config.watches[0]}, config.watcher.host_name,
                      config.watcher.is_ignored, 0.0, set()).changed


def test_a_folder_imported_by_1_0_is_not_read_again(database: DatabaseConfig, conn: Connection,
                                                     incoming: Path) -> None:
    config = make_config(database, {"incoming": incoming})
    make_study(incoming / "A", 3)
    import_folder(conn, config, incoming / "A")
    as_1_0_recorded(conn, incoming / "A")
    assert scan(database, config) == []
    os.utime(incoming / "A" / sorted(os.listdir(incoming / "A"))[0], ns=(1, 1))  # a changed mtime is a change
    assert scan(database, config) == [("incoming", "A")]


def test_a_changed_folder_of_1_0_reads_its_new_files_only(database: DatabaseConfig, conn: Connection,
                                                           incoming: Path, tmp_path: Path) -> None:
    config = make_config(database, {"incoming": incoming})
    make_study(incoming / "A", 3)
    import_folder(conn, config, incoming / "A")
    as_1_0_recorded(conn, incoming / "A")
    kept = conn.execute("SELECT id FROM instance ORDER BY id").fetchall()
    make_study(tmp_path / "more", 1)
    for name in os.listdir(tmp_path / "more"):
        os.rename(tmp_path / "more" / name, incoming / "A" / f"late-{name}")
    assert scan(database, config) == [("incoming", "A")]
    batches.enqueue(conn, "incoming", "A")
    result = import_next(conn, config, InlineParser())
    assert isinstance(result, Result) and result.new_instances == 1 and result.instances == 4
    assert conn.execute("SELECT id FROM instance ORDER BY id").fetchall()[:3] == kept  # not read again
    assert batch_rows(conn)["A"] == ("done", 4, 2)
