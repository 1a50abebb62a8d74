"""Logging set-up: stderr lines outside systemd, journald when stderr is the journal, library loggers quiet; and
the service's log: quiet when nothing happens, clear when something does (each told once, in our own words)."""

from __future__ import annotations

import grp
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sendit_watcher import logs
from sendit_watcher.config import DatabaseConfig
from sendit_watcher.db import Connection, connect
from sendit_watcher.logs import batch_fields, under_journal
from tests.fix_postgres import PrivateCluster
from tests.fix_service import REPO, ServiceProcess
from tests.helpers import batch_rows, done, drop_study, make_study, wait_until, write_config


def test_batch_fields_become_journal_field_names() -> None:
    assert batch_fields(batch_id=3, folder="A") == {"SENDIT_BATCH_ID": 3, "SENDIT_FOLDER": "A"}


def test_not_under_the_journal_without_journal_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    assert not under_journal()


def test_journal_stream_of_another_file_is_not_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "0:1")
    assert not under_journal()


def test_journal_stream_matching_stderr_is_the_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    info = os.fstat(sys.stderr.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
    assert under_journal()


def test_setup_writes_plain_lines_to_stderr_and_keeps_libraries_at_warning() -> None:
    code = ("import logging; from sendit_watcher.logs import setup; setup('debug');"
            "logging.getLogger('sendit_watcher.x').debug('hello %s', 1);"
            "logging.getLogger('psycopg').info('library chatter');"
            "logging.getLogger('pyinotify').warning('library warning')")
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**env, "PYTHONPATH": str(REPO)})
    assert result.stderr.splitlines() == ["DEBUG sendit_watcher.x: hello 1", "WARNING pyinotify: library warning"]


def test_setup_replaces_earlier_handlers() -> None:
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        logs.setup("info")  # not imported bare: pytest 7 would take a module-level setup() for a nose fixture
        logs.setup("warning")
        assert len(root.handlers) == 1 and root.level == logging.WARNING
        assert logging.getLogger("pydicom").level == logging.WARNING
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])


def test_a_newline_in_a_message_cannot_forge_a_line_on_stderr() -> None:
    code = ("import logging; from sendit_watcher.logs import setup; setup('info');"
            "logging.getLogger('sendit_watcher.x').info('queued %s', 'A\\nINFO sendit_watcher.x: forged\\rB')")
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**env, "PYTHONPATH": str(REPO)})
    assert result.stderr.splitlines() == ["INFO sendit_watcher.x: queued A\\nINFO sendit_watcher.x: forged\\rB"]


# --- the service's log: quiet when nothing happens, clear when something does ---------------------------------


def lines(log: str, text: str) -> list[str]:
    return [line for line in log.splitlines() if text in line]


def test_a_database_outage_is_told_once_then_at_growing_intervals_and_its_end_once(tmp_path: Path,
                                                                                   incoming: Path) -> None:
    """Each process (the main loop, 2 workers) retries every 0.5 s, but says the outage once at WARNING, again
    after 5 s, 10 s more, ... (not at every retry, as the workers did), and that the database is back once."""
    cluster = PrivateCluster()
    database = DatabaseConfig(dsn=cluster.start(), schema="outage")
    service = ServiceProcess(write_config(tmp_path / "watcher.conf", database, {"incoming": incoming}), tmp_path)
    try:
        service.wait_ready()
        cluster.stop()
        wait_until(lambda: len(lines(service.log, "database unavailable")) == 3, 20, "the outage told by each process")
        time.sleep(12)  # 24 retries of each process; reminders due after 5 s, then 15 s
        told = lines(service.log, "database unavailable")
        reminders = lines(service.log, "database still unavailable after")
        cluster.start()
        wait_until(lambda: len(lines(service.log, "database is back")) == 3, 60, "the end told by each process")
        time.sleep(2)
        assert service.process.poll() is None
        after = service.log
    finally:
        service.kill()
        cluster.destroy()
    assert len(told) == 3 and all(line.startswith("WARNING ") for line in told), told
    assert sorted(line.split(":")[1].strip() for line in told) == ["database unavailable", "worker 0", "worker 1"]
    assert 3 <= len(reminders) <= 6, reminders  # once after 5 s per process, perhaps again after 15 s
    assert len(lines(after, "database unavailable")) == 3  # no new outage line after the reconnect
    assert len(lines(after, "database is back")) == 3


def test_a_drain_that_runs_out_of_time_ends_quietly_with_nothing_left_behind(
        start_service: Callable[..., ServiceProcess], incoming: Path, conn: Connection) -> None:
    """The worker stopped after the drain takes its parse pool with it: before, the pool's processes went on
    parsing for a worker that was gone and filled the log with BrokenPipeError tracebacks. It abandons its folder
    and exits rather than being killed, so it releases its semaphores: multiprocessing's resource tracker has no
    "leaked semaphore objects" to warn of when the service exits."""
    service = start_service(drain_seconds=1, parse_processes=2, workers=1)
    make_study(incoming / "BIG.tmp", 3000)
    (incoming / "BIG.tmp").rename(incoming / "BIG")
    wait_until(lambda: "parsing 3000 files" in service.log, what="the parse pool at work")
    wait_until(lambda: len(service.descendants()) >= 3, what="the worker's forkserver and pool started")
    below = service.descendants()
    service.signal(signal.SIGTERM)
    assert service.process.wait(30) == 0
    time.sleep(3)  # time for anything left behind to write its traceback
    left = [pid for pid in below if Path(f"/proc/{pid}").exists()]
    assert len(below) >= 3 and left == [], (below, left)  # the worker, its forkserver, its pool
    assert "did not finish within 1 s; stopped" in service.log and "; killed" not in service.log
    assert "Traceback" not in service.log and "BrokenPipeError" not in service.log, service.log[-3000:]
    assert "leaked semaphore" not in service.log, service.log[-3000:]
    # Stopped inside its COPY (the parse feeds it): psycopg ends the COPY with an error, which the server reports
    # as QueryCanceled; that is the stop's, so the folder stays queued, not failed.
    assert batch_rows(conn)["BIG"][0] == "queued", (batch_rows(conn), service.log[-3000:])


def test_a_drain_that_runs_out_inside_a_query_leaves_the_folder_queued_not_failed(
        start_service: Callable[..., ServiceProcess], incoming: Path, database: DatabaseConfig,
        conn: Connection) -> None:
    """The worker's stop lands inside a query (waiting for a lock another client holds), not in its COPY (the test
    above): the query is cancelled, the folder rolled back and left queued, quietly (before, the query was left
    running and the rollback failed: psycopg's "error ignored in rollback ... another command is already in
    progress"), then imported after the restart."""
    service = start_service(drain_seconds=1, workers=1)
    with connect(database, application="test: holds a lock") as locker:
        locker.execute("LOCK TABLE patient IN ACCESS EXCLUSIVE MODE")
        drop_study(incoming, "A", 3)
        wait_until(lambda: _waiting_workers(conn) == 1, what="the worker waiting for the lock inside its import")
        service.signal(signal.SIGTERM)
        assert service.process.wait(30) == 0
    assert "did not finish within 1 s; stopped" in service.log, service.log[-3000:]
    assert batch_rows(conn)["A"][0] == "queued", (batch_rows(conn), service.log[-3000:])
    assert "(incoming:A) failed" not in service.log, service.log[-3000:]
    assert "error ignored" not in service.log and "Traceback" not in service.log, service.log[-3000:]
    assert "another command is already in progress" not in service.log, service.log[-3000:]
    again = start_service(drain_seconds=1, workers=1)
    wait_until(done(conn, "A", 3), what="A imported after the restart")
    assert again.stop() == 0


def _waiting_workers(conn: Connection) -> int:
    row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'sendit-watcher worker%'"
                       " AND wait_event_type = 'Lock'").fetchone()
    conn.rollback()
    return int(row[0]) if row else 0


def test_a_catch_up_scan_that_found_nothing_logs_at_debug(services: Callable[[Path], ServiceProcess],
                                                          tmp_path: Path, database: DatabaseConfig,
                                                          incoming: Path, conn: Connection) -> None:
    """Except the scan at start, whose cost the operator wants to see after every restart."""
    config = write_config(tmp_path / "watcher.conf", database, {"incoming": incoming}, rescan_interval=1)
    first = services(config)
    wait_until(lambda: len(lines(first.log, "catch-up scan:")) >= 3, 20, "three catch-up scans")
    assert first.stop() == 0
    scans = lines(first.log, "catch-up scan:")
    assert scans[0].startswith("INFO ") and all(line.startswith("DEBUG ") for line in scans[1:]), scans
    drop_study(incoming, "A", 2)  # while stopped: the catch-up scan at start finds it
    second = services(config)
    wait_until(done(conn, "A", 2), what="A imported")
    found = lines(second.log, "catch-up scan:")[0]
    assert found.startswith("INFO ") and "catch-up scan: 1 folders" in found, found  # to import, or still young


def test_a_moved_root_is_told_in_our_words_without_pyinotifys(start_service: Callable[..., ServiceProcess],
                                                               incoming: Path, tmp_path: Path) -> None:
    service = start_service()
    incoming.rename(tmp_path / "away")
    service.notify.wait_for(lambda line: line.startswith("STATUS=") and "LOST ROOT incoming" in line)
    time.sleep(0.5)
    gone = lines(service.log, "watch root")
    assert any("is gone: moved away or renamed (IN_MOVE_SELF)" in line for line in gone), gone
    assert "unknown-path" not in service.log and "has probably changed" not in service.log
    assert "ERROR pyinotify" not in service.log


def test_status_into_a_closed_pipe_ends_quietly(tmp_path: Path, database: DatabaseConfig, incoming: Path) -> None:
    """`sendit-watcher status | head -1`: the reader went away; no BrokenPipeError, no 'Exception ignored'."""
    config = write_config(tmp_path / "watcher.conf", database, {"incoming": incoming})
    process = subprocess.Popen([sys.executable, "-m", "sendit_watcher", "--config", str(config), "status"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # before it writes anything
    stderr = process.stderr.read().decode()
    assert process.wait(60) == 0 and stderr == ""


@pytest.fixture
def group_only() -> Iterator[tuple[Path, str, str]]:
    """(a world-traversable directory under /var/tmp, a user, a supplementary group of that user in the group
    database): postgres and ssl-cert wherever PostgreSQL is installed the Debian way."""
    user = "postgres"
    entry = pwd.getpwnam(user)
    groups = [grp.getgrgid(gid).gr_name for gid in os.getgrouplist(user, entry.pw_gid) if gid != entry.pw_gid]
    assert groups, f"this test needs a user {user} with a supplementary group (Debian's postgres is in ssl-cert)"
    top = Path(tempfile.mkdtemp(prefix="sendit-groups-", dir="/var/tmp"))
    top.chmod(0o755)
    yield top, user, groups[0]
    shutil.rmtree(top, ignore_errors=True)


def _without_supplementary_groups(config: Path, top: Path, user: str) -> ServiceProcess:
    """The service as ``user`` started before it joined its groups (setpriv --clear-groups), on Debian's Python:
    the test's virtualenv under /root is closed to that user."""
    command = ["setpriv", f"--reuid={user}", f"--regid={pwd.getpwnam(user).pw_gid}", "--clear-groups",
               "/usr/bin/python3"]
    return ServiceProcess(config, top, command=command)


def _reload_and_live_on(service: ServiceProcess) -> None:
    service.signal(signal.SIGHUP)
    wait_until(lambda: "reloaded" in service.log, what="the reload")
    time.sleep(1)
    assert service.process.poll() is None


def test_a_root_readable_through_a_group_joined_after_start_asks_for_a_restart(
        group_only: tuple[Path, str, str], database: DatabaseConfig) -> None:
    """The service runs without a supplementary group its user has in the group database, as one started before
    `adduser sendit-watcher GROUP` does; a reload adds a root only that group may read. The log says a restart
    takes the new membership (a reload cannot), with no PermissionError traceback."""
    top, user, group = group_only
    incoming, closed = top / "incoming", top / "closed"
    incoming.mkdir()
    closed.mkdir(mode=0o750)
    (closed / "late").mkdir()
    os.chown(closed, 0, grp.getgrnam(group).gr_gid)
    config = write_config(top / "watcher.conf", database, {"incoming": incoming})
    config.chmod(0o644)
    service = _without_supplementary_groups(config, top, user)
    try:
        service.wait_ready()
        write_config(top / "watcher.conf", database, {"incoming": incoming, "late": closed / "late"})
        _reload_and_live_on(service)
    finally:
        service.kill()
    said = lines(service.log, "reload: [watch:late]")
    assert len(said) == 1 and said[0].startswith("ERROR ") and "cannot be reached" in said[0], said
    assert f"user {user} is in group(s) {group} now" in said[0]
    assert "restart the service (systemctl restart sendit-watcher) to take the new group membership" in said[0]
    assert "Traceback" not in service.log and "PermissionError" not in service.log


def test_a_reload_says_that_a_root_closed_but_to_a_group_joined_since_the_start_needs_a_restart(
        group_only: tuple[Path, str, str], database: DatabaseConfig) -> None:
    """A root readable only by a group: lost at start (the service lacks the group); then the operator runs
    `adduser sendit-watcher GROUP` and `systemctl reload`. The reload re-reads an unchanged file, and the service
    cannot take the group: it used to leave the root unwatched without a word; it says, naming the root, that a
    restart is needed."""
    top, user, group = group_only
    incoming, pacs = top / "incoming", top / "pacs"
    incoming.mkdir()
    pacs.mkdir(mode=0o750)
    os.chown(pacs, 0, grp.getgrnam(group).gr_gid)
    config = write_config(top / "watcher.conf", database, {"incoming": incoming, "pacs": pacs})
    config.chmod(0o644)
    service = _without_supplementary_groups(config, top, user)
    try:
        service.wait_ready()
        service.notify.wait_for(lambda line: line.startswith("STATUS=") and "LOST ROOT pacs" in line)
        wait_until(lambda: "is lost: not readable" in service.log, 15, "the lost root said")
        _reload_and_live_on(service)
    finally:
        service.kill()
    said = lines(service.log, "reload: [watch:pacs]")
    assert len(said) == 1 and said[0].startswith("ERROR ") and f"path {pacs} is not readable" in said[0], said
    assert f"user {user} is in group(s) {group} now" in said[0]
    assert "restart the service (systemctl restart sendit-watcher) to take the new group membership" in said[0]
    lost = lines(service.log, "is lost: not readable")
    assert len(lost) == 1 and f"user {user} is in group(s) {group} now" in lost[0], lost
    assert "Traceback" not in service.log
