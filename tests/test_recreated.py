"""A folder deleted and created again under its name, or renamed away and back, through the
running service: a recreated folder settles like any new one (never announced half written), and a folder that
comes back by rename within settle_seconds is the same folder (nothing read again, nothing announced).

Every announcement is observed where it is made: a trigger of the test's own records, in the finishing
transaction itself, each change of a batch's ``finished_seq`` (what `listen` and NOTIFY announce) with the
batch's status and the paths of its rows at that commit."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sendit_watcher import batches
from sendit_watcher.batch_import import import_next
from sendit_watcher.catchup import scan_roots
from sendit_watcher.config import DatabaseConfig
from sendit_watcher.db import Connection
from sendit_watcher.importer import Result
from sendit_watcher.intake import Intake
from sendit_watcher.parsers import InlineParser
from tests.fix_service import ServiceProcess
from tests.helpers import (
    assert_mirror,
    import_folder,
    make_config,
    make_study,
    regular_files,
    scalar_int,
    wait_until,
    write_config,
)

SETTLE = 1.0


@dataclass(frozen=True)
class Announcement:
    """One finishing commit of a batch: what `listen` was told, with the batch's rows at that moment."""

    seq: int
    status: str
    files: int
    paths: frozenset[str]


_LOG_FINISHES = """
CREATE TABLE test_finish_log (seq bigint, path text, status text, files integer, paths text[]);
CREATE FUNCTION test_log_finish() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO test_finish_log VALUES (NEW.finished_seq, NEW.path, NEW.status, NEW.files,
        ARRAY(SELECT path FROM instance WHERE batch = NEW.id UNION ALL
              SELECT path FROM rejected_file WHERE batch = NEW.id));
    RETURN NEW;
END $$;
CREATE TRIGGER test_log_finish AFTER UPDATE ON batch FOR EACH ROW
    WHEN (NEW.finished_seq IS DISTINCT FROM OLD.finished_seq) EXECUTE FUNCTION test_log_finish();
"""


@pytest.fixture
def announcements(conn: Connection) -> Callable[[str], list[Announcement]]:
    """Install the trigger; returns a reader of every announcement made for a folder, in commit order."""
    conn.execute(_LOG_FINISHES)
    conn.commit()

    def read(path: str) -> list[Announcement]:
        rows = conn.execute("SELECT seq, status, files, paths FROM test_finish_log WHERE path = %s ORDER BY seq",
                            (path,)).fetchall()
        conn.rollback()
        return [Announcement(seq, status, files, frozenset(paths)) for seq, status, files, paths in rows]

    return read


@pytest.fixture
def service(tmp_path: Path, incoming: Path, database: DatabaseConfig,
            announcements: Callable[[str], list[Announcement]]) -> Iterator[ServiceProcess]:
    process = ServiceProcess(write_config(tmp_path / "svc.conf", database, {"incoming": incoming},
                                          settle_seconds=SETTLE), tmp_path)
    process.wait_ready()
    yield process
    process.kill()


def slow_copy(source: Path, target: Path, gap: float) -> None:
    """mkdir ``target``, then copy the files of ``source`` into it one by one (each under a name no earlier
    folder of that name had), ``gap`` seconds apart."""
    target.mkdir()
    for file in sorted(source.iterdir()):
        shutil.copy2(file, target / f"copy-{file.name}")
        time.sleep(gap)


def rows_of(conn: Connection, path: str) -> dict[str, tuple[int, object]]:
    """The folder's instance rows: file path -> (row id, imported_at)."""
    rows = conn.execute("SELECT i.path, i.id, i.imported_at FROM instance i JOIN batch b ON b.id = i.batch"
                        " WHERE b.path = %s", (path,)).fetchall()
    conn.rollback()
    return {p: (i, at) for p, i, at in rows}


def idle(conn: Connection) -> bool:
    return scalar_int(conn, "SELECT count(*) FROM batch WHERE status IN ('queued', 'importing')") == 0


def test_a_folder_deleted_and_copied_again_slowly_is_never_announced_half_written(
        service: ServiceProcess, conn: Connection, incoming: Path, tmp_path: Path,
        announcements: Callable[[str], list[Announcement]]) -> None:
    """The tester's case: `rm -rf A`, then a copy into a new A trickling in over more than settle_seconds. The
    old A's rows go (announced `empty`); the new A is announced once, whole."""
    make_study(incoming / "A.tmp", 20)
    (incoming / "A.tmp").rename(incoming / "A")
    wait_until(lambda: [a.files for a in announcements("A")] == [20], timeout=30, what="A imported")
    source = tmp_path / "copy"
    make_study(source, 20)
    shutil.rmtree(incoming / "A")
    slow_copy(source, incoming / "A", gap=0.25)  # 5 s of copying, each file well within settle_seconds
    wait_until(lambda: announcements("A")[-1].paths == frozenset(regular_files(incoming / "A")), timeout=30,
               what="the new A imported")
    wait_until(lambda: idle(conn), timeout=30, what="the queue drained")
    told = announcements("A")
    final = frozenset(regular_files(incoming / "A"))
    assert [a for a in told if a.status == "done" and a.paths != final][1:] == [], told  # the first: the old A
    assert [a.status for a in told[1:]] in (["empty", "done"], ["done"]), told
    assert_mirror(conn, {"incoming": incoming})


def test_a_folder_renamed_away_and_back_within_settle_seconds_is_not_read_again(
        tmp_path: Path, incoming: Path, database: DatabaseConfig, conn: Connection,
        announcements: Callable[[str], list[Announcement]]) -> None:
    """A -> A.tmp -> A one second apart (settle_seconds 3): the same folder. Its rows keep their ids and
    import times, and downstream is told nothing."""
    process = ServiceProcess(write_config(tmp_path / "svc.conf", database, {"incoming": incoming},
                                          settle_seconds=3), tmp_path)
    try:
        process.wait_ready()
        make_study(incoming / "A.tmp", 8)
        (incoming / "A.tmp").rename(incoming / "A")
        wait_until(lambda: len(rows_of(conn, "A")) == 8 and idle(conn), timeout=30, what="A imported")
        before = rows_of(conn, "A")
        (incoming / "A").rename(incoming / "A.tmp")
        time.sleep(1.0)
        (incoming / "A.tmp").rename(incoming / "A")
        time.sleep(5.0)  # longer than settle_seconds: a removal held back that long would have happened
        wait_until(lambda: idle(conn), timeout=30, what="the queue drained")
        assert rows_of(conn, "A") == before
        assert [a.status for a in announcements("A")] == ["done"]
        assert_mirror(conn, {"incoming": incoming})
    finally:
        process.kill()


def test_a_folder_away_for_longer_than_settle_seconds_is_removed_then_read_again(
        service: ServiceProcess, conn: Connection, incoming: Path,
        announcements: Callable[[str], list[Announcement]]) -> None:
    """What the README says of a folder renamed away for longer: its rows go (announced `empty`), and it is
    read again, as a new folder, when it comes back."""
    make_study(incoming / "A.tmp", 5)
    (incoming / "A.tmp").rename(incoming / "A")
    wait_until(lambda: len(rows_of(conn, "A")) == 5 and idle(conn), timeout=30, what="A imported")
    (incoming / "A").rename(incoming / "A.tmp")
    wait_until(lambda: [a.status for a in announcements("A")] == ["done", "empty"], timeout=30,
               what="A's rows removed")
    assert rows_of(conn, "A") == {}
    (incoming / "A.tmp").rename(incoming / "A")
    wait_until(lambda: [a.status for a in announcements("A")] == ["done", "empty", "done"], timeout=30,
               what="A read again")
    assert announcements("A")[-1].files == 5
    assert_mirror(conn, {"incoming": incoming})


def test_a_folder_deleted_and_recreated_by_rename_is_finished_at_once(
        service: ServiceProcess, conn: Connection, incoming: Path,
        announcements: Callable[[str], list[Announcement]]) -> None:
    make_study(incoming / "A.tmp", 4)
    (incoming / "A.tmp").rename(incoming / "A")
    wait_until(lambda: len(rows_of(conn, "A")) == 4 and idle(conn), timeout=30, what="A imported")
    make_study(incoming / "A.tmp", 6)
    shutil.rmtree(incoming / "A")
    (incoming / "A.tmp").rename(incoming / "A")
    wait_until(lambda: len(rows_of(conn, "A")) == 6 and idle(conn), timeout=30, what="the new A imported")
    told = announcements("A")
    assert told[-1].status == "done" and told[-1].paths == frozenset(regular_files(incoming / "A")), told
    assert all(a.files in (0, 4, 6) for a in told), told
    assert_mirror(conn, {"incoming": incoming})


def test_a_folder_recreated_while_the_service_was_down_settles_before_it_is_read(
        tmp_path: Path, incoming: Path, database: DatabaseConfig, conn: Connection,
        announcements: Callable[[str], list[Announcement]]) -> None:
    """Stopped, then `rm -rf A` and a slow copy that is still going when the service starts: the catch-up scan
    finds A changed but still being written, and lets it settle first."""
    config = write_config(tmp_path / "svc.conf", database, {"incoming": incoming}, settle_seconds=SETTLE)
    make_study(incoming / "A.tmp", 3)
    (incoming / "A.tmp").rename(incoming / "A")
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    process = ServiceProcess(config, tmp_path / "first")
    try:
        process.wait_ready()
        wait_until(lambda: len(rows_of(conn, "A")) == 3 and idle(conn), timeout=30, what="A imported")
    finally:
        assert process.stop() == 0
    source = tmp_path / "copy"
    make_study(source, 16)
    shutil.rmtree(incoming / "A")
    copier = threading.Thread(target=slow_copy, args=(source, incoming / "A", 0.25))
    copier.start()
    time.sleep(1.0)
    process = ServiceProcess(config, tmp_path / "second")
    try:
        process.wait_ready()
        copier.join()
        final = frozenset(regular_files(incoming / "A"))
        wait_until(lambda: announcements("A")[-1].paths == final, timeout=30, what="the new A imported")
        wait_until(lambda: idle(conn), timeout=30, what="the queue drained")
        told = announcements("A")
        assert [a for a in told[1:] if a.status == "done" and a.paths != final] == [], told
        assert_mirror(conn, {"incoming": incoming})
    finally:
        process.kill()


# --- the batch protocol and the worker, in this process -------------------------------------------------------

def test_a_removal_is_held_back_and_then_reads_nothing_of_a_folder_there_again(
        database: DatabaseConfig, conn: Connection, incoming: Path) -> None:
    config = make_config(database, {"incoming": incoming})
    make_study(incoming / "A", 3)
    import_folder(conn, config, incoming / "A")
    shutil.rmtree(incoming / "A")
    make_study(incoming / "A", 1)  # a new A, the first file of a copy under way
    batch_id = batches.enqueue_known(conn, "incoming", "A", hold_seconds=0.5, host=config.watcher.host_name)
    assert import_next(conn, config, InlineParser()) is None  # held back
    time.sleep(0.6)
    removal = import_next(conn, config, InlineParser())
    assert isinstance(removal, Result) and removal.batch_id == batch_id
    assert (removal.status, removal.files, removal.removed, removal.unchanged) == ("empty", 0, 3, False)
    assert rows_of(conn, "A") == {}  # nothing of the new A was read
    assert batches.enqueue(conn, "incoming", "A") == batch_id  # the new A has settled
    imported = import_next(conn, config, InlineParser())
    assert isinstance(imported, Result) and (imported.status, imported.files) == ("done", 1)
    assert_mirror(conn, {"incoming": incoming})


def test_a_folder_back_before_its_removal_is_taken_is_the_same_folder(
        database: DatabaseConfig, conn: Connection, incoming: Path) -> None:
    config = make_config(database, {"incoming": incoming})
    make_study(incoming / "A", 3)
    import_folder(conn, config, incoming / "A")
    before = rows_of(conn, "A")
    batches.enqueue_known(conn, "incoming", "A", hold_seconds=3600, host=config.watcher.host_name)  # A -> A.tmp ...
    assert batches.enqueue(conn, "incoming", "A") is not None  # ... -> A: finished by rename
    again = import_next(conn, config, InlineParser())
    assert isinstance(again, Result) and again.unchanged and again.status == "done"
    assert rows_of(conn, "A") == before


def test_catch_up_takes_a_folder_present_under_a_queued_removal_as_one_to_import(
        database: DatabaseConfig, conn: Connection, incoming: Path) -> None:
    """Stopped after a removal was queued, restarted after A came back: the scan must not leave A to the
    removal alone (it skips queued batches), or the new A would never be read."""
    config = make_config(database, {"incoming": incoming})
    make_study(incoming / "A", 2)
    import_folder(conn, config, incoming / "A")
    batches.enqueue_known(conn, "incoming", "A", hold_seconds=3600, host=config.watcher.host_name)
    found = scan_roots(database, {"incoming": config.watches[0]}, config.watcher.host_name, config.watcher.is_temporary,
                       0.0, set())
    assert found.changed == [("incoming", "A")] and found.gone == []
    batches.enqueue(conn, "incoming", "B")  # an import queued: still left to its worker
    make_study(incoming / "B", 1)
    found = scan_roots(database, {"incoming": config.watches[0]}, config.watcher.host_name, config.watcher.is_temporary,
                       0.0, set())
    assert ("incoming", "B") not in found.changed


def test_only_a_folder_renamed_to_another_final_name_is_removed_without_waiting() -> None:
    intake = Intake(settle_seconds=1.0)
    intake.vanished(("incoming", "A"))  # A -> A.tmp, or rm -rf A: it may come back
    assert intake.hold_removal(("incoming", "A"))
    intake.moved_within(("incoming", "A"))  # ... it was A -> A2
    assert not intake.hold_removal(("incoming", "A"))
    intake.gone_recorded(("incoming", "A"))
    intake.vanished(("incoming", "A"))
    assert intake.hold_removal(("incoming", "A"))


# --- generated sequences (hypothesis) --------------------------------------------------------------------------

STEPS = st.lists(st.tuples(st.sampled_from(["delete", "copy", "rename_in", "away_and_back", "add"]),
                           st.integers(1, 4), st.sampled_from([0.0, 0.5, 1.5])), min_size=1, max_size=4)


def row_paths(conn: Connection, path: str) -> frozenset[str]:
    rows = conn.execute("SELECT i.path FROM instance i JOIN batch b ON b.id = i.batch WHERE b.path = %s UNION ALL"
                        " SELECT r.path FROM rejected_file r JOIN batch b ON b.id = r.batch WHERE b.path = %s",
                        (path, path)).fetchall()
    conn.rollback()
    return frozenset(p for (p,) in rows)


def on_disk(folder: Path) -> frozenset[str]:
    return frozenset(regular_files(folder)) if folder.is_dir() else frozenset()


class Producer:
    """Changes one folder of the root as producers do; records every state it leaves the folder in (the
    states a finished-folder rule may announce), never the states of a copy under way."""

    def __init__(self, incoming: Path, name: str, pool: Path) -> None:
        self.incoming, self.name, self.pool = incoming, name, pool
        self.folder = incoming / name
        self.counter = 0
        self.finished: set[frozenset[str]] = set()

    def fresh(self, files: int) -> Path:
        """A new study of ``files`` instances outside the root, named apart from every earlier file."""
        self.counter += 1
        source = self.pool / f"s{self.counter}"
        make_study(source, files)
        for file in sorted(source.iterdir()):
            file.rename(source / f"{self.counter}-{file.name}")
        return source

    def step(self, operation: str, files: int, pause: float) -> None:
        if operation == "delete":
            shutil.rmtree(self.folder, ignore_errors=True)
        elif operation == "copy":  # rm -rf, then a copy trickling in over more than settle_seconds
            source = self.fresh(files + 3)
            shutil.rmtree(self.folder, ignore_errors=True)
            slow_copy(source, self.folder, gap=0.3)
        elif operation == "rename_in":  # rm -rf, then the new folder renamed in from its temporary name
            staged = self.fresh(files).rename(self.incoming / f"{self.name}-{self.counter}.tmp")
            shutil.rmtree(self.folder, ignore_errors=True)
            staged.rename(self.folder)
        elif operation == "away_and_back" and self.folder.is_dir():
            self.folder.rename(self.incoming / f"{self.name}.tmp")
            time.sleep(pause)
            (self.incoming / f"{self.name}.tmp").rename(self.folder)
        elif operation == "add" and self.folder.is_dir():
            source = self.fresh(1)
            for file in source.iterdir():
                os.replace(file, self.folder / file.name)
        if self.folder.is_dir():
            self.finished.add(on_disk(self.folder))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
@example(steps=[("copy", 1, 0.0)])  # the tester's case: random runs may miss it, as one did before the fix
@example(steps=[("away_and_back", 1, 0.5), ("delete", 1, 0.0), ("rename_in", 1, 0.0)])
def test_every_announcement_of_a_recreated_folder_is_a_finished_state(
        steps: list[tuple[str, int, float]], service: ServiceProcess, conn: Connection, incoming: Path,
        tmp_path: Path, announcements: Callable[[str], list[Announcement]]) -> None:
    """Any sequence of rm -rf, re-creation by a slow copy or by rename, a rename to .tmp and back, a file
    added: every `done` announced for the folder held exactly the files of a state the producer left it in,
    and the rows end up mirroring the disk. Before a step that deletes the folder, the service is let finish
    (a folder deleted while a worker reads it is tests/faults/test_moving's subject, not this one's)."""
    producer = Producer(incoming, f"F{time.monotonic_ns()}", tmp_path / f"pool-{time.monotonic_ns()}")
    producer.step("rename_in", 2, 0.0)

    def caught_up() -> bool:
        return idle(conn) and row_paths(conn, producer.name) == on_disk(producer.folder)

    for operation, files, pause in steps:
        if operation in ("delete", "copy", "rename_in"):
            wait_until(caught_up, timeout=30, what=f"{producer.name} imported before {operation}")
        producer.step(operation, files, pause)
    wait_until(caught_up, timeout=30, what=f"{producer.name} imported as it is on disk at the end")
    time.sleep(SETTLE + 0.5)  # anything still to come (a removal held back, a late settle) has come
    wait_until(caught_up, timeout=30, what=f"{producer.name} still mirrored")
    told = [a for a in announcements(producer.name) if a.status == "done"]
    assert [a for a in told if a.paths not in producer.finished] == [], (steps, told, producer.finished)
    assert_mirror(conn, {"incoming": incoming})


def test_a_removal_whose_folder_is_back_as_it_was_keeps_its_rows_and_is_not_announced(
        tmp_path: Path, database: DatabaseConfig, conn: Connection) -> None:
    """A -> A.tmp queued A's removal; the service stopped; A.tmp -> A; the service started again after the hold
    (a restart at the wrong moment): the worker that takes the removal finds A back exactly as its last import saw
    it, so A keeps its rows and nothing is announced. A back changed is a new folder: the removal goes on."""
    incoming = tmp_path / "incoming"
    config = make_config(database, {"incoming": incoming})
    make_study(incoming / "A", 3)
    make_study(incoming / "B", 2)
    for name in ("A", "B"):
        import_folder(conn, config, incoming / name)
    seq = scalar_int(conn, "SELECT max(finished_seq) FROM batch")
    for name in ("A", "B"):
        batches.enqueue_known(conn, "incoming", name, host=config.watcher.host_name)
    make_study(incoming / "B", 1)  # B came back with one more file: not the folder its last import saw
    outcomes = [import_next(conn, config, InlineParser()) for _ in range(2)]
    assert all(isinstance(outcome, Result) for outcome in outcomes)
    rows = {path: (status, instances) for path, status, instances in conn.execute(
        "SELECT path, status, instances FROM batch")}
    assert rows == {"A": ("done", 3), "B": ("empty", 0)}
    assert scalar_int(conn, "SELECT count(*) FROM batch WHERE finished_seq > %s", seq) == 1  # B's removal only
    assert scalar_int(conn, "SELECT count(*) FROM batch WHERE removal") == 0
