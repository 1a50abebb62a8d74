"""Races between imports that lose rows (issue 19, item 2): two workers, each with its own connection, import
folders that hold the same SOP instances while folders are deleted, renamed and copied; whatever the order in
which their statements and commits interleave, once the queue is drained every SOP instance on disk has exactly
one instance row at a path that exists, every row's path exists, and rows = files.

The named cases stop one import at a chosen statement (a hook on its own connection's ``execute``: the
statements still run on the real server) while the other runs, in both orders; the property test runs two
workers truly concurrently on generated programs."""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendit_watcher import batches
from sendit_watcher.config import Config, DatabaseConfig
from sendit_watcher.db import Connection, connect
from sendit_watcher.parsers import InlineParser
from sendit_watcher.worker import import_next
from tests.fix_dicom import make_study
from tests.helpers import assert_mirror, import_folder, make_config, scalar_int

# Statements of the import, named by the text that starts them (importer.py).
MERGE_DUPLICATES = "\nINSERT INTO rejected_file (batch, path, size, mtime_ns, ctime_ns, reason, detail, duplicate_of)"
MERGE_REJECTED = "\nINSERT INTO rejected_file (batch, path, size, mtime_ns, ctime_ns, reason, detail)\n"
FREE_DUPLICATES = "\nDELETE FROM rejected_file r"


class Pause:
    """Stops the thread that runs a connection's statement starting with ``before`` until released."""

    def __init__(self, conn: Connection, before: str) -> None:
        self.arrived, self.released = threading.Event(), threading.Event()
        execute = conn.execute

        def hooked(query: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(query, str) and query.startswith(before) and not self.arrived.is_set():
                self.arrived.set()
                assert self.released.wait(60), "never released"
            return execute(query, *args, **kwargs)

        conn.execute = hooked  # type: ignore[method-assign]


class Worker(threading.Thread):
    """Runs one import on a connection of its own; keeps its outcome or its exception."""

    def __init__(self, conn: Connection, run: Callable[[Connection], object]) -> None:
        super().__init__(daemon=True)
        self.conn, self.run_import = conn, run
        self.outcome: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.outcome = self.run_import(self.conn)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc

    def result(self) -> object:
        self.join(60)
        assert not self.is_alive(), "the import never ended"
        if self.error is not None:
            raise self.error
        return self.outcome


@pytest.fixture
def second(database: DatabaseConfig) -> Iterator[Connection]:
    with connect(database) as connection:
        yield connection


def drain(conn: Connection, config: Config) -> None:
    """What a worker of this host does next: import every batch queued (or to be read again) until none is left."""
    parser = InlineParser()
    for _ in range(50):
        if import_next(conn, config, parser) is None:
            return
    raise AssertionError("batches keep being queued again")


def nothing_left_queued(conn: Connection) -> None:
    assert scalar_int(conn, "SELECT count(*) FROM batch WHERE status IN ('queued', 'failed')") == 0
    assert scalar_int(conn, "SELECT count(*) FROM batch b WHERE EXISTS"
                            " (SELECT 1 FROM reread r WHERE r.batch = b.id)") == 0


def copy_of(a: Path, b: Path, own: int = 1) -> None:
    """``b``: every file of ``a`` (duplicates of its instances) and ``own`` instances of its own."""
    shutil.copytree(a, b)
    make_study(b / "own", own)


def settle(worker: Worker, seconds: float = 1.5) -> None:
    """Give a started worker time to finish, or to block where the fix makes it wait (then it goes on later)."""
    worker.join(seconds)


@pytest.mark.parametrize("stop_b_before", [MERGE_DUPLICATES, MERGE_REJECTED])
@pytest.mark.parametrize("b_outside_roots", [False, True])
def test_a_deleted_while_its_copy_b_is_imported(stop_b_before: str, b_outside_roots: bool, conn: Connection,
                                                 second: Connection, database: DatabaseConfig,
                                                 tmp_path: Path) -> None:
    """B's import has merged its instances (or also its duplicates, pointing at A's) when A is deleted and A's
    removal runs and commits; then B commits. B's copies must become the instances."""
    root = tmp_path / "r"
    config = make_config(database, {"r": root})
    make_study(root / "A", 3)
    b = (tmp_path / "outside" / "B") if b_outside_roots else root / "B"
    copy_of(root / "A", b)
    import_folder(conn, config, root / "A")
    pause = Pause(second, stop_b_before)
    importing_b = Worker(second, lambda c: import_folder(c, config, b))
    importing_b.start()
    assert pause.arrived.wait(30)
    shutil.rmtree(root / "A")
    removing_a = Worker(conn, lambda c: import_folder(c, config, root / "A"))
    removing_a.start()
    settle(removing_a)
    pause.released.set()
    importing_b.result()
    removing_a.result()
    drain(conn, config)
    assert_mirror(conn, {"r": root})
    nothing_left_queued(conn)
    assert scalar_int(conn, "SELECT count(*) FROM instance") == 4


@pytest.mark.parametrize("b_outside_roots", [False, True])
def test_a_removal_stopped_before_it_frees_duplicates_while_b_is_imported(
        b_outside_roots: bool, conn: Connection, second: Connection, database: DatabaseConfig,
        tmp_path: Path) -> None:
    """The other order: A's removal has deleted A's instance rows, not yet committed, when B's import runs."""
    root = tmp_path / "r"
    config = make_config(database, {"r": root})
    make_study(root / "A", 3)
    b = (tmp_path / "outside" / "B") if b_outside_roots else root / "B"
    copy_of(root / "A", b)
    make_study(root / "A" / "extra", 1)
    shutil.copytree(root / "A" / "extra", b / "extra")
    import_folder(conn, config, root / "A")
    import_folder(conn, config, b)  # B's copy of A's extra instance is a duplicate now
    (b / "own" / "IM00000.dcm").rename(b / "own" / "renamed.dcm")  # B changed: its next import reads again
    shutil.rmtree(root / "A")
    pause = Pause(conn, FREE_DUPLICATES)
    removing_a = Worker(conn, lambda c: import_folder(c, config, root / "A"))
    removing_a.start()
    assert pause.arrived.wait(30)
    importing_b = Worker(second, lambda c: import_folder(c, config, b))
    importing_b.start()
    settle(importing_b)
    pause.released.set()
    removing_a.result()
    importing_b.result()
    drain(conn, config)
    assert_mirror(conn, {"r": root})
    nothing_left_queued(conn)


def test_b_reimported_while_a_removal_frees_its_committed_duplicates(conn: Connection, second: Connection,
                                                                     database: DatabaseConfig,
                                                                     tmp_path: Path) -> None:
    """B's earlier import recorded duplicates of A's; B is being imported again (a worker holds its batch) when
    A's removal frees those duplicates and must have B read again."""
    root = tmp_path / "r"
    config = make_config(database, {"r": root})
    make_study(root / "A", 3)
    copy_of(root / "A", root / "B")
    import_folder(conn, config, root / "A")
    import_folder(conn, config, root / "B")
    make_study(root / "B" / "late", 1)  # B grew: its next import reads the new file only
    pause = Pause(second, MERGE_REJECTED)
    importing_b = Worker(second, lambda c: import_folder(c, config, root / "B"))
    importing_b.start()
    assert pause.arrived.wait(30)
    shutil.rmtree(root / "A")
    removing_a = Worker(conn, lambda c: import_folder(c, config, root / "A"))
    removing_a.start()
    settle(removing_a)
    pause.released.set()
    importing_b.result()
    removing_a.result()
    drain(conn, config)
    assert_mirror(conn, {"r": root})
    nothing_left_queued(conn)
