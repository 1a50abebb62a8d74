"""Two hosts against one: ``python -m tests.bench.bench_scaleout [--folders N] [--files N]``.

One host with one worker, then two hosts (two service processes with their own host names, sharing the
storage and the database) with one worker each, import the same burst: all folders prepared as NAME.tmp,
renamed at once; the clock stops when the last batch is committed. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from sendit_watcher.config import DatabaseConfig
from tests.bench.scratch import scratch_database
from tests.fix_service import ServiceProcess
from tests.helpers import make_study, write_config


def burst(dsn: str, hosts: int, folders: int, files: int) -> tuple[float, dict[str, int]]:
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        incoming = work / "incoming"
        incoming.mkdir()
        database = DatabaseConfig(dsn=dsn, schema=f"scale_{uuid.uuid4().hex[:8]}")
        services = []
        for n in range(hosts):
            (work / f"h{n}").mkdir()
            config = write_config(work / f"h{n}.conf", database, {"incoming": incoming}, workers=1,
                                  host=f"host-{n}", role="all" if n == 0 else "worker", log_level="warning")
            services.append(ServiceProcess(config, work / f"h{n}"))
        for service in services:
            service.wait_ready()
        for n in range(folders):
            make_study(incoming / f"S{n:04d}.tmp", files)
        started = time.perf_counter()
        for n in range(folders):
            (incoming / f"S{n:04d}.tmp").rename(incoming / f"S{n:04d}")
        with psycopg.connect(dsn, options=f"-c search_path={database.schema}") as conn:
            while conn.execute("SELECT count(*) FROM batch WHERE status = 'done'").fetchone() != (folders,):
                conn.rollback()
                time.sleep(0.05)
            seconds = time.perf_counter() - started
            work_done = dict(conn.execute("SELECT host, count(*) FROM batch GROUP BY host").fetchall())
        for service in services:
            service.stop()
    return folders * files / seconds, work_done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--folders", type=int, default=100)
    parser.add_argument("--files", type=int, default=50)
    args = parser.parse_args()
    with scratch_database() as dsn:
        one, _ = burst(dsn, 1, args.folders, args.files)
        two, split = burst(dsn, 2, args.folders, args.files)
    print(f"{args.folders} folders x {args.files} files, {os.cpu_count()} cores, full header")
    print(f"one host, one worker        {one:8,.0f} files/s")
    print(f"two hosts, one worker each  {two:8,.0f} files/s   {two / one:.2f} x   folders per host: {split}")


if __name__ == "__main__":
    main()
