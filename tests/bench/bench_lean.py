"""The lean header reader against the pydicom path, one process:
``python -m tests.bench.bench_lean [--files N] [--folders N] [--repeat N]``.

Prints files/s of ``headers.read_instance`` with the lean reader and with the pydicom path, full header and main
tags only, on CT_small/MR_small clones (tests/bench/corpus.py), best of ``--repeat`` runs (the machine is shared),
and the fraction of files the lean reader handed back to pydicom. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from sendit_watcher.dicom import lean
from sendit_watcher.dicom.headers import Instance, quiet_pydicom, read_instance
from sendit_watcher.walk import FileEntry
from tests.bench.corpus import build


def entries(folders: list[Path]) -> list[tuple[str, FileEntry]]:
    found = []
    for folder in folders:
        for name in sorted(os.listdir(folder)):
            info = os.stat(folder / name)
            found.append((str(folder), FileEntry(name, info.st_size, info.st_mtime_ns)))
    return found


def rate(files: list[tuple[str, FileEntry]], use_lean: bool, full_header: bool, repeat: int) -> float:
    """Best files/s of ``repeat`` passes over ``files``."""
    lean.ENABLED = use_lean
    best = 0.0
    for _ in range(repeat):
        started = time.perf_counter()
        for folder, entry in files:
            if not isinstance(read_instance(folder, entry, full_header), Instance):
                raise SystemExit(f"{entry.path} was not read as an instance")
        best = max(best, len(files) / (time.perf_counter() - started))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--folders", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--corpus", type=Path, default=Path("/var/tmp/sendit-watcher-bench-lean"))
    parser.add_argument("--only", choices=["lean", "pydicom"], help="one reader, one mode (--main-tags or not): "
                        "for valgrind --tool=callgrind, whose instruction counts the shared machine does not blur")
    parser.add_argument("--main-tags", action="store_true", help="with --only: main tags, not the full header")
    args = parser.parse_args()
    if args.only:
        quiet_pydicom()
        files = entries(build(args.corpus, args.files, args.folders))
        print(f"{args.only}: {rate(files, args.only == 'lean', not args.main_tags, 1):,.0f} files/s")
        return
    quiet_pydicom()
    files = entries(build(args.corpus, args.files, args.folders))
    rate(files[:50], True, True, 1)  # warm the page cache and the dictionaries
    lean.reset_counts()
    print(f"{len(files)} files (CT_small/MR_small clones), one process, best of {args.repeat}")
    print(f"{'':14}{'pydicom path':>14}{'lean':>10}{'ratio':>8}")
    for label, full_header in (("full header", True), ("main tags", False)):
        slow = rate(files, False, full_header, args.repeat)
        fast = rate(files, True, full_header, args.repeat)
        print(f"{label:14}{slow:>10,.0f} f/s{fast:>6,.0f} f/s{fast / slow:>7.2f}x")
    total = lean.COUNTS["lean"] + lean.COUNTS["fallback"]
    print(f"fell back to pydicom: {lean.COUNTS['fallback']} of {total} lean reads "
          f"({lean.COUNTS['fallback'] / max(total, 1):.1%})")
    lean.ENABLED = True


if __name__ == "__main__":
    main()
