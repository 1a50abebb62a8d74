"""Absence is not deletion: a watch root that is not the file system it was (unmounted, another
file system, a directory made anew, a worker host that cannot see it) never has a row removed nor a batch
emptied; it is reported lost (STATUS, `status`, `metrics`, the journal) until it is back or adopted.

The shares are real mounts (the tests run as root): a bind mount of a store directory is a share that can be
unmounted and mounted again with its content, a tmpfs is another file system."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendit_watcher import batches, roots
from sendit_watcher.batch_import import Failure, NotHere, import_next
from sendit_watcher.catchup import scan_roots
from sendit_watcher.cli import main
from sendit_watcher.config import Config, DatabaseConfig
from sendit_watcher.db import Connection
from sendit_watcher.importer import Result
from sendit_watcher.parsers import InlineParser
from sendit_watcher.roots import RootGuard
from sendit_watcher.walk import legacy_fingerprint, walk
from tests.fix_service import ServiceProcess
from tests.helpers import (
    drop_study,
    import_folder,
    make_config,
    make_study,
    on_host,
    scalar,
    scalar_int,
    wait_until,
    write_config,
)

HOST = "test-host"


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def unmount(path: Path) -> None:
    subprocess.run(["umount", str(path)], check=True)


@contextlib.contextmanager
def unmounted_at_end(*points: Path) -> Iterator[None]:
    """Whatever happens, nothing stays mounted on ``points`` (stacked mounts too)."""
    try:
        yield
    finally:
        for point in points:
            while os.path.ismount(point) or _mounted_by_bind(point):
                if subprocess.run(["umount", "-l", str(point)], check=False).returncode:
                    break


def _mounted_by_bind(point: Path) -> bool:
    real = os.fsencode(os.path.realpath(point))
    with open("/proc/self/mountinfo", "rb") as lines:
        return any(line.split(b" ")[4] == real for line in lines)


@pytest.fixture
def share(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(store, root): ``root`` is the store bind-mounted, a share whose content survives an unmount."""
    store, root = tmp_path / "store", tmp_path / "incoming"
    store.mkdir()
    root.mkdir()
    with unmounted_at_end(root):
        mount("--bind", str(store), str(root))
        yield store, root


def run_cli(config: Path, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--config", str(config), *args])
    return code, out.getvalue()


def rows_by_folder(conn: Connection) -> dict[str, tuple[str, int, int]]:
    """(status, instance rows, imports) of every batch, by folder."""
    rows = conn.execute("SELECT b.path, b.status, (SELECT count(*) FROM instance i WHERE i.batch = b.id), b.imports"
                        " FROM batch b").fetchall()
    conn.rollback()
    return {path: (status, count, imports) for path, status, count, imports in rows}


def lost_status(line: str, name: str) -> bool:
    return line.startswith("STATUS=") and f"LOST ROOT {name}" in line


# --- the verdict, in this process ------------------------------------------------------------------------------


def test_a_root_deleted_and_made_again_empty_is_lost_until_adopted(tmp_path: Path, database: DatabaseConfig,
                                                                   conn: Connection) -> None:
    root = tmp_path / "incoming"
    root.mkdir()
    config = make_config(database, {"incoming": root})
    watch = config.watches[0]
    assert roots.check(conn, HOST, watch).itself  # first sight: recorded
    drop_study(root, "A", 2)
    batches.enqueue(conn, "incoming", "A")
    assert import_next(conn, config, InlineParser(), RootGuard(config, every=0)) is not None
    assert rows_by_folder(conn)["A"][:2] == ("done", 2)
    held = os.open(root, os.O_RDONLY)  # the old directory's inode stays taken: the new one cannot reuse its number
    try:
        shutil.rmtree(root)
        root.mkdir()
        verdict = roots.check(conn, HOST, watch)
        assert not verdict.itself and "another directory" in (verdict.reason or "")
        result = scan_roots(database, {"incoming": watch}, HOST, lambda name: False, 0.0, set())
        assert result.gone == [] and "incoming" in result.lost
        batches.enqueue_known(conn, "incoming", "A", host=HOST)  # as an inotify IN_DELETE would have queued it
        assert import_next(conn, config, InlineParser(), RootGuard(config, every=0)) is None  # never claimed
        assert rows_by_folder(conn)["A"] == ("queued", 2, 1)
        lost = scalar(conn, "SELECT lost_reason FROM root_identity WHERE root = 'incoming' AND host = %s", HOST)
        assert "another directory" in str(lost)
        roots.adopt(conn, HOST, watch)  # the operator: this empty directory is the root now
        assert roots.check(conn, HOST, watch).itself
        assert import_next(conn, config, InlineParser(), RootGuard(config, every=0)) is not None
        assert rows_by_folder(conn)["A"][:2] == ("empty", 0)  # adopted: A is gone from it, its rows with it
    finally:
        os.close(held)


def test_a_root_seen_first_without_any_folder_imported_last_is_lost(
        tmp_path: Path, database: DatabaseConfig, conn: Connection) -> None:
    """A host seeing a root for the first time where none of the folders the database imported last is (a host
    whose share is not mounted; its mount point may hold lost+found, a .tmp folder, a file): lost, and nothing
    recorded. A folder of the same name with other files proves nothing; once the share shows one of them as it
    was imported, itself."""
    root = tmp_path / "incoming"
    root.mkdir()
    config = make_config(database, {"incoming": root})
    assert roots.check(conn, HOST, config.watches[0]).itself  # this host's first sight
    drop_study(root, "A", 2)
    batches.enqueue(conn, "incoming", "A")
    assert import_next(conn, config, InlineParser()) is not None
    elsewhere = tmp_path / "mount-point"
    for name in ("lost+found", "B.tmp", "C"):  # what an unmounted mount point may hold; C was never imported
        (elsewhere / name).mkdir(parents=True)
    (elsewhere / "README").write_text("mount the share here\n")
    other = make_config(database, {"incoming": elsewhere})
    verdict = roots.check(conn, "other-host", other.watches[0])
    assert not verdict.itself and "none of the 1 folders of it imported last is here" in (verdict.reason or "")
    assert scalar(conn, "SELECT device FROM root_identity WHERE host = 'other-host'") is None
    make_study(elsewhere / "A", 2)  # a folder of that name, written on this host: not the share's
    verdict = roots.check(conn, "other-host", other.watches[0])
    assert not verdict.itself and "those here are not as they were imported" in (verdict.reason or "")
    shutil.rmtree(elsewhere / "A")
    with unmounted_at_end(elsewhere):
        mount("--bind", str(root), str(elsewhere))  # the share at last: A as it was imported
        assert roots.check(conn, "other-host", other.watches[0]).itself
    shutil.rmtree(root / "A")
    assert roots.check(conn, HOST, config.watches[0]).itself  # the host that knows it: itself (A was deleted)


def test_a_claimed_batch_whose_root_is_unmounted_is_released_untouched(
        share: tuple[Path, Path], database: DatabaseConfig, conn: Connection) -> None:
    """Even without the guard (a root lost between the claim and the import), a worker that finds the folder
    missing re-checks the root and releases the batch: still queued, its rows kept, nothing emptied."""
    store, root = share
    config = make_config(database, {"incoming": root})
    assert roots.check(conn, HOST, config.watches[0]).itself  # recorded as a mount point
    drop_study(root, "A", 3)
    batches.enqueue(conn, "incoming", "A")
    import_next(conn, config, InlineParser())
    assert rows_by_folder(conn)["A"] == ("done", 3, 1)
    unmount(root)
    batches.enqueue(conn, "incoming", "A")  # as a rescan of the empty mount point would have, were it unguarded
    outcome = import_next(conn, config, InlineParser())
    assert isinstance(outcome, Failure) and outcome.status == "queued" and "not mounted" in outcome.error
    assert rows_by_folder(conn)["A"] == ("queued", 3, 1)
    assert "not mounted" in str(scalar(conn, "SELECT lost_reason FROM root_identity WHERE root = 'incoming'"))
    mount("--bind", str(store), str(root))
    assert import_next(conn, config, InlineParser(), RootGuard(config, every=0)) is not None
    assert rows_by_folder(conn)["A"] == ("done", 3, 1)  # unchanged: not even imported again
    assert scalar(conn, "SELECT lost_reason FROM root_identity WHERE root = 'incoming'") is None


# --- the property: any sequence of unmount, mount, folder added or deleted, catch-up and import ----------------

STEPS = st.lists(st.sampled_from(["unmount", "mount", "add", "delete", "scan", "drain"]), min_size=1, max_size=14)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
def test_rows_go_only_for_folders_missing_from_a_root_that_is_itself(
        steps: list[str], share: tuple[Path, Path], database: DatabaseConfig, conn: Connection) -> None:
    """After every step: a folder on the share that was imported keeps every row, and while the share is
    unmounted no folder loses its rows; once it is mounted, caught up and drained, the rows are the share's."""
    store, root = share
    conn.execute("TRUNCATE main_tag_conflict, rejected_file, instance, series, study, patient, batch, root_identity"
                 " CASCADE")
    conn.commit()
    for folder in store.iterdir():
        shutil.rmtree(folder)
    if not os.path.ismount(root) and not _mounted_by_bind(root):
        mount("--bind", str(store), str(root))
    config = make_config(database, {"incoming": root})
    counter = iter(range(1000))
    drop_study(root, "F0", 2)
    catch_up_and_drain(config, database, conn)
    mounted = True
    for step in steps:
        before = rows_by_folder(conn)
        with_rows_before = {f for f, (_, count, _) in before.items() if count}
        empty_before = {f for f, (status, _, _) in before.items() if status == "empty"}
        if step == "unmount" and mounted:
            unmount(root)
            mounted = False
        elif step == "mount" and not mounted:
            mount("--bind", str(store), str(root))
            mounted = True
        elif step == "add":
            make_study(store / f"F{next(counter) + 1}", 2)
        elif step == "delete" and any(store.iterdir()):
            shutil.rmtree(sorted(store.iterdir())[0])
        elif step == "scan":
            catch_up(config, database, conn)
        elif step == "drain":
            drain(config, conn)
        rows = rows_by_folder(conn)
        for folder in store.iterdir():  # imported and on the share: every row kept, whatever the mount
            if rows.get(folder.name, ("", 0, 0))[2]:
                assert rows[folder.name][1] == 2, (steps, folder.name, rows)
        if not mounted:
            assert with_rows_before <= {f for f, (_, count, _) in rows.items() if count}, (steps, rows)
            assert {f for f, (status, _, _) in rows.items() if status == "empty"} <= empty_before, (steps, rows)
    if not mounted:
        mount("--bind", str(store), str(root))
    catch_up_and_drain(config, database, conn)
    rows = rows_by_folder(conn)
    assert {f for f, (_, count, _) in rows.items() if count} == {f.name for f in store.iterdir()}, (steps, rows)


def catch_up(config: Config, database: DatabaseConfig, conn: Connection) -> None:
    """What the service does with a catch-up scan's result: queue what changed and what is gone."""
    result = scan_roots(database, {w.name: w for w in config.watches}, HOST, lambda name: False, 0.0, set())
    for root, name in result.changed:
        batches.enqueue(conn, root, name)
    for root, name in result.gone:
        batches.enqueue_known(conn, root, name, host=HOST)


def drain(config: Config, conn: Connection) -> None:
    guard = RootGuard(config, every=0)
    for _ in range(100):
        if import_next(conn, config, InlineParser(), guard) is None:
            return
    raise AssertionError("the queue never drained")


def catch_up_and_drain(config: Config, database: DatabaseConfig, conn: Connection) -> None:
    catch_up(config, database, conn)
    drain(config, conn)


# --- the service ----------------------------------------------------------------------------------------------


def test_a_restart_while_the_share_is_unmounted_removes_no_row_and_reports_the_root_lost(
        share: tuple[Path, Path], tmp_path: Path, database: DatabaseConfig, conn: Connection) -> None:
    store, root = share
    config = write_config(tmp_path / "watcher.conf", database, {"incoming": root})
    first = ServiceProcess(config, tmp_path)
    try:
        first.wait_ready()
        drop_study(root, "A", 2)
        drop_study(root, "B", 3)
        wait_until(lambda: rows_by_folder(conn) == {"A": ("done", 2, 1), "B": ("done", 3, 1)}, what="A and B")
    finally:
        assert first.stop() == 0
    unmount(root)
    second = ServiceProcess(config, tmp_path)
    try:
        second.wait_ready()
        line = second.notify.wait_for(lambda line: lost_status(line, "incoming"), 15)
        assert "not mounted" in line
        wait_until(lambda: "catch-up scan:" in second.log, what="the catch-up scan at start")
        assert rows_by_folder(conn) == {"A": ("done", 2, 1), "B": ("done", 3, 1)}
        assert second.log.count("is lost: not mounted") == 1  # once, not at every check
        code, out = run_cli(config, "status", "--json")
        lost = json.loads(out)["lost_roots"]
        assert code == 0 and [(r["root"], r["host"]) for r in lost] == [("incoming", HOST)]
        assert "not mounted" in lost[0]["reason"] and lost[0]["since"]
        assert "LOST ROOTS:" in run_cli(config, "status")[1]
        assert f'sendit_root_lost{{root="incoming",host="{HOST}"}} 1' in run_cli(config, "metrics")[1]
        scans = second.log.count("catch-up scan:")
        mount("--bind", str(store), str(root))
        second.notify.wait_for(lambda line: line.startswith("STATUS=") and "LOST ROOT" not in line, 20)
        wait_until(lambda: second.log.count("catch-up scan:") > scans, what="a catch-up once it is back")
        assert "is back" in second.log
        assert rows_by_folder(conn) == {"A": ("done", 2, 1), "B": ("done", 3, 1)}  # nothing imported again
        assert f'sendit_root_lost{{root="incoming",host="{HOST}"}} 0' in run_cli(config, "metrics")[1]
        drop_study(root, "C", 1)
        wait_until(lambda: rows_by_folder(conn).get("C") == ("done", 1, 1), what="C imported")
    finally:
        second.kill()


def test_a_service_restarted_while_its_root_is_still_lost_says_so_when_ready_and_in_the_log(
        share: tuple[Path, Path], tmp_path: Path, database: DatabaseConfig, conn: Connection) -> None:
    """The root was lost (recorded so) by the service before: the one started after it finds the record already
    saying so, and still says LOST ROOT in its READY message and in its log at start, as the one that saw the loss
    happen did."""
    store, root = share
    config = write_config(tmp_path / "watcher.conf", database, {"incoming": root})
    first = ServiceProcess(config, tmp_path)
    try:
        first.wait_ready()
        drop_study(root, "A", 2)
        wait_until(lambda: rows_by_folder(conn) == {"A": ("done", 2, 1)}, what="A")
        unmount(root)
        first.notify.wait_for(lambda line: lost_status(line, "incoming"), 15)
        wait_until(lambda: "is lost: not mounted" in first.log, what="the loss in the first service's log")
    finally:
        assert first.stop() == 0
    second = ServiceProcess(config, tmp_path)
    try:
        second.wait_ready()
        [ready] = [message for message in second.notify.messages if message.startswith("READY=1")]
        assert "LOST ROOT incoming (not mounted" in ready, ready
        at_start = second.log.split("ready: ")[0]
        [said] = [line for line in at_start.splitlines() if "is still lost: not mounted" in line]
        assert said.startswith("ERROR ") and "none of its rows is removed" in said, said
        assert "LOST ROOT incoming (not mounted" in second.log.split("ready: ")[1].splitlines()[0]
        mount("--bind", str(store), str(root))
        second.notify.wait_for(lambda line: line.startswith("STATUS=") and "LOST ROOT" not in line, 20)
        assert rows_by_folder(conn) == {"A": ("done", 2, 1)}
    finally:
        second.kill()
    assert second.log.count("still lost") == 1, second.log  # once, at start


def test_another_file_system_mounted_on_the_root_is_lost_until_adopted(
        share: tuple[Path, Path], tmp_path: Path, database: DatabaseConfig, conn: Connection) -> None:
    store, root = share
    config = write_config(tmp_path / "watcher.conf", database, {"incoming": root}, rescan_interval=1)
    service = ServiceProcess(config, tmp_path)
    try:
        service.wait_ready()
        drop_study(root, "A", 2)
        wait_until(lambda: rows_by_folder(conn) == {"A": ("done", 2, 1)}, what="A imported")
        unmount(root)
        mount("-t", "tmpfs", "sendit-test-other", str(root))  # another share, mounted where the first one was
        service.notify.wait_for(lambda line: lost_status(line, "incoming")
                                and "another directory or file system" in line, 20)
        make_study(root / "B", 1)  # the other share's folder: not ours to import while the root is lost
        scans = service.log.count("catch-up scan:")
        wait_until(lambda: service.log.count("catch-up scan:") >= scans + 3, what="three catch-up scans")
        assert rows_by_folder(conn) == {"A": ("done", 2, 1)}
        assert run_cli(config, "adopt-root", "incoming")[0] == 1  # none of the folders imported last is there
        code, out = run_cli(config, "adopt-root", "--force", "incoming")  # the operator: this is the root now
        assert code == 0 and "adopted" in out
        service.notify.wait_for(lambda line: line.startswith("STATUS=") and "LOST ROOT" not in line, 20)
        wait_until(lambda: {f: r[:2] for f, r in rows_by_folder(conn).items()} == {"A": ("empty", 0), "B": ("done", 1)},
                   what="the adopted share mirrored: A gone from it, B imported")
    finally:
        service.kill()
    assert run_cli(config, "adopt-root", "nosuchroot")[0] == 64


def test_a_worker_host_whose_share_is_unmounted_never_claims_and_never_empties(
        share: tuple[Path, Path], tmp_path: Path, database: DatabaseConfig, conn: Connection) -> None:
    """Host A watches and imports; host B (role worker) has the share mounted at first sight, then loses it.
    B claims nothing, empties nothing, removes nothing; A imports every folder."""
    store, root_a = share
    root_b = tmp_path / "b-incoming"
    root_b.mkdir()
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    with unmounted_at_end(root_b):
        mount("--bind", str(store), str(root_b))
        a = ServiceProcess(write_config(tmp_path / "a.conf", database, {"incoming": root_a}, workers=1,
                                        host="host-a"), tmp_path / "a")
        b = ServiceProcess(write_config(tmp_path / "b.conf", database, {"incoming": root_b}, workers=1,
                                        host="host-b", role="worker"), tmp_path / "b")
        try:
            a.wait_ready()
            b.wait_ready()
            wait_until(lambda: scalar_int(conn, "SELECT count(*) FROM root_identity WHERE host = 'host-b'"
                                          " AND mount_point") == 1, what="B's first sight: a mount point")
            for n in range(4):
                drop_study(root_a, f"E{n}", 2)
            wait_until(lambda: scalar_int(conn, "SELECT count(*) FROM batch WHERE status = 'done'") == 4,
                       what="E0-E3 imported")
            unmount(root_b)
            b.notify.wait_for(lambda line: line.startswith("STATUS=worker only") and "LOST ROOT incoming" in line
                              and "not mounted" in line, 20)
            time.sleep(RootGuard.EVERY + 1)  # B's workers' own view of the root is at most this old
            by_b = {str(p) for (p,) in conn.execute("SELECT path FROM batch WHERE host = 'host-b'").fetchall()}
            conn.rollback()
            for n in range(20):
                drop_study(root_a, f"F{n:02d}", 2)
            shutil.rmtree(root_a / "E0")  # deleted on the share, which A sees: its rows go (A removes them)
            wait_until(lambda: scalar_int(conn, "SELECT count(*) FROM batch WHERE status = 'done'") == 23
                       and scalar_int(conn, "SELECT count(*) FROM batch WHERE status = 'empty'") == 1,
                       timeout=90, what="F00-F19 imported, E0 removed")
        finally:
            a.kill()
            b.kill()
    assert {str(p) for (p,) in conn.execute("SELECT path FROM batch WHERE host = 'host-b'").fetchall()} <= by_b
    assert scalar(conn, "SELECT host FROM batch WHERE status = 'empty'") == "host-a"
    assert scalar_int(conn, "SELECT count(*) FROM instance") == 46
    assert "is lost: not mounted" in b.log  # (a batch B had just claimed may be "released untouched": never emptied)


def test_a_worker_host_that_cannot_see_a_folder_never_empties_it_even_on_a_new_site(
        tmp_path: Path, database: DatabaseConfig, conn: Connection) -> None:
    """A worker host started first on a new site, its share not mounted: its root is recorded at first sight (the
    database knows no folder yet to prove otherwise). Folders queued by the watcher host are then not visible to
    it: it releases them untouched (still queued, nothing emptied, logged once) and the host that sees them
    imports them. A queued folder that really is gone is queued as a removal by the catch-up of a host whose root
    is itself, and only then loses its rows."""
    share, unmounted = tmp_path / "share", tmp_path / "worker-c"
    share.mkdir()
    unmounted.mkdir()
    watcher = make_config(database, {"incoming": share})
    worker_c = on_host(make_config(database, {"incoming": unmounted}), "host-c")
    assert roots.check(conn, "host-c", worker_c.watches[0]).itself  # first sight: nothing to compare with yet
    drop_study(share, "S1", 3)
    batches.enqueue(conn, "incoming", "S1")
    not_here = NotHere()  # what worker C keeps from one claim to the next
    assert import_next(conn, worker_c, InlineParser(), not_here=not_here) is None  # released, passed over
    assert not_here.batches("host-c") == [scalar_int(conn, "SELECT id FROM batch WHERE path = 'S1'")]
    assert scalar(conn, "SELECT status FROM batch WHERE path = 'S1'") == "queued"
    assert scalar(conn, "SELECT imports FROM batch WHERE path = 'S1'") == 0
    assert import_next(conn, watcher, InlineParser()) is not None  # the host that sees it imports it
    assert scalar(conn, "SELECT status || ':' || instances FROM batch WHERE path = 'S1'") == "done:3"
    drop_study(share, "S2", 2)
    batches.enqueue(conn, "incoming", "S2")
    shutil.rmtree(share / "S2")  # deleted while queued (say the watcher was down): no host can see it
    assert import_next(conn, watcher, InlineParser()) is None  # released, not emptied
    result = scan_roots(database, {"incoming": watcher.watches[0]}, watcher.watcher.host_name,
                        watcher.watcher.is_ignored, 0.0, set())
    assert result.gone == [("incoming", "S2")]  # the host whose root is itself: gone, a removal
    assert batches.enqueue_known(conn, "incoming", "S2", host=watcher.watcher.host_name) is not None
    assert import_next(conn, watcher, InlineParser()) is not None
    assert scalar(conn, "SELECT status FROM batch WHERE path = 'S2'") == "empty"


def test_a_share_mounted_on_a_root_recorded_before_it_was_mounted_is_itself() -> None:
    """A host that first saw its root as a plain directory (the share not mounted yet, nothing recorded to tell)
    takes the share mounted there later as the root, though its inode is another: the identity is re-recorded."""
    before = roots.Identity(device=2049, inode=1234, mount_point=False, fs_type="ext4", fs_source="/dev/vda",
                            fs_id=7)
    mounted = roots.Identity(device=53, inode=2, mount_point=True, fs_type="nfs4", fs_source="server:/dicom",
                             fs_id=9)
    verdict = roots.judge("incoming", before, mounted)
    assert verdict.itself and verdict.record == mounted
    assert not roots.judge("incoming", mounted, before).itself  # and unmounted again: lost
    hiding = roots.judge("incoming", before, mounted, proven=True)  # the plain directory held folders: hidden now
    assert not hiding.itself and "over the folders it held" in (hiding.reason or "")


def test_a_file_system_mounted_over_a_root_that_held_folders_is_lost_until_adopted(
        tmp_path: Path, database: DatabaseConfig, conn: Connection) -> None:
    """A plain-directory root whose folders were imported, then a file system mounted on it: its folders are
    hidden, not deleted. Lost, no row removed, until adopt-root; then the mounted one is the root."""
    root = tmp_path / "incoming"
    root.mkdir()
    config = make_config(database, {"incoming": root})
    watch = config.watches[0]
    assert roots.check(conn, HOST, watch).itself
    drop_study(root, "A", 2)
    batches.enqueue(conn, "incoming", "A", host=HOST)
    assert import_next(conn, config, InlineParser(), RootGuard(config, every=0)) is not None
    with unmounted_at_end(root):
        mount("-t", "tmpfs", "sendit-test-over", str(root))
        verdict = roots.check(conn, HOST, watch)
        assert not verdict.itself and "over the folders it held" in (verdict.reason or "")
        result = scan_roots(database, {"incoming": watch}, HOST, lambda name: False, 0.0, set())
        assert result.gone == [] and "incoming" in result.lost
        assert rows_by_folder(conn)["A"] == ("done", 2, 1)
        roots.adopt(conn, HOST, watch, force=True)  # the operator: the mounted one is the root now
        result = scan_roots(database, {"incoming": watch}, HOST, lambda name: False, 0.0, set())
        assert result.gone == [("incoming", "A")]
    assert (root / "A").is_dir()  # it was there all along


def test_a_directory_bind_mounted_on_a_root_after_the_start_is_watched(
        tmp_path: Path, database: DatabaseConfig, conn: Connection) -> None:
    """A new site's root, an empty plain directory, with a directory of the same file system bind-mounted on it
    after the service started (same device, another inode): the service watches the mounted one, and a folder
    renamed into it is imported by its event (the catch-up interval is an hour)."""
    root, store = tmp_path / "incoming", tmp_path / "store"
    root.mkdir()
    store.mkdir()
    config = write_config(tmp_path / "watcher.conf", database, {"incoming": root}, rescan_interval=3600)
    service = ServiceProcess(config, tmp_path)
    with unmounted_at_end(root):
        try:
            service.wait_ready()
            wait_until(lambda: "catch-up scan:" in service.log, what="the catch-up scan at start")
            mount("--bind", str(store), str(root))
            wait_until(lambda: "watching it again" in service.log, timeout=20, what="the mounted directory watched")
            make_study(root / "A.tmp", 2)
            (root / "A.tmp").rename(root / "A")
            wait_until(lambda: rows_by_folder(conn).get("A") == ("done", 2, 1), what="A imported")
        finally:
            service.kill()


def test_a_host_whose_root_never_showed_it_a_known_folder_calls_nothing_gone(
        tmp_path: Path, database: DatabaseConfig, conn: Connection) -> None:
    """Host B started first on a new site with its share not mounted: its root, an empty plain directory, is
    recorded at first sight (nothing imported yet to tell). Host A then imports from the share. B's catch-up
    calls none of A's folders gone (its root never showed it one; copies of them under their names prove nothing:
    their files are not as recorded), until the share mounted there shows them to B; from then on a folder B saw
    that goes missing from B's root is gone (an outside attack: B emptied A's folders, over and over)."""
    share, b_root = tmp_path / "share", tmp_path / "host-b"
    share.mkdir()
    b_root.mkdir()
    a = make_config(database, {"incoming": share})
    b = on_host(make_config(database, {"incoming": b_root}), "host-b")
    assert roots.check(conn, "host-b", b.watches[0]).itself  # recorded: nothing to compare with
    for name in ("S1", "S2"):
        drop_study(share, name, 2)
        import_folder(conn, a, share / name)
    drop_study(share, "S3", 1)
    batches.enqueue(conn, "incoming", "S3", host="test-host")  # queued by A, not imported yet

    def b_scan() -> list[tuple[str, str]]:
        result = scan_roots(database, {"incoming": b.watches[0]}, "host-b", b.watcher.is_ignored, 0.0, set())
        assert result.error is None and result.lost == {}
        return sorted((root, str(name)) for root, name in result.gone)

    assert b_scan() == []
    assert scalar(conn, "SELECT proven FROM root_identity WHERE host = 'host-b'") is False
    for name in ("S1", "S2", "S3"):  # copies under the same names, on B's own disk
        shutil.copytree(share / name, b_root / name)
    assert b_scan() == []
    assert scalar(conn, "SELECT proven FROM root_identity WHERE host = 'host-b'") is False
    for name in ("S1", "S2", "S3"):
        shutil.rmtree(b_root / name)
    with unmounted_at_end(b_root):
        mount("--bind", str(share), str(b_root))  # the share mounted on B at last
        assert b_scan() == []
        assert scalar(conn, "SELECT proven FROM root_identity WHERE host = 'host-b'") is True
        shutil.rmtree(share / "S1")
        assert b_scan() == [("incoming", "S1")]


def test_a_namesake_on_a_host_without_the_share_proves_nothing_and_removes_nothing(
        tmp_path: Path, database: DatabaseConfig, conn: Connection) -> None:
    """Host A imports from the share; host B's share is not mounted. A folder written on B under the name of one
    of A's folders (other files) does not make B's root the share: it stays lost, B's catch-up calls nothing gone,
    and the deletion of that namesake on B (as B's watcher would report it) removes none of A's rows, by event or
    by a worker of B (an outside attack: B emptied A's batch, announced `empty`, while A's files were intact)."""
    share, b_root = tmp_path / "share", tmp_path / "host-b"
    share.mkdir()
    b_root.mkdir()
    a = make_config(database, {"incoming": share})
    b = on_host(make_config(database, {"incoming": b_root}), "host-b")
    assert roots.check(conn, "test-host", a.watches[0]).itself  # A's first sight
    for name in ("S1", "S2", "S3"):
        drop_study(share, name, 2)
        import_folder(conn, a, share / name)
    assert not roots.check(conn, "host-b", b.watches[0]).itself  # none of A's folders here: lost at first sight
    make_study(b_root / "S2", 3)  # the namesake
    assert not roots.check(conn, "host-b", b.watches[0]).itself
    result = scan_roots(database, {"incoming": b.watches[0]}, "host-b", b.watcher.is_ignored, 0.0, set())
    assert result.gone == [] and "incoming" in result.lost
    shutil.rmtree(b_root / "S2")
    assert batches.enqueue_known(conn, "incoming", "S2", host="host-b") == 0  # B never saw A's S2: nothing queued
    assert import_next(conn, b, InlineParser(), RootGuard(b, every=0)) is None
    assert {f: r[:2] for f, r in rows_by_folder(conn).items()} == {name: ("done", 2) for name in ("S1", "S2", "S3")}


def test_a_folder_a_proven_host_never_saw_is_gone_only_for_the_hosts_that_saw_it(
        tmp_path: Path, database: DatabaseConfig, conn: Connection) -> None:
    """Two hosts with the share mounted. A folder imported by A and deleted before B ever listed it (as an NFS
    client's stale directory cache may hide a new folder from B for a minute): B's catch-up does not call it gone
    and B's workers do not take its removal; A's catch-up does, and A removes its rows."""
    share, b_root = tmp_path / "share", tmp_path / "host-b"
    share.mkdir()
    b_root.mkdir()
    a = make_config(database, {"incoming": share})
    b = on_host(make_config(database, {"incoming": b_root}), "host-b")
    assert roots.check(conn, "test-host", a.watches[0]).itself  # A's first sight
    drop_study(share, "S1", 2)
    import_folder(conn, a, share / "S1")
    with unmounted_at_end(b_root):
        mount("--bind", str(share), str(b_root))
        scanned = scan_roots(database, {"incoming": b.watches[0]}, "host-b", b.watcher.is_ignored, 0.0, set())
        assert scanned.lost == {} and scanned.gone == []  # B has seen S1 now, as recorded
        assert scalar(conn, "SELECT proven FROM root_identity WHERE host = 'host-b'") is True
        assert scalar(conn, "SELECT seen_on FROM batch WHERE path = 'S1'") == ["test-host", "host-b"]
        drop_study(share, "S4", 2)
        import_folder(conn, a, share / "S4")
        shutil.rmtree(share / "S4")
        shutil.rmtree(share / "S1")
        scanned = scan_roots(database, {"incoming": b.watches[0]}, "host-b", b.watcher.is_ignored, 0.0, set())
        assert scanned.gone == [("incoming", "S1")]  # S1 B saw; S4 it never did
        assert batches.enqueue_known(conn, "incoming", "S4", host="host-b") == 0
        scanned = scan_roots(database, {"incoming": a.watches[0]}, "test-host", a.watcher.is_ignored, 0.0, set())
        assert sorted(scanned.gone) == [("incoming", "S1"), ("incoming", "S4")]
        for _, name in scanned.gone:
            assert batches.enqueue_known(conn, "incoming", str(name), host="test-host")
        for _ in range(2):  # B's root has shown it is the share: B may carry out the removals A queued
            assert import_next(conn, b, InlineParser(), RootGuard(b, every=0)) is not None
        assert {f: r[:2] for f, r in rows_by_folder(conn).items()} == {"S1": ("empty", 0), "S4": ("empty", 0)}
        roots.adopt(conn, "test-host", a.watches[0])  # A's root vouched for as the share (by its operator)
        drop_study(share, "S5", 2)  # imported by A long ago (longer than any share's cache), deleted since
        import_folder(conn, a, share / "S5")
        conn.execute("UPDATE batch SET finished_at = finished_at - interval '1 hour' WHERE path = 'S5'")
        conn.commit()
        shutil.rmtree(share / "S5")
        scanned = scan_roots(database, {"incoming": b.watches[0]}, "host-b", b.watcher.is_ignored, 0.0, set())
        assert scanned.gone == [("incoming", "S5")]  # never seen by B, but recorded too long ago to be hidden


def test_a_host_whose_root_is_not_proven_never_imports_another_hosts_folder_of_that_name(
        tmp_path: Path, database: DatabaseConfig, conn: Connection) -> None:
    """Host B started first on a new site, its share not mounted: its root is itself but not proven. A folder
    written on B under the name of one A imported (a namesake, or a `cp -a` copy) is queued by B's watcher, but B
    neither reads it (released, left to A) nor counts as having seen it; its deletion on B removes nothing; read
    by hand on B it is refused; A's folder keeps its rows (an outside attack: B imported its namesake over A's
    rows, which proved its root, then emptied them)."""
    share, b_root = tmp_path / "share", tmp_path / "host-b"
    share.mkdir()
    b_root.mkdir()
    a = make_config(database, {"incoming": share})
    b = on_host(make_config(database, {"incoming": b_root}), "host-b")
    assert roots.check(conn, "host-b", b.watches[0]).itself  # first sight, nothing to compare with: itself
    assert roots.check(conn, "test-host", a.watches[0]).itself
    drop_study(share, "S1", 3)
    import_folder(conn, a, share / "S1")
    make_study(b_root / "S1", 2)  # the namesake, on B's own disk
    assert batches.enqueue(conn, "incoming", "S1", host="host-b") is not None  # as B's watcher queues it
    assert scalar(conn, "SELECT seen_on FROM batch WHERE path = 'S1'") == ["test-host"]
    not_here = NotHere()
    assert import_next(conn, b, InlineParser(), RootGuard(b, every=0), not_here=not_here) is None  # released
    assert not_here.batches("host-b") == [scalar_int(conn, "SELECT id FROM batch WHERE path = 'S1'")]
    written = write_config(tmp_path / "b.conf", database, {"incoming": b_root}, host="host-b")
    code, out = run_cli(written, "import", str(b_root / "S1"))
    assert code == 1 and "has not shown host host-b that it is their share" in out
    assert scalar(conn, "SELECT proven FROM root_identity WHERE host = 'host-b'") is False
    shutil.rmtree(b_root / "S1")
    assert batches.enqueue_known(conn, "incoming", "S1", host="host-b") == 0
    outcome = import_next(conn, a, InlineParser(), RootGuard(a, every=0))  # A reads its own S1: unchanged
    assert isinstance(outcome, Result) and outcome.unchanged
    assert rows_by_folder(conn) == {"S1": ("done", 3, 1)}


def test_a_host_that_imports_only_its_own_folders_never_acts_on_the_shares(
        tmp_path: Path, database: DatabaseConfig, conn: Connection) -> None:
    """Host B started first on an empty plain root (its share not mounted) and imports a study only it has: its
    own import shows it nothing of the share. However old A's folders are, B's catch-up calls none of them gone,
    B takes none of their removals, and a namesake read by hand on B is refused (an outside attack: B's own
    import proved its root, and B emptied every folder older than 10 minutes)."""
    share, b_root = tmp_path / "share", tmp_path / "host-b"
    share.mkdir()
    b_root.mkdir()
    a = make_config(database, {"incoming": share})
    b = on_host(make_config(database, {"incoming": b_root}), "host-b")
    assert roots.check(conn, "host-b", b.watches[0]).itself
    assert roots.check(conn, "test-host", a.watches[0]).itself
    for name in ("S1", "S2"):
        drop_study(share, name, 2)
        import_folder(conn, a, share / name)
    drop_study(b_root, "L1", 1)  # a study only B has
    assert batches.enqueue(conn, "incoming", "L1", host="host-b") is not None
    assert import_next(conn, b, InlineParser(), RootGuard(b, every=0)) is not None
    conn.execute("UPDATE batch SET finished_at = finished_at - interval '1 hour'")  # older than any cache
    conn.commit()
    result = scan_roots(database, {"incoming": b.watches[0]}, "host-b", b.watcher.is_ignored, 0.0, set())
    assert result.gone == [] and result.unseen == 2 and result.lost == {}
    assert scalar(conn, "SELECT shared FROM root_identity WHERE host = 'host-b'") is False
    for name in ("S1", "S2"):  # as A's catch-up would queue them, were they gone
        batches.enqueue_known(conn, "incoming", name, host="test-host")
    assert import_next(conn, b, InlineParser(), RootGuard(b, every=0)) is None  # not B's to carry out
    make_study(b_root / "S1", 3)
    written = write_config(tmp_path / "b.conf", database, {"incoming": b_root}, host="host-b")
    assert run_cli(written, "import", str(b_root / "S1"))[0] == 1
    conn.execute("UPDATE batch SET seen_on = '{}' WHERE path = 'S1'")  # as an earlier version's import leaves it
    conn.commit()
    assert run_cli(written, "import", str(b_root / "S1"))[0] == 1  # rows and a host that read them: not anyone's
    assert {f: r[:2] for f, r in rows_by_folder(conn).items()} == {
        "S1": ("queued", 2), "S2": ("queued", 2), "L1": ("done", 1)}
    roots.adopt(conn, "test-host", a.watches[0], force=True)  # A's root: the share (L1, B's, is not there)
    result = scan_roots(database, {"incoming": a.watches[0]}, "test-host", a.watcher.is_ignored, 0.0, set())
    assert result.gone == [] and result.unseen == 1  # L1, B's alone, imported by a host not of the share


def test_neither_a_legacy_fingerprint_nor_a_link_into_a_lost_root_gets_past_the_checks(
        share: tuple[Path, Path], tmp_path: Path, database: DatabaseConfig, conn: Connection) -> None:
    """A folder stamped by 1.0/1.1 (no ctimes), copied with `cp -a` onto a host without the share, does not make
    that host's root the share; and `import` of a folder of a lost root through a symbolic link is refused as
    by its real path."""
    store, root = share
    config = write_config(tmp_path / "watcher.conf", database, {"incoming": root})
    assert roots.check(conn, HOST, make_config(database, {"incoming": root}).watches[0]).itself
    drop_study(root, "S1", 2)
    assert run_cli(config, "import", str(root / "S1"))[0] == 0
    conn.execute("UPDATE batch SET fingerprint = %s WHERE path = 'S1'",
                 (legacy_fingerprint(walk(str(root / "S1"))),))
    conn.commit()
    g_root = tmp_path / "host-g"
    g_root.mkdir()
    subprocess.run(["cp", "-a", str(root / "S1"), str(g_root / "S1")], check=True)
    g = on_host(make_config(database, {"incoming": g_root}), "host-g")
    assert not roots.check(conn, "host-g", g.watches[0]).itself
    unmount(root)
    make_study(root / "S1", 1)  # a namesake in the empty mount point
    link = tmp_path / "link-to-root"
    link.symlink_to(root)
    code, out = run_cli(config, "import", str(link / "S1"))
    assert code == 1 and "is lost on host" in out
    assert rows_by_folder(conn) == {"S1": ("done", 2, 1)}
    shutil.rmtree(root / "S1")
    mount("--bind", str(store), str(root))


def test_a_folder_read_by_hand_into_a_lost_root_is_refused(
        share: tuple[Path, Path], tmp_path: Path, database: DatabaseConfig, conn: Connection) -> None:
    """`sendit-watcher import` of a folder under a root that is lost on this host (its share unmounted, a
    namesake in the mount point) reads nothing: the share's rows stay."""
    store, root = share
    config = write_config(tmp_path / "watcher.conf", database, {"incoming": root})
    assert roots.check(conn, HOST, make_config(database, {"incoming": root}).watches[0]).itself
    drop_study(root, "S1", 3)
    assert run_cli(config, "import", str(root / "S1"))[0] == 0
    unmount(root)
    make_study(root / "S1", 2)  # a namesake in the empty mount point
    code, out = run_cli(config, "import", str(root / "S1"))
    assert code == 1 and "is lost on host" in out and "not mounted" in out
    assert rows_by_folder(conn) == {"S1": ("done", 3, 1)}
    shutil.rmtree(root / "S1")
    mount("--bind", str(store), str(root))


def test_adopt_root_refuses_a_root_that_looks_like_an_unmounted_share_unless_forced(
        share: tuple[Path, Path], tmp_path: Path, database: DatabaseConfig, conn: Connection,
        capsys: pytest.CaptureFixture[str]) -> None:
    """adopt-root of an unmounted share's mount point (recorded as a mount point, not one now; or none of the
    folders imported last there) would remove every row this host saw: refused, saying why, unless --force."""
    store, root = share
    config = write_config(tmp_path / "watcher.conf", database, {"incoming": root})
    assert roots.check(conn, HOST, make_config(database, {"incoming": root}).watches[0]).itself  # a mount point
    drop_study(root, "S1", 2)
    assert run_cli(config, "import", str(root / "S1"))[0] == 0
    unmount(root)
    capsys.readouterr()
    code, out = run_cli(config, "adopt-root", "incoming")
    error = capsys.readouterr().err
    assert code == 1 and "it was a mount point at first sight and is not one now" in error and "--force" in error
    assert scalar(conn, "SELECT mount_point FROM root_identity WHERE host = %s", HOST) is True  # not adopted
    mount("--bind", str(store), str(root))
    shutil.rmtree(root / "S1")
    unmount(root)
    code, out = run_cli(config, "adopt-root", "--force", "incoming")
    assert code == 0 and "adopted" in out
    assert scalar(conn, "SELECT mount_point FROM root_identity WHERE host = %s", HOST) is False
    mount("--bind", str(store), str(root))


def test_two_services_a_namesake_written_and_deleted_on_the_host_without_the_share_changes_nothing(
        share: tuple[Path, Path], tmp_path: Path, database: DatabaseConfig, conn: Connection) -> None:
    """The outside attack, as it was run: services on hosts A and B share a database; B's share is not mounted
    (its root a plain directory). A folder written on B under the name of one of A's, then `rm -rf` there: B's
    root stays lost, and A's rows stay, announced nothing new; A goes on importing."""
    store, root_a = share
    root_b = tmp_path / "b-incoming"
    root_b.mkdir()
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    a = ServiceProcess(write_config(tmp_path / "a.conf", database, {"incoming": root_a}, workers=1, host="host-a",
                                    rescan_interval=1), tmp_path / "a")
    b: ServiceProcess | None = None
    try:
        a.wait_ready()
        for name in ("S1", "S2", "S3"):
            drop_study(root_a, name, 2)
        wait_until(lambda: {f: r[:2] for f, r in rows_by_folder(conn).items()}
                   == {name: ("done", 2) for name in ("S1", "S2", "S3")}, what="S1-S3 imported on A")
        seq = scalar_int(conn, "SELECT max(finished_seq) FROM batch")
        b = ServiceProcess(write_config(tmp_path / "b.conf", database, {"incoming": root_b}, workers=1,
                                        host="host-b", rescan_interval=1), tmp_path / "b")
        b.wait_ready()
        b.notify.wait_for(lambda line: lost_status(line, "incoming"), 20)
        make_study(root_b / "S2.tmp", 3)
        (root_b / "S2.tmp").rename(root_b / "S2")  # a finished folder of A's name, on B
        time.sleep(RootGuard.EVERY + 2)  # B's checks and catch-up scans (every second) look at it
        shutil.rmtree(root_b / "S2")
        time.sleep(RootGuard.EVERY + 2)
        assert lost_status([line for line in b.notify.fields() if line.startswith("STATUS=")][-1], "incoming")
        drop_study(root_a, "S4", 1)
        wait_until(lambda: rows_by_folder(conn).get("S4", ("", 0, 0))[:2] == ("done", 1), what="S4 imported on A")
    finally:
        a.kill()
        if b is not None:
            b.kill()
    assert {f: r[:2] for f, r in rows_by_folder(conn).items()} == {
        "S1": ("done", 2), "S2": ("done", 2), "S3": ("done", 2), "S4": ("done", 1)}
    assert [path for (path,) in conn.execute("SELECT path FROM batch WHERE finished_seq > %s", (seq,))] == ["S4"]
    assert "is back (itself again)" not in b.log


# --- a root closed to the service -----------------------------------------------------------------------------


@pytest.fixture
def open_top() -> Iterator[Path]:
    """A world-traversable directory (pytest's tmp_path is closed to every user but root)."""
    top = Path(tempfile.mkdtemp(prefix="sendit-closed-", dir="/var/tmp"))
    top.chmod(0o755)
    yield top
    shutil.rmtree(top, ignore_errors=True)


def as_user(user: str) -> list[str]:
    """The command that runs Debian's python3 as ``user`` without supplementary groups (root reads anything: a
    root closed to the service needs a service that is not root; the test's virtualenv under /root is closed)."""
    return ["setpriv", f"--reuid={user}", f"--regid={pwd.getpwnam(user).pw_gid}", "--clear-groups", "/usr/bin/python3"]


def test_a_root_closed_to_the_service_at_start_is_lost_not_fatal_and_picked_up_once_readable(
        open_top: Path, database: DatabaseConfig, conn: Connection) -> None:
    """An unmounted 0700 mount point, or a directory of another user: the service used to exit 78 (and stay
    down, RestartPreventExitStatus=78). It is a lost root instead: said once with the fix, LOST ROOT in STATUS
    and `status`, the other roots served, none of its rows removed, and watched again once readable."""
    incoming, closed = open_top / "incoming", open_top / "closed"
    incoming.mkdir()
    closed.mkdir()
    config = write_config(open_top / "watcher.conf", database, {"incoming": incoming, "closed": closed})
    config.chmod(0o644)
    first = ServiceProcess(config, open_top, command=as_user("postgres"))
    try:
        first.wait_ready()
        drop_study(closed, "X", 2)
        wait_until(lambda: rows_by_folder(conn).get("X") == ("done", 2, 1), what="X imported while readable")
    finally:
        assert first.stop() == 0
    closed.chmod(0o700)  # root's own: closed to the service's user
    second = ServiceProcess(config, open_top, command=as_user("postgres"))
    try:
        second.wait_ready()
        assert second.process.poll() is None
        line = second.notify.wait_for(lambda line: lost_status(line, "closed"), 15)
        assert "not readable by user postgres" in line
        wait_until(lambda: "is lost: not readable" in second.log, 15, "the lost root said in the log")
        drop_study(incoming, "A", 1)
        wait_until(lambda: rows_by_folder(conn).get("A") == ("done", 1, 1), what="the other root served")
        said = [line for line in second.log.splitlines() if "is lost: not readable" in line]
        assert len(said) == 1 and f"watch root {closed} ([watch:closed])" in said[0], said
        assert "give user postgres, uid" in said[0] and "read and search access" in said[0]
        wait_until(lambda: "catch-up scan:" in second.log, what="the catch-up scan at start")
        code, out = run_cli(config, "status", "--json")
        assert code == 0 and [r["root"] for r in json.loads(out)["lost_roots"]] == ["closed"]
        assert rows_by_folder(conn)["X"] == ("done", 2, 1)  # nothing of it removed
        closed.chmod(0o755)
        second.notify.wait_for(lambda line: line.startswith("STATUS=") and "LOST ROOT" not in line, 20)
        drop_study(closed, "Y", 1)
        wait_until(lambda: rows_by_folder(conn).get("Y") == ("done", 1, 1), what="Y imported once readable")
        assert rows_by_folder(conn)["X"] == ("done", 2, 1)
        assert "Traceback" not in second.log
        told = [line for line in second.log.splitlines() if "[watch:closed]" in line and not line.startswith("DEBUG")]
        assert len(told) == 3, told  # at start (the watch), lost (the verdict, with its fix), back: once each
        assert "is lost: not readable" in told[1] and "is back (itself again)" in told[2], told
    finally:
        closed.chmod(0o755)
        second.kill()


def test_a_folder_a_producer_closed_with_umask_0077_fails_naming_the_permission_and_the_fix(
        open_top: Path, tmp_path: Path, database: DatabaseConfig, conn: Connection) -> None:
    """A producer with umask 0077 makes the folder itself 0700: nothing in it can be read, so its batch fails
    (not a rejection per file): the reason names the permission, the service's user and the fix; once the
    operator opens it, `retry` imports it."""
    incoming = open_top / "incoming"
    incoming.mkdir()
    make_study(tmp_path / "P", 2)
    config = write_config(open_top / "watcher.conf", database, {"incoming": incoming})
    config.chmod(0o644)
    service = ServiceProcess(config, open_top, command=as_user("postgres"))
    try:
        service.wait_ready()
        subprocess.run(["sh", "-c", f"umask 0077 && cp -r {tmp_path / 'P'} {incoming / 'P.tmp'} && "
                                    f"mv {incoming / 'P.tmp'} {incoming / 'P'}"], check=True)
        assert (incoming / "P").stat().st_mode & 0o777 == 0o700
        wait_until(lambda: rows_by_folder(conn).get("P", ("",))[0] == "failed", what="P failed")
        batch, error = conn.execute("SELECT id, last_error FROM batch WHERE path = 'P'").fetchone()
        conn.rollback()
        assert f"folder {incoming / 'P'} is not readable by this service (user postgres, uid" in error, error
        assert "Permission denied" in error and "umask of 0077" in error, error
        assert f"then `sendit-watcher retry {batch}`" in error, error
        subprocess.run(["chmod", "-R", "go+rX", str(incoming / "P")], check=True)
        assert run_cli(config, "retry", str(batch))[0] == 0
        wait_until(lambda: rows_by_folder(conn).get("P", ())[:2] == ("done", 2), what="P imported after the retry")
        assert service.log.count("recorded at first sight") == 1  # by the first of the processes that saw it
    finally:
        service.kill()
