"""The database goes away mid-burst: connections terminated, then the server stopped for 30 s (a private
cluster of the test's own). The service stays up, says what it waits for, and imports every folder once.

SENDIT_FAULT_OUTAGE sets the outage in seconds (default 30).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from sendit_watcher.config import DatabaseConfig
from sendit_watcher.db import connect
from tests.fix_postgres import PrivateCluster
from tests.fix_service import ServiceProcess
from tests.helpers import make_study, scalar, scalar_int, wait_until, write_config

OUTAGE = float(os.environ.get("SENDIT_FAULT_OUTAGE", "30"))


def burst(root: Path, names: list[str], files: int) -> None:
    for name in names:
        make_study(root / f"{name}.tmp", files)
        (root / f"{name}.tmp").rename(root / name)
        time.sleep(0.05)


def test_outage_in_the_middle_of_a_burst(tmp_path: Path, incoming: Path, figures: Callable[[str], None]) -> None:
    cluster = PrivateCluster()
    database = DatabaseConfig(dsn=cluster.start(), schema="outage")
    config = write_config(tmp_path / "watcher.conf", database, {"incoming": incoming})
    service = ServiceProcess(config, tmp_path)
    names = [f"O{n:03d}" for n in range(120)]
    try:
        service.wait_ready()
        producer = threading.Thread(target=burst, args=(incoming, names, 10))
        producer.start()
        with connect(database) as conn:
            wait_until(lambda: scalar_int(conn, "SELECT count(*) FROM batch WHERE status = 'done'") >= 5,
                       timeout=30, what="the burst under way")
        with psycopg.connect(database.dsn, autocommit=True) as admin:
            terminated = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name LIKE 'sendit-watcher%'").fetchone()
        cluster.stop()
        down = time.monotonic()
        status = service.notify.wait_for(lambda line: line.startswith("STATUS=waiting for database"), 20)
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - down)))
        cluster.start()
        producer.join()
        with connect(database) as conn:
            wait_until(lambda: scalar(conn, "SELECT count(*) FROM batch WHERE status = 'done'") == len(names),
                       timeout=180, what="every folder after the outage")
            once = scalar(conn, "SELECT count(*) FROM batch WHERE imports = 1 AND instances = 10")
            duplicates = scalar(conn, "SELECT count(*) - count(DISTINCT sop_instance_uid) FROM instance")
            instances = scalar(conn, "SELECT count(*) FROM instance")
        alive = service.process.poll() is None
    finally:
        service.kill()
        cluster.destroy()
    figures(f"database outage {OUTAGE:.0f} s + {terminated[0] if terminated else 0} connections terminated: "
            f"folders {once}/{len(names)} imported once, {duplicates} duplicates, service up: {alive}")
    assert "waiting for database" in status and alive
    assert once == len(names) and duplicates == 0 and instances == 10 * len(names)
