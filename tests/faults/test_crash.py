"""kill -9 at random moments (seeded): every folder imported exactly once, nothing stuck, nothing half-imported.

SENDIT_FAULT_SEED (default 20261128) and SENDIT_FAULT_KILLS (default 50) make a longer soak.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sendit_watcher.config import DatabaseConfig
from sendit_watcher.db import Connection
from tests.fix_service import ServiceProcess
from tests.helpers import make_study, scalar, wait_until, write_config

SEED = int(os.environ.get("SENDIT_FAULT_SEED", "20261128"))
KILLS = int(os.environ.get("SENDIT_FAULT_KILLS", "50"))


def produce(root: Path, folders: int, seed: int, done: threading.Event, expected: dict[str, int]) -> None:
    """Folders arriving the two ways producers deliver them: .tmp then rename, or mkdir and copy."""
    rng = random.Random(seed)
    for n in range(folders):
        name, files = f"K{n:04d}", rng.randint(1, 12)
        if rng.random() < 0.7:
            make_study(root / f"{name}.tmp", files)
            (root / f"{name}.tmp").rename(root / name)
        else:
            make_study(root / name, files)
        expected[name] = files
        time.sleep(rng.uniform(0, 0.15))
    done.set()


def kill_host(service: ServiceProcess) -> None:
    for pid in service.worker_pids():
        os.kill(pid, signal.SIGKILL)
    service.kill()


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(tmp_path: Path, incoming: Path, database: DatabaseConfig,
                                                               conn: Connection,
                                                               figures: Callable[[str], None]) -> None:
    rng = random.Random(SEED)
    config = write_config(tmp_path / "watcher.conf", database, {"incoming": incoming}, settle_seconds=0.5,
                          log_level="info")
    expected: dict[str, int] = {}
    finished = threading.Event()
    producer = threading.Thread(target=produce, args=(incoming, KILLS * 8, SEED, finished, expected), daemon=True)
    producer.start()
    started = time.monotonic()
    for _ in range(KILLS):
        service = ServiceProcess(config, tmp_path)
        try:
            service.wait_ready()
            time.sleep(rng.uniform(0.05, 1.2))
        finally:
            kill_host(service)
    producer.join()
    final = ServiceProcess(config, tmp_path)
    try:
        final.wait_ready()
        wait_until(lambda: scalar(conn, "SELECT count(*) FROM batch WHERE status = 'done'") == len(expected),
                   timeout=300, what=f"{len(expected)} folders imported")
    finally:
        final.stop()
    rows = {str(p): (int(i), int(n)) for p, i, n in conn.execute(
        "SELECT path, instances, imports FROM batch").fetchall()}
    conn.rollback()
    once = sum(1 for name, files in expected.items() if rows.get(name) == (files, 1))
    duplicates = scalar(conn, "SELECT count(*) - count(DISTINCT sop_instance_uid) FROM instance")
    stuck = scalar(conn, "SELECT count(*) FROM batch WHERE status NOT IN ('done', 'empty')")
    figures(f"kill -9 x {KILLS} (seed {SEED}): folders {once}/{len(expected)} imported once, "
            f"{duplicates} duplicates, {stuck} stuck, {time.monotonic() - started:.0f} s")
    assert once == len(expected) and set(rows) == set(expected)
    assert duplicates == 0 and stuck == 0
    assert scalar(conn, "SELECT count(*) FROM instance") == sum(expected.values())
    assert scalar(conn, "SELECT count(*) FROM rejected_file") == 0
