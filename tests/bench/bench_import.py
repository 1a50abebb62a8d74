"""Import speed against the parse floor: ``python -m tests.bench.bench_import [--files N] [--folders N]``.

Prints files/s for pydicom's parse alone (1 and N processes) and for ``sendit-watcher import`` with the full
header off and on, each into a fresh schema of a fresh database. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import time
import uuid
from pathlib import Path

import pydicom

from sendit_watcher.cli import main as cli_main
from tests.bench.corpus import build
from tests.bench.scratch import scratch_database


def _parse(path: str) -> int:
    return len(pydicom.dcmread(path, stop_before_pixels=True))


def parse_floor(files: list[str], processes: int) -> float:
    started = time.perf_counter()
    if processes == 1:
        for path in files:
            _parse(path)
    else:
        with multiprocessing.get_context("forkserver").Pool(processes) as pool:
            for _ in pool.imap_unordered(_parse, files, chunksize=64):
                pass
    return len(files) / (time.perf_counter() - started)


def import_rate(dsn: str, folders: list[Path], files: int, full_header: bool, processes: int) -> float:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    config = Path(f"/tmp/{schema}.conf")
    config.write_text(f"[database]\ndsn = {dsn}\nschema = {schema}\n[import]\nfull_header = "
                      f"{'yes' if full_header else 'no'}\nparse_processes = {processes}\n")
    cli_main(["--config", str(config), "migrate"])
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli_main(["--config", str(config), "import", "--no-progress", *map(str, folders)])
    seconds = time.perf_counter() - started
    config.unlink()
    assert code == 0, code
    return files / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--folders", type=int, default=200)
    parser.add_argument("--corpus", type=Path, default=Path("/var/tmp/sendit-watcher-bench"))
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    folders = build(args.corpus / f"{args.files}-{args.folders}", args.files, args.folders)
    files = sorted(str(p) for folder in folders for p in folder.iterdir())
    for path in files[:2000]:  # warm the page cache
        Path(path).read_bytes()
    n = args.processes
    with scratch_database() as dsn:
        rows = {
            "parse floor, 1 process": parse_floor(files, 1),
            f"parse floor, {n} processes": parse_floor(files, n),
            f"import, main tags only, {n} processes": import_rate(dsn, folders, len(files), False, n),
            f"import, full header, {n} processes": import_rate(dsn, folders, len(files), True, n),
        }
    floor = rows[f"parse floor, {n} processes"]
    print(f"{len(files):,} files in {len(folders)} folders, {os.cpu_count()} cores")
    for label, rate in rows.items():
        print(f"{label:<40} {rate:>9,.0f} files/s   {rate / floor:5.2f} x floor({n})")
    print(json.dumps({k: round(v, 1) for k, v in rows.items()}))


if __name__ == "__main__":
    main()
