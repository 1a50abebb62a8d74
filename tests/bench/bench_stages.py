"""Where the time goes, per stage of one folder's import in one process, and how the import scales.

Stages: read (one os.read of each file), decode (header to main tags), JSON (the full header beyond the main
tags), COPY (the staging rows to PostgreSQL), merge (staging into the hierarchy), commit; with the PostgreSQL
backend's CPU time as a share of the database stages. Then ``sendit-watcher import`` of growing corpora:
files/s of the whole run and after the first folder's commit (without the start-up), and peak RSS of the largest
process. Figures, not assertions.

    python -m tests.bench.bench_stages [--files 2000] [--sizes 2000,20000,100000] [--mix]

``--mix``: the per-stage figures over the realistic mix (tests/bench/corpus.py's MIX, 100 files a folder, a
batch each, summed), and the COPY and merge once more with each header cut to what its folder's files do not
all share (the elements every file of the folder has with the same value left out, as if stored once a series):
what storing a series' common elements once would save the database stages.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sendit_watcher import batches, importer
from sendit_watcher.config import DatabaseConfig
from sendit_watcher.db import Connection, connect
from sendit_watcher.dicom import lean
from sendit_watcher.dicom.headers import Instance, read_instance
from sendit_watcher.migrate import migrate
from sendit_watcher.walk import FileEntry, Rejection, open_beneath, walk
from tests.bench.corpus import build, build_mix
from tests.bench.scratch import scratch_database
from tests.fix_service import REPO
from tests.helpers import write_config

_TICKS = os.sysconf("SC_CLK_TCK")


def backend_cpu(pid: int) -> float:
    """CPU seconds (user + system) a local PostgreSQL backend has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def timed(work: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


def read_all(folder: str, entries: list[FileEntry]) -> None:
    for entry in entries:
        fd = open_beneath(folder, entry.path)
        try:
            os.read(fd, entry.size)
        finally:
            os.close(fd)


def stages(dsn: str, folders: list[Path], split: bool = False) -> dict[str, float]:
    """Seconds per stage for ``folders`` (one batch each, summed; the parse stages over the warm page cache, best
    of three); with ``split``, also the COPY and merge, into a schema of their own, of the headers cut to what
    each folder does not share."""
    figures: dict[str, float] = {}
    databases = [DatabaseConfig(dsn=dsn, schema="stages"), DatabaseConfig(dsn=dsn, schema="stages_split")]
    with connect(databases[0]) as conn, connect(databases[1]) as split_conn:
        for database, connection in zip(databases, (conn, split_conn), strict=True):
            migrate(connection, database.schema)
        for folder in folders:
            found = _folder_stages(conn, folder, split_conn if split else None)
            for key, value in found.items():
                figures[key] = figures.get(key, 0.0) + value
    return figures


def _folder_stages(conn: Connection, folder: Path, split_conn: Connection | None) -> dict[str, float]:
    entries = [e for e in walk(str(folder)) if isinstance(e, FileEntry)]
    read = min(timed(lambda: read_all(str(folder), entries))[0] for _ in range(3))
    main = min(timed(lambda: [read_instance(str(folder), e, False) for e in entries])[0] for _ in range(3))
    full, results = min((timed(lambda: [read_instance(str(folder), e, True) for e in entries]) for _ in range(3)),
                        key=lambda pair: pair[0])
    found = {"files": len(entries), "read": read, "decode": main - read, "json": full - main}
    found.update(_database_stages(conn, folder, results))
    if split_conn is not None:
        found.update({f"split_{k}": v for k, v in _database_stages(split_conn, folder, _cut(results)).items()})
    return found


def _cut(results: list[Instance | Rejection]) -> list[Instance | Rejection]:
    """Each instance with a header of the top-level elements whose value is not the same in every instance of
    the folder."""
    instances = [r for r in results if isinstance(r, Instance) and r.header is not None]
    headers = [json.loads(r.header or "{}") for r in instances]
    common = {key for key in headers[0] if all(h.get(key) == headers[0][key] for h in headers[1:])} \
        if headers else set()
    return [dataclasses.replace(r, header=json.dumps({k: v for k, v in h.items() if k not in common},
                                                     separators=(",", ":")))
            for r, h in zip(instances, headers, strict=True)]


def _database_stages(conn: Connection, folder: Path, results: list[Instance | Rejection]) -> dict[str, float]:
    pid = int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
    conn.commit()
    batch_id = batches.ensure(conn, *batches.locate(_config(), folder))
    cpu = backend_cpu(pid)
    with conn.transaction():
        batch = batches.claim_id(conn, batch_id)
        assert batch is not None
        conn.execute(importer._CREATE_STAGING)
        lines = [importer._copy_line(importer._staging_row(r) + (0,)) for r in results]
        copy_seconds = timed(lambda: _copy(conn, lines))[0]
        merge_seconds = timed(lambda: importer._merge(conn, batch_id, len(lines)))[0]
        started = time.perf_counter()
    commit_seconds = time.perf_counter() - started
    return {"copy": copy_seconds, "merge": merge_seconds, "commit": commit_seconds,
            "postgres_cpu": backend_cpu(pid) - cpu, "copy_bytes": float(sum(map(len, lines)))}


def _copy(conn: Connection, lines: list[bytes]) -> None:
    with conn.cursor().copy(importer._COPY_STAGING) as copy:
        for line in lines:
            copy.write(line)


def _config() -> Any:
    from sendit_watcher.config import Config

    return Config()


def scaling(dsn: str, corpus: Path, files: int, folders: int) -> dict[str, float]:
    """``sendit-watcher import`` of ``files`` files in ``folders`` folders, in a process of its own."""
    paths = build(corpus / f"scale-{files}", files, folders)
    work = corpus / f"scale-{files}-work"
    work.mkdir(parents=True, exist_ok=True)
    database = DatabaseConfig(dsn=dsn, schema=f"scale_{files}")
    config = write_config(work / "watcher.conf", database, {})
    command = [sys.executable, "-m", "sendit_watcher", "--config", str(config), "import", "--json", "--no-progress",
               *map(str, paths)]
    started = time.perf_counter()
    # A wrapper process of its own, so that its children's peak RSS is this run's alone.
    peak_kb, first, last, first_files = subprocess.run(
        [sys.executable, "-c", _PEAK, *command], check=True, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}).stdout.split()[-4:]
    seconds = time.perf_counter() - started
    steady = (files - int(first_files)) / max(1e-9, float(last) - float(first))
    return {"files": files, "seconds": seconds, "files_per_second": files / seconds,
            "after_first_folder_files_per_second": steady, "peak_rss_mb": int(peak_kb) / 1024}


# Runs the import, timing each folder's outcome line; prints peak RSS (kB), the times of the first and last
# outcome, and the first folder's files.
_PEAK = """
import json, resource, subprocess, sys, time
process = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, text=True)
times, first_files = [], 0
for line in process.stdout:
    times.append(time.perf_counter())
    if len(times) == 1:
        first_files = json.loads(line)["files"]
assert process.wait() == 0
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, times[0], times[-1], first_files)
"""


def report(stage: dict[str, float], scale: list[dict[str, float]]) -> str:
    total = sum(stage[k] for k in ("read", "decode", "json", "copy", "merge", "commit"))
    lines = [f"per stage, one process, {stage['files']:,.0f} files (full header; lean reader "
             f"{'on' if lean.ENABLED else 'off'}):", "| stage | seconds | ms/file | share |", "|---|---:|---:|---:|"]
    for key in ("read", "decode", "json", "copy", "merge", "commit"):
        lines.append(f"| {key} | {stage[key]:.3f} | {1000 * stage[key] / stage['files']:.3f} | "
                     f"{stage[key] / total:.0%} |")
    database = stage["copy"] + stage["merge"] + stage["commit"]
    lines.append(f"PostgreSQL backend CPU: {stage['postgres_cpu']:.2f} s, {stage['postgres_cpu'] / database:.0%} "
                 f"of the database stages' {database:.2f} s; COPY {stage['copy_bytes'] / stage['files']:,.0f} "
                 f"bytes a file")
    if "split_copy" in stage:
        lines.append(f"headers cut to what each folder does not share: COPY {stage['split_copy']:.3f} s "
                     f"({1000 * stage['split_copy'] / stage['files']:.3f} ms/file, "
                     f"{stage['split_copy_bytes'] / stage['files']:,.0f} bytes a file), merge "
                     f"{stage['split_merge']:.3f} s ({1000 * stage['split_merge'] / stage['files']:.3f} ms/file)")
    lines += ["", "scaling, `sendit-watcher import`, every core (files/s of the whole run, with the start-up of the"
              " interpreter and the pool; and after the first folder's commit):",
              "| files | files/s | after the first folder | peak RSS MB |", "|---:|---:|---:|---:|"]
    lines += [f"| {s['files']:,.0f} | {s['files_per_second']:,.0f} | {s['after_first_folder_files_per_second']:,.0f}"
              f" | {s['peak_rss_mb']:.0f} |" for s in scale]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=2000, help="files of the per-stage folder")
    parser.add_argument("--sizes", default="2000,20000,100000", help="corpus sizes for the scaling runs")
    parser.add_argument("--corpus", type=Path, default=Path("/var/tmp/sendit-watcher-bench-stages"))
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    parser.add_argument("--mix", action="store_true", help="the per-stage figures over the realistic mix")
    args = parser.parse_args()
    if args.mix:
        folders = build_mix(args.corpus / f"stages-mix-{args.files}", args.files, max(1, args.files // 100))
    else:
        folders = build(args.corpus / "stages", args.files, 1)
    with scratch_database() as dsn:
        stage = stages(dsn, folders, args.mix)
        scale = [scaling(dsn, args.corpus, size, max(1, size // 100)) for size in map(int, args.sizes.split(","))]
    print(report(stage, scale))
    if args.json:
        args.json.write_text(json.dumps({"stages": stage, "scaling": scale}, indent=2))


if __name__ == "__main__":
    main()
