"""Folders that move, vanish or lose files while a worker imports them: nothing twice, no crash, recorded."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sendit_watcher.batches import latest_seq
from sendit_watcher.config import DatabaseConfig
from sendit_watcher.db import Connection
from tests.fix_service import Listener, ServiceProcess
from tests.helpers import drop_study, importing_host, make_study, scalar, wait_until, write_config

FILES = 2500


@pytest.fixture
def one_worker(tmp_path: Path, incoming: Path, database: DatabaseConfig) -> Iterator[tuple[ServiceProcess, Path]]:
    service = ServiceProcess(write_config(tmp_path / "watcher.conf", database, {"incoming": incoming}, workers=1),
                             tmp_path)
    service.wait_ready()
    yield service, incoming
    service.kill()


def final(conn: Connection) -> dict[str, tuple[str, int, int, int]]:
    rows = conn.execute("SELECT path, status, files, instances, rejected FROM batch").fetchall()
    conn.rollback()
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


def settled(conn: Connection, names: set[str]) -> Callable[[], bool]:
    return lambda: names <= {p for p, (s, *_) in final(conn).items() if s in ("done", "empty", "failed")}


def test_renamed_while_importing(one_worker: tuple[ServiceProcess, Path], conn: Connection,
                                 figures: Callable[[str], None]) -> None:
    service, incoming = one_worker
    drop_study(incoming, "MOVING", FILES)
    wait_until(lambda: importing_host(conn) is not None, what="MOVING being imported")
    (incoming / "MOVING").rename(incoming / "MOVED")
    wait_until(settled(conn, {"MOVING", "MOVED"}), timeout=120, what="both names settled")
    outcome = final(conn)
    figures(f"renamed mid-import: MOVING {outcome['MOVING']}, MOVED {outcome['MOVED']} (status, files, instances, "
            f"rejected); {scalar(conn, 'SELECT count(*) FROM instance')} instances for {FILES} files")
    assert scalar(conn, "SELECT count(*) FROM instance") == FILES  # every instance once, under one name or other
    assert outcome["MOVED"][0] == "done" and outcome["MOVED"][2] + outcome["MOVED"][3] == FILES
    # The mirror: MOVING is gone, so it ends with no row (its removal, held back at most settle_seconds).
    wait_until(lambda: final(conn)["MOVING"] == ("empty", 0, 0, 0), timeout=60, what="MOVING's rows removed")
    assert scalar(conn, "SELECT count(*) FROM rejected_file r JOIN batch b ON b.id = r.batch"
                        " WHERE b.path = 'MOVING'") == 0
    assert service.process.poll() is None


def test_deleted_while_importing(one_worker: tuple[ServiceProcess, Path], conn: Connection,
                                 figures: Callable[[str], None]) -> None:
    service, incoming = one_worker
    drop_study(incoming, "GONE", FILES)
    wait_until(lambda: importing_host(conn) is not None, what="GONE being imported")
    shutil.rmtree(incoming / "GONE")
    wait_until(settled(conn, {"GONE"}), timeout=120, what="GONE settled")
    status, files, instances, rejected = final(conn)["GONE"]
    reasons = dict(conn.execute("SELECT reason, count(*) FROM rejected_file GROUP BY reason").fetchall())
    figures(f"deleted mid-import: {status}, {instances} instances, {rejected} rejected {reasons}")
    # Its import ends done or failed; on a slow machine the removal that follows (the folder is gone, after
    # settle_seconds) may already have ended it empty, with no row left: every state a mirror of the disk.
    assert status in ("done", "failed", "empty") and instances + rejected in (0, files)
    assert status != "empty" or instances == 0
    assert set(reasons) <= {"vanished"}
    drop_study(incoming, "AFTER", 3)
    wait_until(lambda: final(conn).get("AFTER", ("",))[0] == "done", what="the service still imports")


def test_a_folder_deleted_mid_import_is_announced_empty_never_done(one_worker: tuple[ServiceProcess, Path],
                                                                    conn: Connection, tmp_path: Path) -> None:
    """The mirror promise on the hand-off: every announcement is a finished state that was true. Before, the
    import went on to commit ``done`` (the files it read before the deletion, the rest ``vanished``) for a folder
    that was gone, and its removal then announced ``empty`` counting the instance rows alone. The folder leaves
    the root at once (moved out of it, then deleted there; the service sees either as a deletion): an ``rm -rf``
    in the root takes the folder itself last, and an import that commits before that saw a folder still there."""
    service, incoming = one_worker
    listener = Listener(tmp_path / "watcher.conf", "--since", str(latest_seq(conn)))
    try:
        drop_study(incoming, "GONE", FILES)
        wait_until(lambda: importing_host(conn) is not None, what="GONE being imported")
        (incoming / "GONE").rename(tmp_path / "GONE")
        shutil.rmtree(tmp_path / "GONE")
        wait_until(lambda: final(conn)["GONE"] == ("empty", 0, 0, 0), timeout=120, what="GONE's removal")
        time.sleep(2)  # anything announced after it
    finally:
        listener.kill()
    said = [(r["status"], r["files"], r["instances"], r["rejected"], r["removed"])
            for r in _announced(listener, "GONE")]
    # Its import rolled back, it never had a row: its removal is no news (announced, it would be an empty one).
    assert said in ([], [("empty", 0, 0, 0, 0)]), said
    # Gone before its commit: rolled back; or gone before the worker opened it (a loaded machine): released.
    said_why = ("was gone before it committed", "released untouched: its folder is not here")
    assert any(why in service.log for why in said_why), service.log[-6000:]
    drop_study(incoming, "AFTER", 3)
    wait_until(lambda: final(conn).get("AFTER", ("",))[0] == "done", what="the service still imports")


def test_a_removal_counts_every_row_it_removes_vanished_rejections_too(one_worker: tuple[ServiceProcess, Path],
                                                                       conn: Connection, tmp_path: Path) -> None:
    """Half the files deleted mid-import: the folder is ``done``, its files that went meanwhile ``vanished``
    (rejections read again at every import). Deleted then, its removal removes every row, and says so: before, it
    counted the instance rows alone."""
    service, incoming = one_worker
    listener = Listener(tmp_path / "watcher.conf", "--since", str(latest_seq(conn)))
    try:
        status, files, instances, rejected = _thinned_mid_import(service, incoming, conn)
        assert status == "done" and rejected > 0 and instances + rejected == files == FILES
        shutil.rmtree(incoming / "THINNED")
        wait_until(lambda: [r["status"] for r in _announced(listener, "THINNED")][-1:] == ["empty"], timeout=60,
                   what=f"THINNED's removal announced; {listener.stderr}")
    finally:
        listener.kill()
    last = _announced(listener, "THINNED")[-1]
    assert (last["instances"], last["rejected"], last["removed"]) == (0, 0, instances + rejected), last


def _thinned_mid_import(service: ServiceProcess, incoming: Path, conn: Connection) -> tuple[str, int, int, int]:
    """THINNED (FILES files) dropped, half its files deleted once its worker walked it (claimed is not enough: on
    a loaded machine the walk may come after the deletions); its row once it settled."""
    drop_study(incoming, "THINNED", FILES)
    wait_until(lambda: f"parsing {FILES} files" in service.log, what="THINNED walked, being parsed")
    for file in sorted((incoming / "THINNED").iterdir())[::2]:
        file.unlink()
    wait_until(settled(conn, {"THINNED"}), timeout=120, what="THINNED settled")
    return final(conn)["THINNED"]


def _announced(listener: Listener, folder: str) -> list[dict[str, object]]:
    return [r for r in (json.loads(line) for line in list(listener.lines)) if r["folder"] == folder]


def test_files_deleted_mid_import(one_worker: tuple[ServiceProcess, Path], conn: Connection,
                                  figures: Callable[[str], None]) -> None:
    service, incoming = one_worker
    status, files, instances, rejected = _thinned_mid_import(service, incoming, conn)
    figures(f"half the files deleted mid-import: {status}, {files} files, {instances} instances, "
            f"{rejected} rejected as vanished")
    assert status == "done" and instances + rejected == files == FILES
    assert scalar(conn, "SELECT count(*) FROM rejected_file WHERE reason <> 'vanished'") == 0


def test_a_tmp_folder_that_never_finishes_is_never_imported(one_worker: tuple[ServiceProcess, Path],
                                                            conn: Connection) -> None:
    service, incoming = one_worker
    make_study(incoming / "forever.tmp", 3)
    drop_study(incoming, "marker", 1)
    wait_until(lambda: final(conn).get("marker", ("",))[0] == "done", what="marker")
    assert set(final(conn)) == {"marker"}


def test_an_unmounted_root_keeps_its_rows_and_is_watched_again_once_mounted(
        tmp_path: Path, database: DatabaseConfig, conn: Connection) -> None:
    """The mount point left behind by an unmounted share is not the root emptied: its rows stay, STATUS says
    LOST ROOT, and a share mounted again is watched (a rename into it is seen at once, not at a rescan)."""

    root, store = tmp_path / "share", tmp_path / "store"  # the share: the store, bind-mounted (it keeps its
    root.mkdir()                                           # content across an unmount, as an NFS export does)
    store.mkdir()
    subprocess.run(["mount", "--bind", str(store), str(root)], check=True)
    service = ServiceProcess(write_config(tmp_path / "w.conf", database, {"share": root}, rescan_interval=1),
                             tmp_path)
    try:
        service.wait_ready()
        drop_study(root, "A", 2)
        wait_until(lambda: scalar(conn, "SELECT status || instances FROM batch WHERE path = 'A'") == "done2",
                   what="A imported")
        subprocess.run(["umount", str(root)], check=True)
        service.notify.wait_for(lambda line: line.startswith("STATUS=") and "LOST ROOT share" in line, 15)
        time.sleep(3)  # three rescan intervals in which the empty mount point must not empty A's rows
        assert scalar(conn, "SELECT status || instances FROM batch WHERE path = 'A'") == "done2"
        subprocess.run(["mount", "--bind", str(store), str(root)], check=True)
        service.notify.wait_for(lambda line: line.startswith("STATUS=") and "LOST ROOT" not in line, 20)
        drop_study(root, "B", 2)
        wait_until(lambda: scalar(conn, "SELECT status || instances FROM batch WHERE path = 'B'") == "done2",
                   timeout=15, what="B imported from the share mounted again")
        assert scalar(conn, "SELECT status || instances || imports FROM batch WHERE path = 'A'") == "done21"
        assert service.process.poll() is None
    finally:
        service.kill()
        subprocess.run(["umount", str(root)], check=False)
