"""The service end to end as a subprocess: real inotify, real PostgreSQL, real NOTIFY_SOCKET, real signals."""

from __future__ import annotations

import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from sendit_watcher.config import DatabaseConfig
from sendit_watcher.db import Connection, connect
from sendit_watcher.migrate import MIGRATION_LOCK
from tests.fix_postgres import PrivateCluster
from tests.fix_service import ServiceProcess
from tests.helpers import (
    PATIENT_BIRTH_DATE,
    PATIENT_ID,
    PATIENT_NAME,
    batch_rows,
    done,
    drop_study,
    make_study,
    scalar,
    wait_until,
    write_config,
)


@pytest.fixture
def service(tmp_path: Path, database: DatabaseConfig, incoming: Path) -> Iterator[ServiceProcess]:
    config = write_config(tmp_path / "watcher.conf", database, {"incoming": incoming})
    process = ServiceProcess(config, tmp_path)
    process.wait_ready()
    yield process
    process.kill()


def test_rename_from_tmp_imports_once_and_notifies(service: ServiceProcess, conn: Connection, incoming: Path,
                                                  database: DatabaseConfig) -> None:
    received: list[psycopg.Notify] = []
    with connect(database, autocommit=True) as listener:
        listener.add_notify_handler(received.append)
        listener.execute("LISTEN sendit_batch")
        make_study(incoming / "A.tmp", 100)
        make_study(incoming / "never.tmp", 5)
        (incoming / "A.tmp").rename(incoming / "A")
        wait_until(done(conn, "A", 100), what="A imported")
        batch_id = scalar(conn, "SELECT id FROM batch WHERE path = 'A'")
        wait_until(lambda: listener.execute("SELECT 1") is not None and any(
            n.payload == str(batch_id) for n in received), timeout=10, what="NOTIFY sendit_batch")
    time.sleep(2.5)  # more than the settle period: a .tmp folder stays untouched however long it sits
    assert set(batch_rows(conn)) == {"A"}
    assert batch_rows(conn)["A"] == ("done", 100, 1)
    patient = conn.execute("SELECT patient_name, patient_id, patient_birth_date::text FROM patient").fetchone()
    assert patient == (PATIENT_NAME, PATIENT_ID, "1961-04-17")
    for phi in (PATIENT_NAME, "Fixture", PATIENT_ID, PATIENT_BIRTH_DATE, "1961-04-17"):  # not even at debug level
        assert phi not in service.log


def test_mkdir_and_slow_copy_is_imported_once_after_the_copy_ends(service: ServiceProcess, conn: Connection,
                                                                  incoming: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_study(source, 12)
    target = incoming / "B"
    target.mkdir()
    for number, file in enumerate(sorted(source.iterdir())):
        data = file.read_bytes()
        with (target / file.name).open("wb") as out:  # each file written in two halves, 0.15 s apart
            out.write(data[: len(data) // 2])
            out.flush()
            time.sleep(0.15)
            out.write(data[len(data) // 2:])
        time.sleep(0.2)
        assert "B" not in batch_rows(conn), f"imported while file {number} was still being copied"
    wait_until(done(conn, "B", 12), what="B imported")
    assert batch_rows(conn)["B"] == ("done", 12, 1)
    assert scalar(conn, "SELECT count(*) FROM rejected_file") == 0


def test_retouched_folder_makes_no_second_batch(service: ServiceProcess, conn: Connection, incoming: Path) -> None:
    make_study(incoming / "C.tmp", 10)
    (incoming / "C.tmp").rename(incoming / "C")
    wait_until(done(conn, "C", 10), what="C imported")
    (incoming / "C").rename(incoming / "C.tmp")
    (incoming / "C.tmp").rename(incoming / "C")
    os.utime(incoming / "C")
    wait_until(lambda: service.log.count("(incoming:C) unchanged since its last import") >= 1, timeout=10,
               what="C re-checked")
    assert batch_rows(conn) == {"C": ("done", 10, 1)}  # re-queued, found unchanged: no new import, no new batch
    assert scalar(conn, "SELECT count(*) FROM instance") == 10


def test_files_directly_in_the_root_are_ignored(service: ServiceProcess, conn: Connection, incoming: Path) -> None:
    make_study(incoming / "D.tmp", 1)
    shutil.copy(next((incoming / "D.tmp").iterdir()), incoming / "loose.dcm")
    (incoming / "D.tmp").rename(incoming / "D")
    wait_until(done(conn, "D", 1), what="D imported")
    assert set(batch_rows(conn)) == {"D"}
    assert "files directly in a watch root are not batches" in service.log


def test_sd_notify_ready_status_watchdog_stopping(tmp_path: Path, database: DatabaseConfig, incoming: Path) -> None:
    config = write_config(tmp_path / "watcher.conf", database, {"incoming": incoming})
    process = ServiceProcess(config, tmp_path, env={"WATCHDOG_USEC": "1000000"})
    try:
        process.wait_ready()
        status = process.notify.wait_for(lambda line: line.startswith("STATUS="))
        assert status.startswith(f"STATUS=watching {incoming}") and "folders imported" in status
        started = time.monotonic()
        wait_until(lambda: process.notify.fields().count("WATCHDOG=1") >= 3, timeout=10, what="3 watchdog pings")
        assert time.monotonic() - started < 2.5  # every half of WATCHDOG_USEC
        process.signal(signal.SIGTERM)
        assert process.process.wait(30) == 0
        process.notify.wait_for(lambda line: line == "STOPPING=1", 5)
        stopping = process.notify.fields().index("STOPPING=1")  # the drain extends systemd's stop timeout
        assert any(line.startswith("EXTEND_TIMEOUT_USEC=") for line in process.notify.fields()[stopping:])
    finally:
        process.kill()


def test_a_migration_waited_for_extends_the_timeout_at_start_and_on_a_reconnect(
        tmp_path: Path, database: DatabaseConfig, incoming: Path, conn: Connection) -> None:
    config = write_config(tmp_path / "watcher.conf", database, {"incoming": incoming})

    def extensions() -> int:
        return sum(line.startswith("EXTEND_TIMEOUT_USEC=") for line in process.notify.fields())

    with connect(database, autocommit=True) as holder:  # another host migrating: the lock is held
        holder.execute("SELECT pg_advisory_lock(%s, %s)", MIGRATION_LOCK)
        process = ServiceProcess(config, tmp_path, env={"WATCHDOG_USEC": "1000000"})
        try:
            process.notify.wait_for(lambda line: line.startswith("EXTEND_TIMEOUT_USEC="), 30)
            pings = process.notify.fields().count("WATCHDOG=1")
            wait_until(lambda: process.notify.fields().count("WATCHDOG=1") > pings, 30, "a watchdog ping meanwhile")
            assert "READY=1" not in process.notify.fields()  # start-up waits for the migration...
            holder.execute("SELECT pg_advisory_unlock(%s, %s)", MIGRATION_LOCK)
            process.wait_ready()  # ...and ends once it is done
            before = extensions()
            holder.execute("SELECT pg_advisory_lock(%s, %s)", MIGRATION_LOCK)
            # This database's service only: the other world's run beside has its own, which this would disturb.
            holder.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                           " WHERE application_name = 'sendit-watcher watcher' AND datname = current_database()")
            drop_study(incoming, "R", 2)  # the main loop reconnects, and migrates again: held up by the lock
            wait_until(lambda: extensions() > before, 30, "EXTEND_TIMEOUT_USEC on the reconnect's migration")
            holder.execute("SELECT pg_advisory_unlock(%s, %s)", MIGRATION_LOCK)
            wait_until(done(conn, "R", 2), what="R imported once the migration lock was free")
            assert process.process.poll() is None
        finally:
            process.kill()


def test_a_root_missing_at_start_is_reported_lost_and_watched_once_it_appears(
        tmp_path: Path, database: DatabaseConfig, conn: Connection) -> None:
    later = tmp_path / "not-mounted-yet"
    config = write_config(tmp_path / "watcher.conf", database, {"late": later})
    process = ServiceProcess(config, tmp_path)
    try:
        process.wait_ready()
        process.notify.wait_for(lambda line: line.startswith("STATUS=") and "LOST ROOT late" in line)
        later.mkdir()
        process.notify.wait_for(lambda line: line.startswith("STATUS=") and "LOST ROOT" not in line, 15)
        drop_study(later, "M", 2)
        wait_until(done(conn, "M", 2), what="M imported from the root that appeared")
        assert process.process.poll() is None
    finally:
        process.kill()


def test_folders_dropped_while_stopped_are_caught_up(tmp_path: Path, database: DatabaseConfig, incoming: Path,
                                                     conn: Connection) -> None:
    config = write_config(tmp_path / "watcher.conf", database, {"incoming": incoming})
    first = ServiceProcess(config, tmp_path)
    first.wait_ready()
    make_study(incoming / "before.tmp", 3)
    (incoming / "before.tmp").rename(incoming / "before")
    wait_until(done(conn, "before", 3), what="before imported")
    assert first.stop() == 0
    make_study(incoming / "renamed.tmp", 4)
    (incoming / "renamed.tmp").rename(incoming / "renamed")
    make_study(incoming / "copied", 5)
    make_study(incoming / "before" / "series2", 2)  # gained files while we were down
    make_study(incoming / "half.tmp", 2)
    second = ServiceProcess(config, tmp_path)
    try:
        second.wait_ready()
        expected = {"before": ("done", 5, 2), "renamed": ("done", 4, 1), "copied": ("done", 5, 1)}
        wait_until(lambda: batch_rows(conn) == expected, what=f"catch-up to {expected}, log:\n{second.log}")
    finally:
        second.kill()


def test_sighup_adds_a_new_watch_root_without_restart(service: ServiceProcess, conn: Connection, incoming: Path,
                                                      tmp_path: Path, database: DatabaseConfig) -> None:
    second = tmp_path / "second"
    second.mkdir()
    write_config(tmp_path / "watcher.conf", database, {"incoming": incoming, "second": second})
    pid = service.process.pid
    service.signal(signal.SIGHUP)
    service.notify.wait_for(lambda line: line == "RELOADING=1")
    service.notify.wait_for(lambda line: line.startswith("STATUS=") and str(second) in line)
    make_study(second / "E.tmp", 3)
    (second / "E.tmp").rename(second / "E")
    wait_until(lambda: scalar(conn, "SELECT root || ':' || status FROM batch WHERE path = 'E'") == "second:done",
               what="E imported from the new root")
    assert service.process.pid == pid and service.process.poll() is None


def test_a_bad_reload_keeps_the_running_configuration(service: ServiceProcess, conn: Connection, incoming: Path,
                                                      tmp_path: Path) -> None:
    (tmp_path / "watcher.conf").write_text("[watch:x]\npath = relative/path\n")
    service.signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in service.log, what="reload refused")
    make_study(incoming / "F.tmp", 2)
    (incoming / "F.tmp").rename(incoming / "F")
    wait_until(done(conn, "F", 2), what="F imported after the refused reload")


def test_a_reload_with_a_processor_that_cannot_be_built_is_refused_whole(
        service: ServiceProcess, conn: Connection, incoming: Path, tmp_path: Path, database: DatabaseConfig) -> None:
    other, third = tmp_path / "other", tmp_path / "third"
    other.mkdir()
    third.mkdir()
    extra = (f"\n[watch:other]\npath = {other}\nprocessor = pyinotify.PrintAllEvents\n"  # takes no context=
             f"\n[watch:third]\npath = {third}\n")
    write_config(tmp_path / "watcher.conf", database, {"incoming": incoming}, settle_seconds=30, extra=extra)
    service.signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in service.log and "PrintAllEvents" in service.log, what="reload refused")
    reloading = service.notify.fields().index("RELOADING=1")
    wait_until(lambda: "READY=1" in service.notify.fields()[reloading:], timeout=10, what="READY=1 after RELOADING=1")
    assert str(third) not in service.log  # nothing of the refused file was applied, not even the good root
    make_study(incoming / "G", 2)  # settles with the running settle_seconds (1 s), not the refused 30 s
    wait_until(done(conn, "G", 2), timeout=20, what="G imported with the running configuration")


def test_a_lost_root_is_reported_and_watched_again(service: ServiceProcess, conn: Connection,
                                                   incoming: Path, tmp_path: Path) -> None:
    wait_until(lambda: scalar(conn, "SELECT count(*) FROM root_identity WHERE root = 'incoming'") == 1,
               what="the root's identity recorded")
    incoming.rename(tmp_path / "away")  # the same directory comes back (a root made anew is another one)
    service.notify.wait_for(lambda line: line.startswith("STATUS=") and "LOST ROOT incoming" in line)
    assert "watch root" in service.log and "is gone" in service.log
    (tmp_path / "away").rename(incoming)
    make_study(incoming / "G.tmp", 2)
    (incoming / "G.tmp").rename(incoming / "G")
    wait_until(done(conn, "G", 2), what="G imported after the root came back")
    assert service.process.poll() is None


def test_the_loss_of_a_third_party_processors_root_is_noticed(tmp_path: Path, database: DatabaseConfig,
                                                              incoming: Path,
                                                              processor_path: Callable[[str], str]) -> None:
    other = tmp_path / "other"
    other.mkdir()
    extra = f"\n[watch:other]\npath = {other}\nevents = IN_CREATE\nprocessor = {processor_path('CreatesOnly')}\n"
    process = ServiceProcess(write_config(tmp_path / "watcher.conf", database, {"incoming": incoming}, extra=extra),
                             tmp_path)
    try:
        process.wait_ready()
        other.rename(tmp_path / "away")
        process.notify.wait_for(lambda line: line.startswith("STATUS=") and "LOST ROOT other" in line)
        (tmp_path / "away").rename(other)
        process.notify.wait_for(lambda line: line.startswith("STATUS=") and "LOST ROOT" not in line)
    finally:
        process.kill()


def test_reload_gives_every_root_the_new_settle_period(service: ServiceProcess, conn: Connection, incoming: Path,
                                                       tmp_path: Path, database: DatabaseConfig) -> None:
    write_config(tmp_path / "watcher.conf", database, {"incoming": incoming}, settle_seconds=30)
    service.signal(signal.SIGHUP)
    wait_until(lambda: "reloaded" in service.log, what="the reload")
    make_study(incoming / "S", 2)  # created under its final name: it settles
    time.sleep(3)  # three times the old settle period, a tenth of the new one
    assert "S" not in batch_rows(conn), "settled with the settle period of before the reload"


def test_a_reload_that_changes_the_role_is_refused_until_a_restart(service: ServiceProcess, conn: Connection,
                                                                   incoming: Path, tmp_path: Path,
                                                                   database: DatabaseConfig) -> None:
    """Found by an outside attack: a new role was silently ignored on reload (the workers and watches are
    started by role). A reload is all or nothing: a new role needs a restart, so the whole
    reload is refused, saying so, and nothing else of the file applies."""
    write_config(tmp_path / "watcher.conf", database, {"incoming": incoming}, role="watcher", settle_seconds=60)
    service.signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in service.log, what="the refused reload")
    assert "role all -> watcher needs a restart" in service.log and "reloaded" not in service.log
    drop_study(incoming, "R", 2)  # still role all: watched and imported here
    wait_until(done(conn, "R", 2), what="R imported by the running role")


def test_database_unreachable_at_start_goes_ready_degraded(tmp_path: Path, incoming: Path) -> None:
    nowhere = DatabaseConfig(dsn="host=127.0.0.1 port=9 dbname=x user=x", schema="s")
    config = write_config(tmp_path / "watcher.conf", nowhere, {"incoming": incoming})
    process = ServiceProcess(config, tmp_path)
    try:
        process.wait_ready(30)
        process.notify.wait_for(lambda line: line.startswith("STATUS=waiting for database: cannot connect"))
        assert process.process.poll() is None
    finally:
        process.kill()


def test_a_processor_that_raises_never_stops_the_notifier(tmp_path: Path, database: DatabaseConfig,
                                                          incoming: Path, conn: Connection,
                                                          processor_path: Callable[[str], str]) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    extra = f"\n[watch:broken]\npath = {broken}\nprocessor = {processor_path('Exploding')}\n"
    config = write_config(tmp_path / "watcher.conf", database, {"incoming": incoming}, extra=extra)
    process = ServiceProcess(config, tmp_path)
    try:
        process.wait_ready()
        for n in range(5):
            (broken / f"x{n}").mkdir()
        make_study(incoming / "H.tmp", 2)
        (incoming / "H.tmp").rename(incoming / "H")
        wait_until(done(conn, "H", 2), what="H imported next to a failing processor")
        assert process.log.count("processor of [watch:broken] failed") >= 5
        assert process.process.poll() is None
    finally:
        process.kill()


@pytest.mark.slow
@pytest.mark.host_global  # lowers fs.inotify.max_queued_events
def test_burst_with_queue_overflow_imports_every_folder_exactly_once(tmp_path: Path, database: DatabaseConfig,
                                                                     incoming: Path, conn: Connection,
                                                                     figures: Callable[[str], None]) -> None:
    folders, files = 200, 100
    config = write_config(tmp_path / "watcher.conf", database, {"incoming": incoming}, settle_seconds=1)
    with lowered_inotify_queue(64):  # read when the inotify instance is created
        process = ServiceProcess(config, tmp_path)
        process.wait_ready()
    try:
        process.signal(signal.SIGSTOP)  # the loop is stalled while the burst lands
        try:
            threads = [threading.Thread(target=_drop_folders, args=(incoming, range(k, folders, 4), files))
                       for k in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            process.signal(signal.SIGCONT)
        wait_until(lambda: scalar(conn, "SELECT count(*) FROM batch WHERE status = 'done'") == folders,
                   timeout=300, what=f"{folders} folders imported")
        assert "inotify queue overflowed" in process.log
    finally:
        process.kill()
    once = scalar(conn, "SELECT count(*) FROM batch WHERE imports = 1 AND instances = %s", files)
    figures(f"inotify queue overflow (max_queued_events 64, loop stalled): {folders * files:,} files in {folders} "
            f"folders, {once}/{folders} imported once")
    assert scalar(conn, "SELECT count(*) FROM instance") == folders * files
    assert once == folders
    assert scalar(conn, "SELECT count(*) FROM rejected_file") == 0


def _drop_folders(root: Path, numbers: range, files: int) -> None:
    for number in numbers:
        make_study(root / f"S{number:04d}.tmp", files)
        (root / f"S{number:04d}.tmp").rename(root / f"S{number:04d}")


class lowered_inotify_queue:  # noqa: N801 - used as a context manager
    """Lower fs.inotify.max_queued_events for a new inotify instance, restoring it afterwards (root only)."""

    PATH = Path("/proc/sys/fs/inotify/max_queued_events")

    def __init__(self, events: int) -> None:
        self.events = events
        self.saved = ""

    def __enter__(self) -> None:
        self.saved = self.PATH.read_text()
        self.PATH.write_text(str(self.events))

    def __exit__(self, *exc: object) -> None:
        self.PATH.write_text(self.saved)


def test_database_outage_loses_nothing(tmp_path: Path, incoming: Path) -> None:
    cluster = PrivateCluster()
    database = DatabaseConfig(dsn=cluster.start(), schema="outage")
    config = write_config(tmp_path / "watcher.conf", database, {"incoming": incoming})
    process = ServiceProcess(config, tmp_path)
    try:
        process.wait_ready()
        make_study(incoming / "up.tmp", 3)
        (incoming / "up.tmp").rename(incoming / "up")
        with connect(database) as conn:
            wait_until(done(conn, "up", 3), what="up imported")
        cluster.stop()
        make_study(incoming / "down.tmp", 4)
        (incoming / "down.tmp").rename(incoming / "down")
        make_study(incoming / "copied-down", 2)
        process.notify.wait_for(lambda line: line.startswith("STATUS=waiting for database"))
        cluster.start()
        with connect(database) as conn:
            wait_until(lambda: batch_rows(conn) == {"up": ("done", 3, 1), "down": ("done", 4, 1),
                                                 "copied-down": ("done", 2, 1)}, what="everything after the outage")
            assert scalar(conn, "SELECT count(*) FROM instance") == 9
        assert process.process.poll() is None
    finally:
        process.kill()
        cluster.destroy()


def test_a_large_folder_is_parsed_by_every_core(service: ServiceProcess, conn: Connection, incoming: Path) -> None:
    make_study(incoming / "LARGE.tmp", 1200)
    (incoming / "LARGE.tmp").rename(incoming / "LARGE")
    wait_until(done(conn, "LARGE", 1200), what="LARGE imported")
    assert batch_rows(conn)["LARGE"] == ("done", 1200, 1)
    assert f"parsing 1200 files of {incoming / 'LARGE'} with {os.cpu_count()} processes" in service.log


class _LoopBug(BaseException):
    """Stands for whatever could still escape every guard of the loop (a BaseException)."""


def test_a_main_loop_that_dies_ends_the_process_with_exit_70_and_no_worker_left(
        database: DatabaseConfig, incoming: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sendit_watcher.errors import EXIT_SOFTWARE
    from sendit_watcher.service import Service
    from tests.helpers import make_config

    service = Service(make_config(database, {"incoming": incoming}, workers=2))
    turns = 0
    workers: list[int] = []

    def dying_turn() -> None:
        nonlocal turns
        turns += 1
        workers.extend(p.pid for p in service.workers.processes if p.pid and turns == 1)
        if turns == 3:
            raise _LoopBug("a bug nothing catches")

    monkeypatch.setattr(service, "turn", dying_turn)
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        assert service.run() == EXIT_SOFTWARE
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert turns == 3 and len(workers) == 2
    assert service.workers.processes == [] and service.workers.retiring == []
    for pid in workers:  # reaped, not left running to keep the process alive
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_only_a_regular_file_is_the_finished_marker(tmp_path: Path, database: DatabaseConfig,
                                                    conn: Connection) -> None:
    marked = tmp_path / "marked"
    marked.mkdir()
    extra = f"\n[watch:marked]\npath = {marked}\nfinished_marker = DONE\n"
    process = ServiceProcess(write_config(tmp_path / "watcher.conf", database, {}, extra=extra), tmp_path)
    try:
        process.wait_ready()
        make_study(marked / "M", 2)
        (marked / "M" / "DONE").mkdir()  # a directory of that name is not the marker
        os.symlink("/etc/hostname", marked / "M" / "DONE2")
        time.sleep(3)  # asserting an absence: three settle periods
        assert "M" not in batch_rows(conn)
        (marked / "M" / "DONE").rmdir()
        (marked / "M" / "DONE").write_bytes(b"")
        wait_until(lambda: batch_rows(conn).get("M", ("",))[0] == "done", timeout=15, what="M finished by DONE")
        assert scalar(conn, "SELECT count(*) FROM rejected_file") == 1  # the symlink; the marker is no row
    finally:
        process.kill()


def test_a_marker_written_just_after_its_folder_is_never_missed(tmp_path: Path, database: DatabaseConfig,
                                                                conn: Connection) -> None:
    """Found by an outside attack: the marker was looked for before the folder was watched, so a DONE written in
    between was never seen (3 of 400 folders waited for a catch-up scan; with rescan_interval = 0, for ever)."""
    marked = tmp_path / "marked"
    marked.mkdir()
    extra = f"\n[watch:marked]\npath = {marked}\nfinished_marker = DONE\n"
    process = ServiceProcess(write_config(tmp_path / "watcher.conf", database, {}, extra=extra, rescan_interval=0),
                             tmp_path)
    rng = random.Random(7)
    try:
        process.wait_ready()
        for n in range(300):
            folder = marked / f"F{n:03d}"
            folder.mkdir()
            (folder / "x.txt").write_bytes(b"not DICOM")
            time.sleep(rng.uniform(0, 0.004))
            (folder / "DONE").write_bytes(b"")
        wait_until(lambda: len(batch_rows(conn)) == 300, timeout=60,
                   what=f"300 folders finished by their marker; {len(batch_rows(conn))} so far")
    finally:
        process.kill()


def _inotify_watches(pid: int) -> int:
    """How many inotify watches the process holds (its fdinfo's 'inotify wd' lines)."""
    count = 0
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            count += sum(line.startswith("inotify wd") for line in info.read_text().splitlines())
        except OSError:
            continue
    return count


def test_a_watched_folder_moved_out_of_the_root_is_no_longer_watched(tmp_path: Path, database: DatabaseConfig,
                                                                     incoming: Path, conn: Connection) -> None:
    """Found by an outside attack: the watches of a lingering folder followed it out of the root (81 left for 20
    folders moved to an archive), watching outside the root until a restart."""
    archive = tmp_path / "archive"
    archive.mkdir()
    process = ServiceProcess(write_config(tmp_path / "watcher.conf", database, {"incoming": incoming},
                                          linger_seconds=600), tmp_path)
    try:
        process.wait_ready()
        assert _inotify_watches(process.process.pid) == 1
        for name in ("A", "B", "C"):
            make_study(incoming / name / "series1", 1)  # created under its final name: watched inside
            (incoming / name / "series2").mkdir()
        wait_until(lambda: all(done(conn, name, 1)() for name in "ABC"), what="A, B and C imported")
        assert _inotify_watches(process.process.pid) > 1  # lingering, watched inside
        for name in ("A", "B", "C"):
            (incoming / name).rename(archive / name)
        wait_until(lambda: _inotify_watches(process.process.pid) == 1, timeout=10, what="only the root watched")
    finally:
        process.kill()
