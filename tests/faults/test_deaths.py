"""A worker that dies on one folder again and again (OOM-killed 33 times in 60 s while the folder
stayed queued and blocked the one behind it): after DEATHS_LIMIT deaths the folder is failed with the reason, and
the folder queued behind it is imported. Deaths are real: the worker is SIGKILLed (what the OOM killer sends) while
it imports, found by the attempt it recorded. A stop of the service (its drain) is not a death."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sendit_watcher import batches
from sendit_watcher.config import Config
from sendit_watcher.db import Connection
from sendit_watcher.errors import ImportFailed
from sendit_watcher.importer import Result
from sendit_watcher.parsers import AdaptiveParser
from sendit_watcher.walk import FileEntry, walk
from tests.fix_service import ServiceProcess
from tests.helpers import batch_rows, done, drop_study, import_folder, make_study, scalar, scalar_int, wait_until

_IMPORTING = ("SELECT a.pid FROM batch_attempt a JOIN batch b ON b.id = a.batch"
              " WHERE b.path = %s AND a.died IS NULL AND a.host = %s")


def _kill_while_importing(conn: Connection, folder: str, host: str, deadline: float, killed: list[int]) -> int | None:
    """SIGKILL the worker whose attempt at ``folder`` is open (one not killed before), once it is seen; its pid;
    None once the folder has failed."""
    while time.monotonic() < deadline:
        row = conn.execute(_IMPORTING + " AND NOT a.pid = ANY(%s)", (folder, host, killed)).fetchone()
        conn.rollback()
        if row is not None:
            os.kill(int(row[0]), signal.SIGKILL)
            return int(row[0])
        if batch_rows(conn).get(folder, ("",))[0] == "failed":
            return None
        time.sleep(0.01)
    raise AssertionError(f"no worker was seen importing {folder}")


def test_a_folder_that_kills_its_worker_fails_after_three_deaths_and_the_next_is_imported(
        start_service: Callable[..., ServiceProcess], conn: Connection, incoming: Path,
        figures: Callable[[str], None]) -> None:
    service = start_service(workers=1, host="deaths-host")
    make_study(incoming / "KILLER.tmp", 400)  # 400 files: an import long enough to be killed in
    (incoming / "KILLER.tmp").rename(incoming / "KILLER")
    wait_until(lambda: "KILLER" in batch_rows(conn), timeout=10, what="KILLER queued")
    drop_study(incoming, "AFTER", 3)
    started = time.monotonic()
    deadline = started + 120
    killed: list[int] = []
    while (pid := _kill_while_importing(conn, "KILLER", "deaths-host", deadline, killed)) is not None:
        killed.append(pid)
        assert len(killed) <= batches.DEATHS_LIMIT, "the folder was tried again after the deaths limit"
    wait_until(done(conn, "AFTER", 3), timeout=60, what="AFTER imported")
    status, _, _ = batch_rows(conn)["KILLER"]
    error = str(scalar(conn, "SELECT last_error FROM batch WHERE path = 'KILLER'"))
    figures(f"worker SIGKILLed {len(killed)} times on one folder: failed, the next folder imported "
            f"{time.monotonic() - started:.1f} s after the first kill")
    assert status == "failed"
    assert len(killed) == batches.DEATHS_LIMIT
    assert f"died {batches.DEATHS_LIMIT} times" in error and "killed by signal 9 (SIGKILL" in error, error
    assert scalar_int(conn, "SELECT count(*) FROM instance i JOIN batch b ON b.id = i.batch"
                            " WHERE b.path = 'KILLER'") == 0
    assert scalar_int(conn, "SELECT count(*) FROM batch_attempt a JOIN batch b ON b.id = a.batch"
                            " WHERE b.path = 'KILLER'") == 0, "the failure forgets the batch's attempts"
    assert service.log.count("was killed by signal 9 (SIGKILL: out of memory?)") >= batches.DEATHS_LIMIT
    assert service.stop() == 0


def test_a_stop_during_an_import_is_not_a_death(start_service: Callable[..., ServiceProcess], conn: Connection,
                                                 incoming: Path) -> None:
    """A stop whose drain kills the worker mid-import (drain 0 s), more times than the deaths limit, never fails
    the folder: the next start imports it."""
    importing = _IMPORTING.replace("a.pid", "count(*)") + " AND a.pid = ANY(%s)"
    for _ in range(batches.DEATHS_LIMIT + 1):
        service = start_service(workers=1, parse_processes=1, host="stop-host", drain_seconds=0)
        if "SLOW" not in batch_rows(conn):
            make_study(incoming / "SLOW.tmp", 1500)  # parsed in the worker alone: longer than a stop takes
            (incoming / "SLOW.tmp").rename(incoming / "SLOW")
        workers = service.worker_pids()
        wait_until(lambda: scalar_int(conn, importing, "SLOW", "stop-host", workers) > 0,  # noqa: B023
                   timeout=30, what="SLOW being imported by this service's worker")
        assert service.stop() == 0
        assert batch_rows(conn)["SLOW"][0] == "queued", "the stop did not interrupt the import"
        assert "stopped (its folder is rolled back)" in service.log, service.log[-3000:]
    service = start_service(workers=1, host="stop-host")
    wait_until(done(conn, "SLOW", 1500), timeout=60, what="SLOW imported")
    assert scalar_int(conn, "SELECT count(*) FROM batch_attempt WHERE died IS NOT NULL") == 0
    assert service.stop() == 0


def test_a_parsing_process_that_dies_fails_the_folder_and_the_next_folder_gets_a_new_pool(
        conn: Connection, config: Config, tmp_path: Path) -> None:
    """A process of the parse pool SIGKILLed mid-folder (the OOM killer picks the biggest process) fails that
    folder's import with the reason, never hangs it (multiprocessing.Pool waited for ever for the dead process's
    result); the batch is failed, nothing of it stored, and the next folder is parsed by a new pool."""
    first, second = tmp_path / "incoming" / "FIRST", tmp_path / "incoming" / "SECOND"
    make_study(first, 240)
    make_study(second, 240)
    parser = AdaptiveParser(2, threshold=100)
    try:
        stream = parser.parse(str(first), [e for e in walk(str(first)) if isinstance(e, FileEntry)], False)
        next(stream)  # the pool is up and has chunks in flight
        pool = parser._pool
        assert pool is not None
        for pid in list(pool._pool._processes):  # every process of the pool: none survives to finish the folder
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(ImportFailed, match="a process parsing this folder's files died"):
            for _ in stream:
                pass
        assert pool.broken
        after = import_folder(conn, config, second, parser)  # the next folder: a new pool
        assert parser._pool is not pool
        assert isinstance(after, Result) and after.instances == 240
    finally:
        parser.close()
    assert scalar_int(conn, "SELECT count(*) FROM instance") == 240
