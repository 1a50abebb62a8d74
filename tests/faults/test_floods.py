"""Floods against the inotify watch table: a full table at start is a clear error; folders beyond it still
settle (by stat) and import once. (The queue-overflow burst is tests/test_service.py's slow test.)"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sendit_watcher.config import DatabaseConfig
from sendit_watcher.db import Connection
from sendit_watcher.errors import EXIT_CONFIG
from tests.fix_service import REPO, ServiceProcess
from tests.helpers import make_study, scalar, wait_until, write_config

LIMIT = Path("/proc/sys/fs/inotify/max_user_watches")
# The limit is the whole machine's (per user, every process of root counts): no other test run may go on meanwhile.
pytestmark = pytest.mark.host_global


def watches_in_use() -> int:
    """inotify watches held by every process of this user (root in CI), from /proc/*/fdinfo: the kernel counts
    them per user (of the process that made the inotify instance) against max_user_watches. Other users' watches
    (a booted system's dbus-daemon, systemd-resolved, ...) do not count."""
    total = 0
    for process in Path("/proc").glob("[0-9]*"):
        try:
            if process.stat().st_uid != os.geteuid():
                continue
            fdinfos = list((process / "fdinfo").iterdir())
        except OSError:  # gone
            continue
        for fdinfo in fdinfos:
            try:
                total += sum(1 for line in fdinfo.read_text().splitlines() if line.startswith("inotify wd:"))
            except OSError:  # closed
                continue
    return total


@contextmanager
def watch_limit(value: int) -> Iterator[None]:
    saved = LIMIT.read_text()
    LIMIT.write_text(str(value))
    try:
        yield
    finally:
        LIMIT.write_text(saved)


def test_a_full_watch_table_at_start_is_a_clear_error(tmp_path: Path, incoming: Path, database: DatabaseConfig) -> None:
    config = write_config(tmp_path / "watcher.conf", database, {"incoming": incoming})
    with watch_limit(watches_in_use()):
        result = subprocess.run([sys.executable, "-m", "sendit_watcher", "--config", str(config), "run"],
                                capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == EXIT_CONFIG
    assert f"cannot watch [watch:incoming] path {incoming}" in result.stderr
    assert "raise fs.inotify.max_user_watches" in result.stderr


def test_folders_beyond_the_watch_table_still_settle_and_import_once(tmp_path: Path, incoming: Path,
                                                                     database: DatabaseConfig,
                                                                     conn: Connection,
                                                                     figures: Callable[[str], None]) -> None:
    config = write_config(tmp_path / "watcher.conf", database, {"incoming": incoming})
    service = ServiceProcess(config, tmp_path)
    folders = 40
    try:
        service.wait_ready()
        with watch_limit(watches_in_use() + 3):
            for n in range(folders):  # created under their final names: each wants watches inside it
                make_study(incoming / f"W{n:03d}", 5)
            wait_until(lambda: scalar(conn, "SELECT count(*) FROM batch WHERE status = 'done'") == folders,
                       timeout=120, what=f"{folders} folders")
        fallbacks = service.log.count("settles by stat alone")
    finally:
        service.kill()
    once = scalar(conn, "SELECT count(*) FROM batch WHERE imports = 1 AND instances = 5")
    figures(f"watch table full: {fallbacks} of {folders} settling folders fell back to stat; "
            f"folders {once}/{folders} imported once")
    assert fallbacks > 0 and once == folders
