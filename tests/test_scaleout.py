"""Scale-out and hand-off: hosts sharing one PostgreSQL and one storage; listen, retry, metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from sendit_watcher.cli import main
from sendit_watcher.config import DatabaseConfig
from sendit_watcher.db import Connection
from tests.fix_service import REPO, ServiceProcess
from tests.helpers import as_int, batch_rows, drop_study, importing_host, make_study, scalar, wait_until, write_config


def two_hosts(tmp_path: Path, database: DatabaseConfig, incoming: Path) -> tuple[ServiceProcess, ServiceProcess]:
    """Host A watches and imports; host B only imports. Same storage, same database, one worker each."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    roots = {"incoming": incoming}
    a = ServiceProcess(write_config(tmp_path / "a.conf", database, roots, workers=1, host="host-a"), tmp_path / "a")
    b = ServiceProcess(write_config(tmp_path / "b.conf", database, roots, workers=1, host="host-b", role="worker"),
                       tmp_path / "b")
    a.wait_ready()
    b.wait_ready()
    return a, b


def test_two_hosts_import_a_burst_each_folder_once_and_both_work(tmp_path: Path, incoming: Path,
        database: DatabaseConfig,
                                                                  conn: Connection) -> None:
    a, b = two_hosts(tmp_path, database, incoming)
    try:
        b.notify.wait_for(lambda line: line.startswith("STATUS=worker only (1 on host-b)"))
        threads = [threading.Thread(target=lambda k=k: [drop_study(incoming, f"F{n:03d}", 10)
                                                         for n in range(k, 200, 4)]) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wait_until(lambda: scalar(conn, "SELECT count(*) FROM batch WHERE status = 'done'") == 200, timeout=180,
                   what="200 folders imported")
    finally:
        a.kill()
        b.kill()
    assert scalar(conn, "SELECT count(*) FROM batch WHERE imports = 1 AND instances = 10") == 200
    assert scalar(conn, "SELECT count(*) FROM instance") == 2000
    work = dict(conn.execute("SELECT host, count(*) FROM batch GROUP BY host").fetchall())
    assert set(work) == {"host-a", "host-b"} and all(n > 0 for n in work.values()), work


def test_a_host_that_dies_mid_import_releases_its_batch_to_the_other(tmp_path: Path, incoming: Path,
        database: DatabaseConfig,
                                                                      conn: Connection) -> None:
    a, b = two_hosts(tmp_path, database, incoming)
    try:
        drop_study(incoming, "BIG", 3000)
        wait_until(lambda: importing_host(conn) is not None, what="a worker holding BIG")
        holder = importing_host(conn)
        victim, survivor = (a, "host-b") if holder == "host-a" else (b, "host-a")
        for pid in victim.worker_pids():  # the whole host vanishes: its worker, then its service
            os.kill(pid, signal.SIGKILL)
        victim.kill()
        wait_until(lambda: batch_rows(conn).get("BIG", ("", 0, 0))[0] == "done", timeout=120, what="BIG imported")
    finally:
        a.kill()
        b.kill()
    assert batch_rows(conn)["BIG"] == ("done", 3000, 1)
    assert scalar(conn, "SELECT host FROM batch WHERE path = 'BIG'") == survivor
    assert scalar(conn, "SELECT count(*) FROM instance") == 3000


def listener(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "sendit_watcher", "--config", str(config), "listen", *args],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def read_lines(process: subprocess.Popen[str], count: int, timeout: float = 60) -> list[dict[str, object]]:
    lines: list[dict[str, object]] = []
    reader = threading.Thread(target=lambda: lines.extend(json.loads(process.stdout.readline())  # type: ignore[union-attr]
                                                          for _ in range(count)), daemon=True)
    reader.start()
    reader.join(timeout)
    assert len(lines) == count, f"got {len(lines)} of {count} lines"
    return lines


# The listener's connection idle for a while: it is past its start-up queries, waiting in select() for a NOTIFY.
_LISTENER_WAITING = """
SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sendit-watcher listen' AND datname = current_database()
AND state = 'idle' AND now() - state_change > interval '0.5 s'
"""


def test_listen_gets_every_batch_in_commit_order_and_replays_after_restart(tmp_path: Path, incoming: Path,
        database: DatabaseConfig,
                                                                          conn: Connection) -> None:
    config = write_config(tmp_path / "watcher.conf", database, {"incoming": incoming})
    service = ServiceProcess(config, tmp_path)
    first = listener(config)
    try:
        service.wait_ready()
        wait_until(lambda: scalar(conn, _LISTENER_WAITING) == 1, timeout=10, what="the listener waiting for NOTIFY")
        for n in range(20):
            drop_study(incoming, f"L{n:02d}", 3)
        seen = read_lines(first, 20)
        first.kill()
        assert sorted(str(r["folder"]) for r in seen) == [f"L{n:02d}" for n in range(20)]
        sequence = [as_int(r["seq"]) for r in seen]
        assert sequence == sorted(sequence) and len(set(sequence)) == 20
        assert all(r["status"] == "done" and r["instances"] == 3 and r["host"] == "test-host" for r in seen)
        for n in range(20, 25):  # while nobody listens
            drop_study(incoming, f"L{n:02d}", 3)
        wait_until(lambda: scalar(conn, "SELECT count(*) FROM batch WHERE status = 'done'") == 25, what="25 done")
        second = listener(config, "--since", str(sequence[-1]), "--count", "5")
        missed = read_lines(second, 5)
        assert second.wait(30) == 0
        assert {str(r["folder"]) for r in missed} == {f"L{n:02d}" for n in range(20, 25)}
        replayed = [as_int(r["seq"]) for r in missed]
        assert replayed == sorted(replayed) and replayed[0] > sequence[-1]
    finally:
        first.kill()
        service.kill()


def test_a_failed_batch_is_visible_and_retry_imports_it(tmp_path: Path, incoming: Path,
        database: DatabaseConfig,
                                                        conn: Connection) -> None:
    config = write_config(tmp_path / "watcher.conf", database, {"incoming": incoming})
    conn.execute("ALTER TABLE instance ADD CONSTRAINT provoked CHECK (instance_number IS NULL)")
    conn.commit()
    service = ServiceProcess(config, tmp_path)
    try:
        service.wait_ready()
        drop_study(incoming, "R", 4)
        wait_until(lambda: batch_rows(conn).get("R", ("",))[0] == "failed", what="R failed")
        error = str(scalar(conn, "SELECT last_error FROM batch WHERE path = 'R'"))
        assert "provoked" in error and "CheckViolation" in error
        assert main(["--config", str(config), "retry", "999999"]) == 1
        conn.execute("ALTER TABLE instance DROP CONSTRAINT provoked")
        conn.commit()
        batch_id = int(scalar(conn, "SELECT id FROM batch WHERE path = 'R'"))  # type: ignore[call-overload]
        assert main(["--config", str(config), "retry", str(batch_id)]) == 0
        wait_until(lambda: batch_rows(conn).get("R") == ("done", 4, 1), what="R imported after retry")
        assert main(["--config", str(config), "retry", str(batch_id)]) == 1  # done now: nothing to retry
    finally:
        service.kill()


def test_metrics_in_prometheus_text_format(tmp_path: Path, database: DatabaseConfig) -> None:
    folder = tmp_path / "M"
    make_study(folder, 3)
    config = write_config(tmp_path / "watcher.conf", database, {})
    assert main(["--config", str(config), "import", str(folder)]) == 0
    target = tmp_path / "sendit.prom"
    assert main(["--config", str(config), "metrics", "--textfile", str(target)]) == 0
    text = target.read_text()
    assert '# TYPE sendit_batches gauge' in text
    assert 'sendit_batches{status="done",host="test-host"} 1' in text
    assert 'sendit_instances{status="done",host="test-host"} 3' in text
    assert "sendit_queue_depth 0" in text
