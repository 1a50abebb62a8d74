"""The database mirrors each folder as it is now (the promise "the database mirrors the disk"), through the
public command `sendit-watcher import` and through the running service: deleted, renamed, replaced files, and a
duplicate that becomes the instance when its original is gone; and generated sequences of such operations
(hypothesis)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sendit_watcher.cli import main
from sendit_watcher.config import DatabaseConfig
from sendit_watcher.db import Connection
from sendit_watcher.names import to_text
from tests.fix_service import ServiceProcess
from tests.helpers import assert_mirror, make_study, mirror_problems, scalar, wait_until, write_config


def run_import(conffile: Path, *folders: Path) -> dict[str, dict[str, Any]]:
    """`sendit-watcher import --json` of the folders, one after another; the JSON outcome by folder."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--config", str(conffile), "import", "--json", "--no-progress", "--processes", "1",
                     *map(str, folders)])
    outcomes = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    assert code == 0, outcomes
    return {o["folder"]: o for o in outcomes}


def import_queued(conffile: Path, conn: Connection) -> None:
    """Import what an import queued again (folders holding a duplicate whose original is gone)."""
    for _ in range(5):
        queued = [Path("/") / p for (p,) in conn.execute("SELECT path FROM batch WHERE status = 'queued'")]
        conn.rollback()
        if not queued:
            return
        run_import(conffile, *queued)
    raise AssertionError("folders keep being queued again")


def instance_rows(conn: Connection, sop: str) -> list[tuple[str, str]]:
    rows = conn.execute("SELECT b.path, i.path FROM instance i JOIN batch b ON b.id = i.batch"
                        " WHERE i.sop_instance_uid = %s", (sop,)).fetchall()
    conn.rollback()
    return [(str(b), str(p)) for b, p in rows]


def batch_of(conn: Connection, folder: Path) -> tuple[str, int, int, int, int]:
    """(status, instances, rejected, removed, files) of a folder imported from outside every root."""
    row = conn.execute("SELECT status, instances, rejected, removed, files FROM batch WHERE root = '/' AND path = %s",
                       (to_text(str(folder)[1:]),)).fetchone()
    conn.rollback()
    assert row is not None, f"no batch for {folder}"
    return row[0], row[1], row[2], row[3], row[4]


@pytest.fixture
def conffile(tmp_path: Path, database: DatabaseConfig) -> Path:
    return write_config(tmp_path / "watcher.conf", database, {})


# --- named cases, through `sendit-watcher import` --------------------------------------------------------------


def test_deleted_file_loses_its_row(conffile: Path, conn: Connection, tmp_path: Path) -> None:
    folder = tmp_path / "A"
    uids = make_study(folder, 5)
    run_import(conffile, folder)
    assert_mirror(conn)
    (folder / "IM00002.dcm").unlink()
    outcome = run_import(conffile, folder)[str(folder)]
    assert (outcome["instances"], outcome["removed"]) == (4, 1)
    assert batch_of(conn, folder)[:4] == ("done", 4, 0, 1)
    assert instance_rows(conn, uids[2]) == []
    assert_mirror(conn)


def test_renamed_file_keeps_one_row_at_its_new_path(conffile: Path, conn: Connection, tmp_path: Path) -> None:
    folder = tmp_path / "A"
    uids = make_study(folder, 5)
    (folder / "series").mkdir()
    run_import(conffile, folder)
    (folder / "IM00001.dcm").rename(folder / "renamed.dcm")
    (folder / "IM00003.dcm").rename(folder / "series" / "moved.dcm")
    outcome = run_import(conffile, folder)[str(folder)]
    assert (outcome["instances"], outcome["rejected"]) == (5, 0)
    assert instance_rows(conn, uids[1]) == [(str(folder)[1:], "renamed.dcm")]
    assert instance_rows(conn, uids[3]) == [(str(folder)[1:], "series/moved.dcm")]
    assert scalar(conn, "SELECT count(*) FROM rejected_file") == 0
    assert_mirror(conn)


def test_replaced_file_old_row_out_new_row_in(conffile: Path, conn: Connection, tmp_path: Path) -> None:
    folder = tmp_path / "A"
    uids = make_study(folder, 4)
    other = make_study(tmp_path / "elsewhere", 1)[0]
    run_import(conffile, folder)
    os.replace(tmp_path / "elsewhere" / "IM00000.dcm", folder / "IM00001.dcm")
    run_import(conffile, folder)
    assert instance_rows(conn, uids[1]) == []
    assert instance_rows(conn, other) == [(str(folder)[1:], "IM00001.dcm")]
    assert batch_of(conn, folder)[:3] == ("done", 4, 0)
    assert_mirror(conn)


def test_replaced_by_rename_with_the_same_size_and_mtime(conffile: Path, conn: Connection, tmp_path: Path) -> None:
    """Files unpacked from an archive (or synced with rsync -a / cp -p from one) share one mtime, and CT clones
    share one size: `mv IM00002.dcm IM00001.dcm` must still leave IM00001.dcm's row holding the file's SOP."""
    folder = tmp_path / "A"
    uids = make_study(folder, 4)
    for file in folder.iterdir():
        os.utime(file, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    run_import(conffile, folder)
    os.replace(folder / "IM00002.dcm", folder / "IM00001.dcm")
    run_import(conffile, folder)
    assert instance_rows(conn, uids[2]) == [(str(folder)[1:], "IM00001.dcm")]
    assert instance_rows(conn, uids[1]) == []
    assert_mirror(conn)


def test_duplicate_becomes_the_instance_when_its_original_is_gone(conffile: Path, conn: Connection,
                                                                   tmp_path: Path) -> None:
    a, b = tmp_path / "A", tmp_path / "B"
    uids = make_study(a, 3)
    make_study(b, 2)
    shutil.copy2(a / "IM00000.dcm", b / "copy.dcm")
    run_import(conffile, a)
    run_import(conffile, b)
    assert batch_of(conn, b)[:3] == ("done", 2, 1)  # the copy is a duplicate of A's
    assert_mirror(conn)
    (a / "IM00000.dcm").unlink()
    run_import(conffile, a)
    # B's duplicate is the only copy now. B was imported by hand from outside every root, which no worker has:
    # A's import read B's copy itself, in its own transaction, rather than queue B for ever.
    assert instance_rows(conn, uids[0]) == [(str(b)[1:], "copy.dcm")]
    assert batch_of(conn, b)[:3] == ("done", 3, 0)
    assert_mirror(conn)
    assert run_import(conffile, b)[str(b)]["new_instances"] == 0  # nothing left to read
    assert_mirror(conn)


def test_duplicate_in_the_same_folder_becomes_the_instance(conffile: Path, conn: Connection,
                                                           tmp_path: Path) -> None:
    folder = tmp_path / "A"
    uids = make_study(folder, 3)
    shutil.copy2(folder / "IM00000.dcm", folder / "ZZ-copy.dcm")
    run_import(conffile, folder)
    (folder / "IM00000.dcm").unlink()
    outcome = run_import(conffile, folder)[str(folder)]
    assert (outcome["instances"], outcome["rejected"], outcome["removed"]) == (3, 0, 1)
    assert instance_rows(conn, uids[0]) == [(str(folder)[1:], "ZZ-copy.dcm")]
    assert_mirror(conn)


def test_a_pure_rename_is_not_growth(conffile: Path, conn: Connection, tmp_path: Path) -> None:
    """`listen` tells downstream whether the study grew: files renamed within their folder (storescp
    --rename-on-eostudy renames every file) bring no new instance."""
    folder = tmp_path / "A"
    make_study(folder, 3)
    run_import(conffile, folder)
    (folder / "IM00001.dcm").rename(folder / "renamed.dcm")
    outcome = run_import(conffile, folder)[str(folder)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--config", str(conffile), "listen", "--since", "0", "--count", "1"]) == 0, outcome
    second = json.loads(out.getvalue().splitlines()[0])  # the batch as its second import left it
    assert (outcome["instances"], outcome["new_instances"]) == (3, 0)
    assert second["grew"] is False, second


def test_names_stored_escaped_map_back_to_their_files(conffile: Path, conn: Connection, tmp_path: Path) -> None:
    folder = tmp_path / "A"
    make_study(folder, 3)
    odd = os.fsdecode(b"caf\xe9\\x41.dcm")  # not UTF-8, and a backslash
    run_import(conffile, folder)
    (folder / "IM00001.dcm").rename(folder / odd)
    run_import(conffile, folder)
    assert scalar(conn, "SELECT count(*) FROM instance WHERE path = %s", to_text(odd)) == 1
    assert_mirror(conn)


# --- through the running service -------------------------------------------------------------------------------


@pytest.fixture
def service(tmp_path: Path, incoming: Path, database: DatabaseConfig) -> Iterator[ServiceProcess]:
    process = ServiceProcess(write_config(tmp_path / "svc.conf", database, {"incoming": incoming}, workers=1,
                                          settle_seconds=1, linger_seconds=60), tmp_path)
    process.wait_ready()
    yield process
    process.kill()


def folder_state(conn: Connection, path: str) -> tuple[str, int, int, int, int]:
    row = conn.execute("SELECT status, instances, rejected, removed, imports FROM batch WHERE root = 'incoming'"
                       " AND path = %s", (path,)).fetchone()
    conn.rollback()
    return ("", 0, 0, 0, 0) if row is None else (row[0], row[1], row[2], row[3], row[4])


def mirrored(conn: Connection, incoming: Path) -> Callable[[], bool]:
    return lambda: not mirror_problems(conn, {"incoming": incoming})


def test_service_deleted_and_renamed_in_a_lingering_folder(service: ServiceProcess, conn: Connection,
                                                           incoming: Path, tmp_path: Path) -> None:
    uids = make_study(tmp_path / "src", 6)
    shutil.copytree(tmp_path / "src", incoming / "L")  # created under its final name: settles, then lingers
    wait_until(lambda: folder_state(conn, "L")[:2] == ("done", 6), timeout=30, what="L imported")
    (incoming / "L" / "IM00000.dcm").unlink()
    (incoming / "L" / "IM00001.dcm").rename(incoming / "L" / "renamed.dcm")
    wait_until(lambda: folder_state(conn, "L")[4] == 2, timeout=30, what="L imported again within settle_seconds")
    assert folder_state(conn, "L")[:3] == ("done", 5, 0) and folder_state(conn, "L")[3] >= 1
    assert instance_rows(conn, uids[0]) == []
    assert instance_rows(conn, uids[1]) == [("L", "renamed.dcm")]
    assert_mirror(conn, {"incoming": incoming})


def test_service_replaced_file_in_a_folder_renamed_back(service: ServiceProcess, conn: Connection,
                                                        incoming: Path, tmp_path: Path) -> None:
    uids = make_study(incoming / "R.tmp", 4)
    (incoming / "R.tmp").rename(incoming / "R")
    wait_until(lambda: folder_state(conn, "R")[:2] == ("done", 4), timeout=30, what="R imported")
    other = make_study(tmp_path / "elsewhere", 1)[0]
    (incoming / "R").rename(incoming / "R.tmp")
    os.replace(tmp_path / "elsewhere" / "IM00000.dcm", incoming / "R.tmp" / "IM00003.dcm")
    (incoming / "R.tmp").rename(incoming / "R")
    wait_until(lambda: folder_state(conn, "R")[4] == 2, timeout=30, what="R imported again")
    assert instance_rows(conn, uids[3]) == []
    assert instance_rows(conn, other) == [("R", "IM00003.dcm")]
    assert_mirror(conn, {"incoming": incoming})


def original_and_duplicate(conn: Connection, incoming: Path) -> list[str]:
    """Through the service: folder A of 3 instances, then folder B of 2 holding a copy of A's first file (its
    duplicate); returns A's SOPInstanceUIDs."""
    uids = make_study(incoming / "A.tmp", 3)
    (incoming / "A.tmp").rename(incoming / "A")
    wait_until(lambda: folder_state(conn, "A")[:2] == ("done", 3), timeout=30, what="A imported")
    make_study(incoming / "B.tmp", 2)
    shutil.copy2(incoming / "A" / "IM00000.dcm", incoming / "B.tmp" / "copy.dcm")
    (incoming / "B.tmp").rename(incoming / "B")
    wait_until(lambda: folder_state(conn, "B")[:3] == ("done", 2, 1), timeout=30, what="B imported, one duplicate")
    return uids


def test_service_requeues_the_folder_of_a_duplicate_whose_original_is_gone(service: ServiceProcess,
                                                                           conn: Connection, incoming: Path) -> None:
    uids = original_and_duplicate(conn, incoming)
    (incoming / "A").rename(incoming / "A.tmp")  # the producer contract: change a folder under a temporary name
    (incoming / "A.tmp" / "IM00000.dcm").unlink()
    (incoming / "A.tmp").rename(incoming / "A")
    wait_until(lambda: folder_state(conn, "B")[:3] == ("done", 3, 0), timeout=30, what="B re-queued and imported")
    assert instance_rows(conn, uids[0]) == [("B", "copy.dcm")]
    assert folder_state(conn, "A")[:4] == ("done", 2, 0, 1)
    assert scalar(conn, "SELECT count(*) FROM batch WHERE status IN ('queued', 'failed')") == 0
    assert_mirror(conn, {"incoming": incoming})


# --- generated sequences (hypothesis) --------------------------------------------------------------------------

OPERATIONS = st.lists(
    st.tuples(st.sampled_from(["create", "delete", "rename", "replace", "duplicate", "unpack"]),
              st.integers(0, 2), st.integers(0, 50), st.integers(0, 2), st.booleans()),
    min_size=1, max_size=8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=OPERATIONS, folders=st.integers(2, 3))
@example(operations=[("unpack", 0, 0, 0, True), ("rename", 0, 0, 1, True)], folders=2)  # one mtime, mv over
@example(operations=[("duplicate", 0, 0, 1, False), ("delete", 1, 0, 0, False)], folders=2)  # its original deleted
def test_mirror_holds_after_any_sequence(operations: list[tuple[str, int, int, int, bool]], folders: int,
                                         conffile: Path, conn: Connection, tmp_path: Path) -> None:
    conn.execute("TRUNCATE main_tag_conflict, rejected_file, instance, series, study, patient, batch CASCADE")
    conn.commit()
    base = Path(tmp_path / f"ex-{time.monotonic_ns()}")
    dirs = [base / f"F{n}" for n in range(folders)]
    pool = base / "pool"  # fresh instances to create or replace with
    make_study(pool, 12)
    fresh = iter(sorted(pool.iterdir()))
    counter = iter(range(10**6))
    for d in dirs:
        make_study(d, 2)
    run_import(conffile, *dirs)
    assert_mirror(conn)

    def files_of(d: Path) -> list[Path]:
        return sorted(p for p in d.iterdir() if p.is_file())

    for op, which, pick, other, then_import in operations:  # changes may accumulate between imports
        d, e = dirs[which % folders], dirs[other % folders]
        files = files_of(d)
        if op == "create":
            source = next(fresh, None)
            if source is not None:
                os.replace(source, d / f"new{next(counter)}.dcm")
        elif op == "delete" and files:
            files[pick % len(files)].unlink()
        elif op == "rename" and files:  # within the folder; sometimes over another file of it
            target = files[other % len(files)] if pick % 2 == 0 else d / f"ren{next(counter)}.dcm"
            os.replace(files[pick % len(files)], target)
        elif op == "replace" and files:
            source = next(fresh, None)
            if source is not None:
                os.replace(source, files[pick % len(files)])
        elif op == "duplicate" and files_of(e):
            shutil.copy2(files_of(e)[pick % len(files_of(e))], d / f"dup{next(counter)}.dcm")
        elif op == "unpack":  # as tar, unzip or rsync -a from such a source leave them: one mtime for all
            for file in files:
                os.utime(file, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
        if then_import:
            reimport(conffile, conn, dirs)
    reimport(conffile, conn, dirs)


def reimport(conffile: Path, conn: Connection, dirs: list[Path]) -> None:
    """Import every folder again, then what that queued again; the mirror must hold."""
    run_import(conffile, *dirs)
    import_queued(conffile, conn)
    assert_mirror(conn)


def test_service_folder_deleted_whole(service: ServiceProcess, conn: Connection, incoming: Path) -> None:
    """A folder removed from the root takes its rows with it, and a duplicate elsewhere becomes the instance
    (a SOP Instance UID on disk somewhere has exactly one instance row)."""
    uids = original_and_duplicate(conn, incoming)
    shutil.rmtree(incoming / "A")
    wait_until(lambda: instance_rows(conn, uids[0]) == [("B", "copy.dcm")], timeout=15,
               what=f"B's copy to become the instance; rows now {instance_rows(conn, uids[0])}")
    assert_mirror(conn, {"incoming": incoming})


def test_service_folder_renamed_to_another_final_name(service: ServiceProcess, conn: Connection,
                                                      incoming: Path) -> None:
    """`mv A A2` within the root: A2's files are the instances (not duplicates of rows whose files are gone),
    and nothing is left at A."""
    uids = make_study(incoming / "A.tmp", 3)
    (incoming / "A.tmp").rename(incoming / "A")
    wait_until(lambda: folder_state(conn, "A")[:2] == ("done", 3), timeout=30, what="A imported")
    (incoming / "A").rename(incoming / "A2")
    wait_until(lambda: folder_state(conn, "A2")[0] == "done", timeout=30, what="A2 imported")
    assert [instance_rows(conn, uid) for uid in uids] == [[("A2", f"IM{n:05d}.dcm")] for n in range(3)]
    assert_mirror(conn, {"incoming": incoming})


def test_folder_deleted_while_the_service_was_down(tmp_path: Path, incoming: Path, database: DatabaseConfig,
                                                   conn: Connection) -> None:
    """The catch-up scan at start finds a recorded folder missing from its root: its rows go, and a duplicate
    elsewhere becomes the instance."""
    config = write_config(tmp_path / "svc.conf", database, {"incoming": incoming}, workers=1, settle_seconds=1)
    uids = make_study(incoming / "A.tmp", 3)
    (incoming / "A.tmp").rename(incoming / "A")
    make_study(incoming / "B", 2)
    shutil.copy2(incoming / "A" / "IM00000.dcm", incoming / "B" / "copy.dcm")
    service = ServiceProcess(config, tmp_path)
    try:
        service.wait_ready()
        wait_until(lambda: folder_state(conn, "A")[:2] == ("done", 3) and folder_state(conn, "B")[:3] ==
                   ("done", 2, 1), timeout=30, what="A imported, then B with one duplicate")
    finally:
        assert service.stop() == 0
    shutil.rmtree(incoming / "A")
    service = ServiceProcess(config, tmp_path)
    try:
        service.wait_ready()
        wait_until(lambda: instance_rows(conn, uids[0]) == [("B", "copy.dcm")], timeout=30,
                   what="B's copy to become the instance after the catch-up scan")
        wait_until(lambda: scalar(conn, "SELECT count(*) FROM batch WHERE status IN ('queued', 'importing')") == 0,
                   timeout=30, what="the queue drained")
        assert_mirror(conn, {"incoming": incoming})
        assert scalar(conn, "SELECT count(*) FROM instance") == 3  # B: its two, and the copy
    finally:
        service.kill()


def test_service_folder_moved_out_of_the_root(service: ServiceProcess, conn: Connection, incoming: Path,
                                              tmp_path: Path) -> None:
    uids = make_study(incoming / "A.tmp", 3)
    (incoming / "A.tmp").rename(incoming / "A")
    wait_until(lambda: folder_state(conn, "A")[:2] == ("done", 3), timeout=30, what="A imported")
    (incoming / "A").rename(tmp_path / "archived")
    wait_until(lambda: all(instance_rows(conn, uid) == [] for uid in uids), timeout=15,
               what="A's rows removed once it left the root")
    assert_mirror(conn, {"incoming": incoming})


def test_removed_counts_files_gone_not_files_renamed_within_the_folder(conffile: Path, conn: Connection,
                                                                      tmp_path: Path) -> None:
    folder = tmp_path / "A"
    make_study(folder, 4)
    run_import(conffile, folder)
    (folder / "IM00001.dcm").rename(folder / "renamed.dcm")
    assert run_import(conffile, folder)[str(folder)]["removed"] == 0
    (folder / "IM00002.dcm").rename(folder / "again.dcm")
    (folder / "IM00003.dcm").unlink()
    assert run_import(conffile, folder)[str(folder)]["removed"] == 1
    assert_mirror(conn)
