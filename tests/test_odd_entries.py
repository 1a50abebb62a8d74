"""Time and odd entries, through the running service: files dated in the future settle like any
other folder, and a root's lost+found never becomes a batch, by event or by catch-up."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from sendit_watcher.db import Connection
from tests.fix_service import ServiceProcess
from tests.helpers import batch_rows, done, make_study, wait_until


def test_a_folder_whose_files_are_dated_in_the_future_is_imported_once_it_settles(
        start_service: Callable[..., ServiceProcess], conn: Connection, incoming: Path) -> None:
    start_service(settle_seconds=1)
    folder = incoming / "SKEW"
    folder.mkdir()  # under its final name: the settle rule
    make_study(folder / "series", 4)
    future = time.time() + 24 * 3600  # a producer whose clock is a day ahead (its mtimes; ctimes are the server's)
    for file in (folder / "series").iterdir():
        os.utime(file, (future, future))
    os.utime(folder / "series", (future, future))
    written = time.monotonic()
    wait_until(done(conn, "SKEW", 4), timeout=30, what="SKEW imported")
    assert time.monotonic() - written < 20  # settle_seconds and a look or two, never the day of skew
    assert batch_rows(conn)["SKEW"] == ("done", 4, 1)


def test_lost_and_found_in_a_root_never_becomes_a_batch_by_event_or_by_catch_up(
        start_service: Callable[..., ServiceProcess], conn: Connection, incoming: Path) -> None:
    lost = incoming / "lost+found"
    make_study(lost, 2)  # there before the start: the catch-up scan sees it
    service = start_service(settle_seconds=0.5)
    make_study(incoming / "FIRST.tmp", 1)
    (incoming / "FIRST.tmp").rename(incoming / "FIRST")
    wait_until(done(conn, "FIRST", 1), what="FIRST imported")  # after the start's catch-up scan
    shutil.rmtree(lost)
    lost.mkdir()  # made again under its name (mklost+found does that), files in it: the settle rule's case
    make_study(lost / "orphans", 2)
    make_study(incoming / "LATER.tmp", 1)
    (incoming / "LATER.tmp").rename(incoming / "LATER")
    wait_until(done(conn, "LATER", 1), what="LATER imported")
    wait_until(lambda: "a file system's lost+found is not a batch" in service.log, timeout=10,
               what="the debug line")
    time.sleep(2.0)  # four settle periods: lost+found would have been queued by now
    assert "lost+found" not in batch_rows(conn)
    shutil.rmtree(lost)  # gone again: no batch either (nothing of it was ever imported)
    make_study(incoming / "LAST.tmp", 1)
    (incoming / "LAST.tmp").rename(incoming / "LAST")
    wait_until(done(conn, "LAST", 1), what="LAST imported")
    assert set(batch_rows(conn)) == {"FIRST", "LATER", "LAST"}
