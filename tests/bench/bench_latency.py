"""Rename-to-committed latency of the running service: ``python -m tests.bench.bench_latency [--folders N]``.

Starts ``sendit-watcher run`` under a NOTIFY_SOCKET of its own, then, on the idle service, renames one
100-file folder at a time from NAME.tmp to NAME and stops the clock when ``NOTIFY sendit_batch`` for it
arrives (rows committed). Prints p50, p99 and max. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import select
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from sendit_watcher.config import DatabaseConfig
from tests.bench.scratch import scratch_database
from tests.fix_service import ServiceProcess
from tests.helpers import make_study, write_config


def measure(folders: int, files: int, work: Path, dsn: str, full_header: bool) -> list[float]:
    incoming = work / "incoming"
    incoming.mkdir()
    database = DatabaseConfig(dsn=dsn, schema=f"lat_{uuid.uuid4().hex[:8]}")
    config = write_config(work / "watcher.conf", database, {"incoming": incoming}, log_level="info",
                          full_header="yes" if full_header else "no")
    service = ServiceProcess(config, work)
    latencies = []
    try:
        service.wait_ready()
        with psycopg.connect(dsn, autocommit=True) as listener:
            listener.execute("LISTEN sendit_batch")
            received: list[str] = []
            listener.add_notify_handler(lambda n: received.append(n.payload))
            for n in range(folders):
                make_study(incoming / f"L{n:04d}.tmp", files)
                time.sleep(0.3)  # the service is idle when the rename lands
                received.clear()
                started = time.perf_counter()
                (incoming / f"L{n:04d}.tmp").rename(incoming / f"L{n:04d}")
                while not received:
                    select.select([listener.fileno()], [], [], 0.01)
                    listener.execute("SELECT 1")
                latencies.append(time.perf_counter() - started)
    finally:
        service.stop()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--folders", type=int, default=30)
    parser.add_argument("--files", type=int, default=100)
    args = parser.parse_args()
    with scratch_database() as dsn:
        for full_header in (True, False):
            with tempfile.TemporaryDirectory() as work:
                latencies = sorted(measure(args.folders, args.files, Path(work), dsn, full_header))
            p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
            print(f"{args.files}-file folder, rename -> committed + NOTIFY, full header "
                  f"{'on ' if full_header else 'off'}: p50 {statistics.median(latencies):.3f} s, "
                  f"p99 {p99:.3f} s, max {latencies[-1]:.3f} s ({len(latencies)} folders)")


if __name__ == "__main__":
    main()
