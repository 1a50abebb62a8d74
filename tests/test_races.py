"""Races between imports that lose rows: two workers, each with its own connection, import
folders that hold the same SOP instances while folders are deleted, renamed and copied; whatever the order in
which their statements and commits interleave, once the queue is drained every SOP instance on disk has exactly
one instance row at a path that exists, every row's path exists, and rows = files.

The named cases stop one import at a chosen statement (a hook on its own connection's ``execute``: the
statements still run on the real server) while the other runs, in both orders; the property test runs two
workers truly concurrently on generated programs."""

from __future__ import annotations

import functools
import itertools
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sendit_watcher import roots
from sendit_watcher.batch_import import import_next
from sendit_watcher.config import Config, DatabaseConfig
from sendit_watcher.db import Connection, connect
from sendit_watcher.parsers import InlineParser
from tests.helpers import assert_mirror, import_folder, make_config, make_study, on_host, scalar_int

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


def remove_a_while_b_is_imported(conn: Connection, second: Connection, config: Config, root: Path, b: Path,
                                 stop_b_before: str) -> None:
    """B imported on ``second``, stopped before the statement ``stop_b_before``; meanwhile A deleted and its
    removal imported on ``conn``; B let go; both ended, then the queue drained."""
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
    remove_a_while_b_is_imported(conn, second, config, root, b, stop_b_before)
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
    remove_a_while_b_is_imported(conn, second, config, root, root / "B", MERGE_REJECTED)
    assert_mirror(conn, {"r": root})
    nothing_left_queued(conn)


def test_a_folder_imported_by_hand_is_never_left_queued(conn: Connection, database: DatabaseConfig,
                                                        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """B, imported by hand from outside every root, holds copies of A's instances. A's removal by this host reads
    B's copies itself (no worker has B's root '/'); by a host that did not import B (it cannot know B's folder
    is the same there), B is recorded to be read again, never queued, and the log says how; B's next import by
    hand reads them."""
    root = tmp_path / "r"
    here, elsewhere = make_config(database, {"r": root}), make_config(database, {"r": root})
    elsewhere = on_host(elsewhere, "other-host")
    root.mkdir()
    assert roots.check(conn, "other-host", elsewhere.watches[0]).itself  # the same directory: the share, shown
    roots.share(conn, "other-host", "r")
    for name, remover in (("same-host", here), ("other-host", elsewhere)):
        a, b = root / f"A-{name}", tmp_path / "outside" / f"B-{name}"
        make_study(a, 2)
        copy_of(a, b)
        import_folder(conn, here, a)
        import_folder(conn, here, b)
        shutil.rmtree(a)
        with caplog.at_level(logging.WARNING, logger="sendit_watcher.importer"):
            import_folder(conn, remover, a)
        nothing_queued = scalar_int(conn, "SELECT count(*) FROM batch WHERE status = 'queued'") == 0
        assert nothing_queued, name
        if remover is here:
            assert_mirror(conn, {"r": root})
        else:
            assert "cannot be read here" in caplog.text
            import_folder(conn, here, b)
            assert_mirror(conn, {"r": root})
        nothing_left_queued(conn)


# --- two workers at once on generated programs (hypothesis) ----------------------------------------------------

STEP = st.tuples(st.sampled_from(["import", "delete", "rename", "copy", "queue"]), st.integers(0, 9),
                 st.integers(0, 9))
PROGRAM = st.lists(STEP, min_size=1, max_size=4)
PAUSES = st.lists(st.sampled_from([0, 0, 5, 60]), min_size=1, max_size=12)  # ms before a statement of WINDOWS
WINDOWS = (MERGE_DUPLICATES, MERGE_REJECTED, FREE_DUPLICATES, "\nINSERT INTO instance", "DELETE FROM instance")
FOLDERS = st.lists(st.sets(st.integers(0, 3), min_size=1), min_size=3, max_size=3)  # which pool files each holds
EXAMPLES = int(os.environ.get("SENDIT_RACE_EXAMPLES", "40"))  # about a minute on 2 cores


class Disk:
    """The folders of one example: under the watch root, or outside every root (imported by hand)."""

    def __init__(self, base: Path, pool: list[Path], holds: list[set[int]]) -> None:
        self.root, self.outside = base / "r", base / "outside"
        self.lock, self.names = threading.Lock(), iter(range(10**6))
        self.folders = [self.root / "F0", self.root / "F1", self.outside / "O2"]
        for folder, files in zip(self.folders, holds, strict=True):
            folder.mkdir(parents=True)
            for n in files:
                shutil.copy2(pool[n], folder / pool[n].name)

    def pick(self, n: int) -> Path:
        with self.lock:
            return self.folders[n % len(self.folders)]

    def new_folder(self, outside: bool) -> Path:
        with self.lock:
            folder = (self.outside if outside else self.root) / f"C{next(self.names)}"
            self.folders.append(folder)
            return folder


def change(disk: Disk, op: str, a: int, b: int) -> Path | None:
    """Carry out one step's change on disk; the folder to import after it (None: take from the queue)."""
    folder = disk.pick(a)
    try:
        if op == "delete":
            shutil.rmtree(folder)
        elif op == "rename":
            files = sorted(p for p in folder.rglob("*") if p.is_file())
            if files:
                files[b % len(files)].rename(folder / f"renamed{next(disk.names)}.dcm")
        elif op == "copy":
            target = disk.new_folder(outside=b % 3 == 0)
            shutil.copytree(folder, target)
            folder = target
    except (OSError, shutil.Error):
        pass  # the other worker deleted or changed it meanwhile: import what is there
    return None if op == "queue" else folder


def shaken(conn: Connection, pauses: list[int]) -> None:
    """Before the n-th of its statements that decide on rows another import may be changing (WINDOWS), the
    connection pauses ``pauses[n % len(pauses)]`` milliseconds: the two workers' statements and commits
    interleave in the ways hypothesis draws."""
    statements = itertools.count()
    execute = conn.execute

    def hooked(query: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(query, str) and query.startswith(WINDOWS):
            time.sleep(pauses[next(statements) % len(pauses)] / 1000)
        return execute(query, *args, **kwargs)

    conn.execute = hooked  # type: ignore[method-assign]


def take_step(conn: Connection, config: Config, folder: Path | None) -> object:
    """The import a worker does after a change: the folder's, or the next from the queue."""
    return import_next(conn, config, InlineParser()) if folder is None else import_folder(conn, config, folder)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(holds=FOLDERS, first=PROGRAM, second_program=PROGRAM, first_pauses=PAUSES, second_pauses=PAUSES)
# F1's copies of F0's instances are duplicates; F0 is deleted while F1, one of its copies renamed, is imported
@example(holds=[{0, 1}, {0, 1}, {2}], first=[("delete", 0, 0)], second_program=[("rename", 1, 0)],
         first_pauses=[60], second_pauses=[0, 0, 0, 60])
def test_mirror_holds_after_two_workers_interleave(holds: list[set[int]], first: list[tuple[str, int, int]],
                                                   second_program: list[tuple[str, int, int]],
                                                   first_pauses: list[int], second_pauses: list[int],
                                                   conn: Connection, second: Connection,
                                                   database: DatabaseConfig, tmp_path: Path) -> None:
    """Two workers, each with its own connection, run generated programs of imports, deletions, renames, copies
    (into the root or outside every root) and queue takes at the same time over folders that share SOP
    instances; the queue drained (and every folder changed since its last import imported, as the watcher would
    queue it), the mirror holds and nothing is left queued. SENDIT_RACE_EXAMPLES sets how many programs."""
    conn.execute("TRUNCATE reread, main_tag_conflict, rejected_file, instance, series, study, patient, batch,"
                 " root_identity CASCADE")
    conn.commit()
    base = tmp_path / f"ex-{time.monotonic_ns()}"
    pool = base / "pool"
    make_study(pool, 4)
    disk = Disk(base, sorted(pool.iterdir()), holds)
    config = make_config(database, {"r": disk.root})
    roots.check(conn, config.watcher.host_name, config.watches[0])  # first sight, as the service's start does
    for folder in list(disk.folders):
        import_folder(conn, config, folder)
    shaken(conn, first_pauses)
    shaken(second, second_pauses)
    for one, two in itertools.zip_longest(first, second_program, fillvalue=("queue", 0, 0)):
        folders = change(disk, *one), change(disk, *two)  # both changes on disk, then both imports at once
        workers = [Worker(c, functools.partial(take_step, config=config, folder=f))
                   for c, f in zip((conn, second), folders, strict=True)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.result()
    conn.execute = type(conn).execute.__get__(conn)  # type: ignore[method-assign]
    drain(conn, config)
    for folder in disk.folders:  # the watcher queues what changed since its last import; nothing else is read
        import_folder(conn, config, folder)
    drain(conn, config)
    assert_mirror(conn, {"r": disk.root})
    nothing_left_queued(conn)
