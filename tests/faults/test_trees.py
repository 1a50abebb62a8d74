"""What arrives in the roots: nested studies copied in by real programs, trees
deeper than any recursion limit, folders swapped for symbolic links, names that are not UTF-8.

They run the service or the command line as real processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sendit_watcher.config import DatabaseConfig
from sendit_watcher.db import Connection
from tests.fix_service import REPO, ServiceProcess
from tests.helpers import (
    batch_rows,
    done,
    drop_study,
    importing_host,
    make_study,
    scalar,
    scalar_int,
    wait_until,
    write_config,
)


def status_lines(service: ServiceProcess) -> int:
    return sum(1 for line in service.notify.fields() if line.startswith("STATUS="))


def still_serving(service: ServiceProcess, conn: Connection, root: Path, name: str) -> None:
    """The loop is alive: a folder dropped now is imported and a new STATUS line follows it."""
    before = status_lines(service)
    drop_study(root, name, 2)
    wait_until(done(conn, name, 2), timeout=30, what=f"{name} imported after the others; log tail:\n"
                                                     f"{service.log[-3000:]}")
    wait_until(lambda: status_lines(service) > before, timeout=10, what="a new STATUS line")
    assert service.process.poll() is None, "the service exited"


def cli(config: Path, *args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sendit_watcher", "--config", str(config), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


# --- item 0: nested studies copied in under their final names --------------------------------------------------


def nested_study(study: Path, depth: int) -> int:
    """study/series/.../files, ``depth`` folder levels (1 = files directly in the study folder): two files at the
    bottom and one on every level above it. Returns the number of files."""
    folder, files = study, 0
    for level in range(depth):
        if level:
            folder = folder / f"series{level}"
        count = 2 if level == depth - 1 else 1
        make_study(folder, count)
        files += count
    return files


@pytest.mark.parametrize("program", ["cp", "rsync", "mv"])
def test_nested_study_copied_under_its_final_name_settles_and_imports(
        program: str, start_service: Callable[..., ServiceProcess], conn: Connection, incoming: Path,
        tmp_path: Path) -> None:
    """`cp -r`, `rsync -a` and `mv` from another file system, depths 1 to 5."""
    service = start_service(settle_seconds=1)
    source = tmp_path / "source"
    source.mkdir()
    mounted = False
    try:
        if program == "mv":  # from another file system: mv copies, then deletes
            subprocess.run(["mount", "-t", "tmpfs", "none", str(source)], check=True)
            mounted = True
        expected = {}
        for depth in range(1, 6):
            name = f"{program}-depth{depth}"
            expected[name] = nested_study(source / name, depth)
            command = {"cp": ["cp", "-r"], "rsync": ["rsync", "-a"], "mv": ["mv"]}[program]
            subprocess.run([*command, str(source / name), f"{incoming}/"], check=True)
            assert (incoming / name).is_dir()
        for name, files in expected.items():
            wait_until(done(conn, name, files), timeout=30,
                       what=f"{name} imported ({files} files); batches {batch_rows(conn)}; log tail:\n"
                            f"{service.log[-3000:]}")
        rows = dict(conn.execute("SELECT path, files FROM batch").fetchall())
        conn.rollback()
        assert {name: rows.get(name) for name in expected} == expected
        assert scalar(conn, "SELECT count(*) FROM rejected_file") == 0
        still_serving(service, conn, incoming, f"later-{program}")
    finally:
        if mounted:
            subprocess.run(["umount", str(source)], check=False)


# --- item 6: deep trees ---------------------------------------------------------------------------------------


def deep_chain(top: Path, levels: int) -> None:
    """``levels`` nested one-letter folders below ``top`` with a DICOM file at the bottom (built iteratively)."""
    folder = top
    folder.mkdir()
    for _ in range(levels):
        folder = folder / "d"
        os.mkdir(folder)
    make_study(folder, 1)


def test_deep_trees_fail_nothing_and_catch_up_keeps_working(start_service: Callable[..., ServiceProcess],
                                                            conn: Connection, incoming: Path, tmp_path: Path,
                                                            figures: Callable[[str], None]) -> None:
    """600 levels (renamed in: queued at once) and 1,100 levels (copied in: settles)."""
    service = start_service(settle_seconds=1, rescan_interval=2)
    source = tmp_path / "deep-source"
    source.mkdir()
    try:
        deep_chain(incoming / "DEEP600.tmp", 600)
        (incoming / "DEEP600.tmp").rename(incoming / "DEEP600")
        deep_chain(source / "DEEP1100", 1100)
        subprocess.run(["cp", "-r", str(source / "DEEP1100"), f"{incoming}/"], check=True)
        finished = ("done", "empty", "failed")
        wait_until(lambda: all(batch_rows(conn).get(n, ("",))[0] in finished for n in ("DEEP600", "DEEP1100")),
                   timeout=30, what=f"both deep folders finished; batches {batch_rows(conn)}; log tail:\n"
                                    f"{service.log[-3000:]}")
        still_serving(service, conn, incoming, "after-deep")
        failed_scans = service.log.count("catch-up scan failed")
        # Three rescan intervals in which a catch-up scan may not fail again (asserting an absence: a sleep).
        time.sleep(6.5)
        failed_scans_later = service.log.count("catch-up scan failed")
        rows = {str(p): (str(s), int(f), int(i), int(r), e) for p, s, f, i, r, e in conn.execute(
            "SELECT path, status, files, instances, rejected, last_error FROM batch"
            " WHERE path LIKE 'DEEP%'").fetchall()}
        reasons = conn.execute("SELECT b.path, r.reason FROM rejected_file r JOIN batch b ON b.id = r.batch"
                               " WHERE b.path LIKE 'DEEP%'").fetchall()
        conn.rollback()
        figures(f"deep trees: {rows}, rejections {sorted(set(reasons))}, catch-up failures {failed_scans_later}")
        for name in ("DEEP600", "DEEP1100"):
            status, files, instances, rejected, error = rows[name]
            assert status in ("done", "empty"), f"{name} {status}: {error}"
            assert instances + rejected >= 1, f"{name}: the bottom file is neither an instance nor a rejection"
        assert all(reason for _, reason in reasons)
        assert failed_scans_later <= 1 and failed_scans_later == failed_scans, \
            f"catch-up scans keep failing ({failed_scans_later} times)"
        assert service.process.poll() is None
    finally:
        service.kill()
        subprocess.run(["rm", "-rf", str(source), str(incoming / "DEEP600"), str(incoming / "DEEP1100")],
                       check=False)


# --- item 7: symbolic links swapped in -------------------------------------------------------------------------


def test_a_queued_folder_swapped_for_a_symlink_reads_nothing_outside(start_service: Callable[..., ServiceProcess],
                                                                     conn: Connection, incoming: Path,
                                                                     tmp_path: Path) -> None:
    """Queued, then replaced by `ln -s /elsewhere NAME` before a worker claims it."""
    service = start_service(workers=1)
    elsewhere = tmp_path / "elsewhere"
    outside = make_study(elsewhere, 1)
    drop_study(incoming, "BIG", 3000)  # keeps the one worker busy
    wait_until(lambda: importing_host(conn) is not None, timeout=30, what="BIG being imported")
    drop_study(incoming, "SWAP", 2)
    wait_until(lambda: batch_rows(conn).get("SWAP", ("",))[0] == "queued", timeout=10, what="SWAP queued")
    shutil.rmtree(incoming / "SWAP")
    os.symlink(elsewhere, incoming / "SWAP")
    assert batch_rows(conn)["BIG"][0] != "done", "BIG finished too early: SWAP may have been claimed before the swap"
    wait_until(lambda: batch_rows(conn).get("BIG", ("",))[0] == "done"
               and batch_rows(conn).get("SWAP", ("queued",))[0] != "queued", timeout=120,
               what=f"BIG and SWAP finished; batches {batch_rows(conn)}")
    status, instances, error = conn.execute(
        "SELECT status, instances, coalesce(last_error, '') FROM batch WHERE path = 'SWAP'").fetchone() or ("", 0, "")
    symlink_rejections = scalar(conn, "SELECT count(*) FROM rejected_file r JOIN batch b ON b.id = r.batch"
                                      " WHERE b.path = 'SWAP' AND r.reason = 'symlink'")
    assert scalar(conn, "SELECT count(*) FROM instance WHERE sop_instance_uid = ANY(%s)", outside) == 0, \
        "a file outside the root was read through the symlink"
    assert instances == 0
    assert status in ("failed", "empty"), (status, error)
    # The folder was deleted (its batch became a removal, which reads nothing) or, when the swap came between two
    # events, the import found a link where its folder was: then the reason says so.
    names_the_symlink = any(word in error.lower() for word in ("symlink", "symbolic link")) or bool(symlink_rejections)
    assert status == "empty" or names_the_symlink, f"no reason names the symlink: {status} {error!r}"
    assert service.process.poll() is None


def test_a_subfolder_swapped_for_a_symlink_mid_import_reads_nothing_outside(tmp_path: Path, database: DatabaseConfig,
                                                                            conn: Connection,
                                                                            figures: Callable[[str], None]) -> None:
    """An intermediate sub-folder replaced by a symlink while `import` runs; either outcome is
    fine as long as nothing outside the folder is read."""
    folder = tmp_path / "TREE"
    for series in range(12):
        make_study(folder / f"s{series:02d}", 250)
    elsewhere = tmp_path / "elsewhere"
    outside = make_study(elsewhere, 250)  # the same file names as in every series folder
    config = write_config(tmp_path / "watcher.conf", database, {})
    process = subprocess.Popen([sys.executable, "-m", "sendit_watcher", "--config", str(config), "import", "--json",
                                "--processes", "2", str(folder)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        busy = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND application_name LIKE 'sendit-watcher%%' AND state <> 'idle'")
        wait_until(lambda: process.poll() is not None or scalar_int(conn, busy) > 0, timeout=60,
                   what="the import under way")
        swapped_while_running = process.poll() is None
        for victim in ("s11", "s06"):
            shutil.rmtree(folder / victim)
            os.symlink(elsewhere, folder / victim)
        out, err = process.communicate(timeout=300)
    finally:
        process.kill()
    read_outside = scalar(conn, "SELECT count(*) FROM instance WHERE sop_instance_uid = ANY(%s)", outside)
    figures(f"sub-folder swapped mid-import (while running: {swapped_while_running}): exit {process.returncode}, "
            f"{out.strip()[:200]}")
    assert read_outside == 0, f"{read_outside} files outside the folder were read through a swapped sub-folder"
    assert process.returncode in (0, 1), err[-3000:]
    assert "Traceback" not in err, err[-3000:]


# --- item 8: names that are not UTF-8 --------------------------------------------------------------------------


def test_a_subfolder_with_a_non_utf8_name_is_entered(tmp_path: Path, database: DatabaseConfig,
                                                     conn: Connection) -> None:
    """Its two files are instances; the folder reports 4 files when there are 4."""
    folder = tmp_path / "NAMES"
    make_study(folder, 2)
    make_study(Path(os.fsdecode(os.fsencode(folder) + b"/series-\xff\xfe")), 2)
    config = write_config(tmp_path / "watcher.conf", database, {})
    result = cli(config, "import", "--no-progress", folder)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ", 4 files, 4 instances" in result.stdout, result.stdout
    assert scalar(conn, "SELECT count(*) FROM instance") == 4
    assert scalar(conn, "SELECT count(*) FROM rejected_file") == 0


def test_names_that_differ_only_in_undecodable_bytes_stay_distinct(tmp_path: Path, database: DatabaseConfig,
                                                                   conn: Connection) -> None:
    """Three rows, not one: b"a\\xff", b"a\\xfe" and the literal text a\\xff are different names."""
    folder = tmp_path / "COLLIDE"
    sources = tmp_path / "sources"
    uids = make_study(sources, 3)
    folder.mkdir()
    names = [b"a\xff", b"a\xfe", b"a\\xff"]
    for name, file in zip(names, sorted(sources.iterdir()), strict=True):
        os.rename(file, os.fsencode(folder) + b"/" + name)
    config = write_config(tmp_path / "watcher.conf", database, {})
    result = cli(config, "import", "--json", folder)
    assert result.returncode == 0, result.stdout + result.stderr
    outcome = json.loads(result.stdout)
    stored = conn.execute("SELECT path, sop_instance_uid FROM instance").fetchall()
    conn.rollback()
    assert (outcome["files"], outcome["instances"], outcome["rejected"]) == (3, 3, 0), outcome
    assert sorted(uid for _, uid in stored) == sorted(uids)
    assert len({path for path, _ in stored}) == 3, stored
