"""Cost against history: ``python -m tests.bench.bench_history [--rows 10000 100000 1000000] [--folders 200]``.

For each history size N, in a database of its own (dropped after): a root with ``--folders`` folders on disk,
recorded as imported, and N batch rows of folders that were imported and deleted since (generated set-wise).
Measured: a catch-up scan in a fresh process (seconds, and its peak RSS over what it had before the scan);
``status`` (recent batches and totals) and ``metrics`` (median of three); then the service started on it,
with the catch-up scan it runs at start (seconds from its log), its main process's peak RSS, and the commit
latency of folders renamed into the root while that scan runs (rename to the batch's finished_at). Prints one
table. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sendit_watcher import metrics, status
from sendit_watcher.catchup import scan_roots
from sendit_watcher.config import DatabaseConfig, RootConfig
from sendit_watcher.db import connect
from sendit_watcher.migrate import migrate
from sendit_watcher.walk import fingerprint, walk
from tests.bench.run import RssSampler
from tests.bench.scratch import scratch_database
from tests.fix_service import ServiceProcess
from tests.helpers import make_study, write_config

ROOT = "incoming"


def make_root(root: Path, folders: int) -> None:
    """``folders`` folders of three small files each (the scan reads names, sizes and times only)."""
    for n in range(folders):
        folder = root / f"F{n:05d}"
        folder.mkdir()
        for k in range(3):
            (folder / f"file{k}").write_bytes(os.urandom(256))


def fill(database: DatabaseConfig, root: Path, rows: int) -> float:
    """The schema, the folders on disk as imported, and ``rows`` rows of folders gone since; seconds taken."""
    started = time.perf_counter()
    with connect(database) as conn:
        migrate(conn, database.schema)
        on_disk = [(folder.name, fingerprint(walk(str(folder)))) for folder in sorted(root.iterdir())]
        with conn.cursor() as cursor:
            cursor.executemany("INSERT INTO batch (root, path, status, fingerprint, files, instances, imports,"
                               " finished_at, finished_seq, seconds, host) VALUES (%s, %s, 'done', %s, 3, 3, 1,"
                               " now(), nextval('batch_finished_seq'), 0.01, 'bench')",
                               [(ROOT, name, stamp) for name, stamp in on_disk])
        conn.execute("INSERT INTO batch (root, path, status, fingerprint, files, imports, removed, finished_at,"
                     " finished_seq, seconds, host)"
                     " SELECT %s, 'gone-' || g, 'empty', %s, 0, 2, 3, now() - make_interval(secs => %s - g),"
                     " nextval('batch_finished_seq'), 0.01, 'bench' FROM generate_series(1, %s) AS g",
                     (ROOT, fingerprint([]), rows, rows))
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE batch")
    return time.perf_counter() - started


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _scan_in_child(database: DatabaseConfig, root: Path) -> dict[str, float]:
    watch = RootConfig(name=ROOT, path=root, events=0, processor="")
    before = _rss_kb("VmRSS")
    result = scan_roots(database, {ROOT: watch}, "bench-host", lambda name: False, 0.0, set())
    assert result.error is None and not result.changed and not result.gone, result
    return {"seconds": result.seconds, "rss_increase_mb": (_rss_kb("VmHWM") - before) / 1024,
            "folders": result.folders}


def scan(database: DatabaseConfig, root: Path) -> dict[str, float]:
    """One catch-up scan in a fresh process, so that its peak RSS is the scan's."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_scan_in_child, (database, root))


def readers(database: DatabaseConfig) -> dict[str, float]:
    """Median seconds of ``status`` (recent batches and totals) and of ``metrics``."""
    timings: dict[str, list[float]] = {"status": [], "metrics": []}
    with connect(database) as conn:
        for _ in range(3):
            started = time.perf_counter()
            status.recent_batches(conn, 20)
            status.totals(conn)
            conn.rollback()
            timings["status"].append(time.perf_counter() - started)
            started = time.perf_counter()
            metrics.render(conn)
            conn.rollback()
            timings["metrics"].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in timings.items()}


def service(database: DatabaseConfig, root: Path, work: Path, renames: int) -> dict[str, Any]:
    """The service on this history: its start-up scan, main RSS peak, and renames committed during the scan."""
    for n in range(renames):
        make_study(work / f"R{n:02d}.tmp", 5)
    config = write_config(work / "watcher.conf", database, {ROOT: root}, workers=1, log_level="info",
                          settle_seconds=1, rescan_interval=0)
    process = ServiceProcess(config, work)
    renamed: dict[str, float] = {}
    try:
        with RssSampler(process) as sampler:
            process.wait_ready(timeout=300)
            for n in range(renames):
                (work / f"R{n:02d}.tmp").rename(root / f"R{n:02d}")
                renamed[f"R{n:02d}"] = time.time()
                time.sleep(0.3)
            match = None
            deadline = time.monotonic() + 600
            while match is None and time.monotonic() < deadline:
                match = re.search(r"catch-up scan: \d+ folders in ([0-9.]+) s", process.log)
                time.sleep(0.05)
            assert match is not None, process.log[-2000:]
            committed = _committed(database, list(renamed))
        process.stop()
    finally:
        process.kill()
        for name in renamed:
            (root / name).rename(work / name)
    latencies = sorted(committed[name] - renamed[name] for name in renamed)
    return {"scan_seconds": float(match[1]), "main_rss_mb": sampler.peaks.get("main", 0.0),
            "commit_p50": statistics.median(latencies), "commit_max": latencies[-1]}


def _committed(database: DatabaseConfig, names: list[str]) -> dict[str, float]:
    with connect(database) as conn:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            rows = conn.execute("SELECT path, extract(epoch FROM finished_at)::float8 FROM batch"
                                " WHERE root = %s AND path = ANY(%s) AND status = 'done'", (ROOT, names)).fetchall()
            conn.rollback()
            if len(rows) == len(names):
                return {path: seconds for path, seconds in rows}
            time.sleep(0.05)
    raise TimeoutError("the renamed folders were not imported within 600 s")


def table(results: list[dict[str, Any]], folders: int) -> str:
    lines = [f"{folders} folders on disk, {os.cpu_count()} cores", "",
             f"{'history rows':>13} {'fill s':>7} {'scan s':>8} {'scan +RSS MB':>13} {'status s':>9}"
             f" {'metrics s':>10} {'service scan s':>15} {'main RSS MB':>12} {'rename->commit p50/max s':>25}"]
    for r in results:
        svc = r["service"]
        lines.append(f"{r['rows']:>13,} {r['fill']:>7.1f} {r['scan']['seconds']:>8.3f}"
                     f" {r['scan']['rss_increase_mb']:>13.1f} {r['readers']['status']:>9.3f}"
                     f" {r['readers']['metrics']:>10.3f} {svc['scan_seconds']:>15.3f} {svc['main_rss_mb']:>12.0f}"
                     f" {svc['commit_p50']:>12.2f} / {svc['commit_max']:.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--folders", type=int, default=200)
    parser.add_argument("--renames", type=int, default=5)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as work_dir:
        root = Path(work_dir) / "incoming"
        root.mkdir()
        make_root(root, args.folders)
        for rows in args.rows:
            with scratch_database() as dsn, tempfile.TemporaryDirectory(dir=work_dir) as work:
                database = DatabaseConfig(dsn=dsn, schema=f"hist_{uuid.uuid4().hex[:8]}")
                result: dict[str, Any] = {"rows": rows, "fill": fill(database, root, rows)}
                result["scan"] = scan(database, root)
                result["readers"] = readers(database)
                result["service"] = service(database, root, Path(work), args.renames)
                results.append(result)
                print(table(results[-1:], args.folders).splitlines()[-1], flush=True)
    print(table(results, args.folders))


if __name__ == "__main__":
    main()
