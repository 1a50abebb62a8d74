"""The supervisor of the worker processes, with real processes: a worker that dies at once is replaced with
back-off, never in a tight loop; a hung worker (SIGSTOPped: no heartbeat) is killed and replaced, and the
new one imports."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

from sendit_watcher.config import DatabaseConfig
from sendit_watcher.db import Connection
from sendit_watcher.supervisor import HEARTBEAT_LIMIT_ENV
from tests.fix_service import ServiceProcess
from tests.helpers import done, drop_study, wait_until, write_config


def _service(tmp_path: Path, database: DatabaseConfig, incoming: Path, **env: str) -> ServiceProcess:
    config = write_config(tmp_path / "watcher.conf", database, {"incoming": incoming}, workers=1)
    service = ServiceProcess(config, tmp_path, env=env)
    service.wait_ready()
    return service


def test_a_worker_that_dies_at_once_is_replaced_with_back_off(tmp_path: Path, database: DatabaseConfig,
                                                             incoming: Path, conn: Connection,
                                                             figures: Callable[[str], None]) -> None:
    """Every worker is SIGKILLed as soon as it appears, for 9 s: the replacements come after 1 s, 2 s, 4 s (not
    at every turn of the main loop, 5 times a second); once the killing stops, the next one stays and imports."""
    service = _service(tmp_path, database, incoming)
    try:
        spawned: dict[int, float] = {}
        began = time.monotonic()
        while time.monotonic() - began < 9:
            for pid in service.worker_pids():
                if pid not in spawned:
                    spawned[pid] = time.monotonic()
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        drop_study(incoming, "A", 2)
        wait_until(done(conn, "A", 2), 30, "A imported by the worker started after the back-off")
        assert service.process.poll() is None
    finally:
        service.kill()
    times = sorted(spawned.values())
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    figures(f"a worker killed at once, for 9 s: {len(times)} workers started, "
            f"{', '.join(f'{gap:.1f}' for gap in gaps)} s apart")
    assert 3 <= len(times) <= 5, (len(times), gaps)  # at 0, ~1, ~3, ~7 s (a tight loop: some 45)
    assert all(later > earlier for earlier, later in zip(gaps, gaps[1:], strict=False)), gaps  # growing
    assert gaps[0] >= 0.9 and gaps[1] >= 1.9, gaps
    waits = [int(w) for w in re.findall(r"starting a new one in (\d+) s", service.log)]
    assert waits[:3] == [1, 2, 4], waits


def test_a_hung_worker_is_killed_and_replaced_after_the_heartbeat_limit(
        tmp_path: Path, database: DatabaseConfig, incoming: Path, conn: Connection,
        figures: Callable[[str], None]) -> None:
    service = _service(tmp_path, database, incoming, **{HEARTBEAT_LIMIT_ENV: "4"})
    try:
        time.sleep(6)  # longer than the limit: a worker that waits for work keeps its heartbeat going
        (hung,) = service.worker_pids()
        assert "no sign of life" not in service.log
        os.kill(hung, signal.SIGSTOP)
        stopped = time.monotonic()
        wait_until(lambda: "no sign of life" in service.log, 20, "the hung worker found")
        found = time.monotonic() - stopped
        wait_until(lambda: service.worker_pids() not in ([], [hung]), 20, "a new worker")
        assert not Path(f"/proc/{hung}").exists()  # killed and reaped
        drop_study(incoming, "B", 2)
        wait_until(done(conn, "B", 2), 30, "B imported by the new worker")
    finally:
        service.kill()
    figures(f"hung worker (SIGSTOP), heartbeat limit 4 s: found and killed {found:.1f} s after the stop")
    assert 3 <= found < 10, found  # its last heartbeat came up to a second (a wait for work) before the stop
    line = next(line for line in service.log.splitlines() if "no sign of life" in line)
    assert line.startswith("ERROR ") and f"worker 0 (pid {hung})" in line and "the limit is 4 s" in line, line
    assert "was killed after" in service.log and "without a heartbeat (hung)" in service.log
