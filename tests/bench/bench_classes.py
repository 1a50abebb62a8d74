"""The lean reader against the pydicom path, class by class (tests/bench/classes.py):
``python -m tests.bench.bench_classes [--size smoke|full] [--files N] [--classes A,B] [--repeat N] [--json PATH]``.

For each class, each reader (read_instance with the lean reader enabled or not) and each mode (full header, main
tags only), a forked process of its own reads the class' files: best files/s of ``--repeat`` passes, the files the
lean reader handed back to pydicom (fell back, in the first pass), the files rejected, and the process' peak RSS
(VmHWM, reset when it starts: it starts with this process' memory, the same for all, given below the table;
the corpus is generated and pydicom warmed up before the first fork). Smoke size (a few files a
class) takes seconds; full size is the class' own count (fewer for the large ones). Figures, not assertions: the
machine may be shared.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.bench.classes import CLASSES, FileClass, generate
from tests.readers import Instance, counts, quiet_pydicom, read, reset_counts

SMOKE_FILES = 3
READERS = ("pydicom", "lean")
MODES = {"full": True, "main": False}
_VERSION = 1  # of the generators: a corpus made by another version is made again


def files_for(file_class: FileClass, size: str, files: int | None) -> int:
    if files is not None:
        return files
    return file_class.full_files if size == "full" else (1 if file_class.full_files < 100 else SMOKE_FILES)


def corpus(root: Path, name: str, files: int) -> Path:
    """The folder of ``files`` files of class ``name`` under ``root``, generated unless complete."""
    folder = root / f"{name}-{files}"
    marker = folder / f".complete-v{_VERSION}"
    if not marker.exists():
        for old in folder.glob("*") if folder.exists() else []:
            old.unlink()
        generate(name, folder, files)
        marker.touch()
    return folder


def _vm(field: str) -> float:
    """A VmHWM/VmRSS figure of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(folder: Path, use_lean: bool, full_header: bool, repeat: int) -> dict[str, Any]:
    """Run in the forked process: read every file of ``folder`` ``repeat`` times."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here on (Linux >= 4.0)
    except OSError:
        pass
    base = _vm("VmRSS")
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    reset_counts()
    rejected: Counter[str] = Counter()
    best = 0.0
    for attempt in range(repeat):
        started = time.perf_counter()
        for name in names:
            result = read(str(folder), name, full_header, use_lean)
            if attempt == 0 and not isinstance(result, Instance):
                rejected[result.reason] += 1
        best = max(best, len(names) / (time.perf_counter() - started))
        if attempt == 0:
            answered, fell_back = counts()
    return {"files": len(names), "files_per_second": best, "lean_answered": answered, "fell_back": fell_back,
            "rejected": dict(rejected), "base_rss_mb": base, "peak_rss_mb": _vm("VmHWM")}


def isolated(folder: Path, use_lean: bool, full_header: bool, repeat: int) -> dict[str, Any]:
    """``measure`` in a forked process, so that its peak RSS and the lean reader's caches are its own."""
    return in_child(lambda: measure(folder, use_lean, full_header, repeat),
                    f"{folder} (lean={use_lean}, full_header={full_header})")


def in_child(work: Callable[[], dict[str, Any]], what: str) -> dict[str, Any]:
    """``work()`` in a forked process, its JSON answer read through a pipe; SystemExit naming ``what`` if it fails."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.close(read_end)
            with os.fdopen(write_end, "w") as out:
                json.dump(work(), out)
            code = 0
        except BaseException:  # noqa: BLE001 - reported by the parent as this measurement's failure
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as answer:
        text = answer.read()
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise SystemExit(f"measuring {what} failed: see above")
    result: dict[str, Any] = json.loads(text)
    return result


def table(results: dict[str, Any]) -> str:
    base = statistics.median(run["base_rss_mb"] for c in results["classes"].values() for mode in MODES
                             for run in c[mode].values())
    lines = [f"{results['note']}", "",
             f"{'':24}{'':6}{'':8}{'full header':^33}{'main tags':^33}{'peak RSS MB':^22}",
             f"{'class':24}{'files':>6}{'MB/file':>8}" + f"{'pydicom':>10}{'lean':>8}{'x':>6}{'fell back':>10}" * 2
             + f"{'full p/l':>12}{'main p/l':>11}"]
    notes = []
    for name, c in results["classes"].items():
        line = f"{name:24}{c['files']:>6}{c['bytes_per_file'] / 1e6:>8.2f}"
        for mode in MODES:
            slow, fast = c[mode]["pydicom"], c[mode]["lean"]
            share = fast["fell_back"] / max(fast["lean_answered"] + fast["fell_back"], 1)
            line += (f"{slow['files_per_second']:>10,.0f}{fast['files_per_second']:>8,.0f}"
                     f"{fast['files_per_second'] / slow['files_per_second']:>6.2f}{share:>10.0%}")
            for reader in READERS:
                if c[mode][reader]["rejected"]:
                    notes.append(f"{name}, {mode}, {reader}: rejected {c[mode][reader]['rejected']}")
        line += "".join(f"{c[mode]['pydicom']['peak_rss_mb']:>7.0f}/{c[mode]['lean']['peak_rss_mb']:<4.0f}"
                        for mode in MODES)
        lines.append(line)
    lines += ["", f"files/s: best of {results['repeat']} passes, one process; 'fell back': files the lean reader "
              f"handed to pydicom; peak RSS: VmHWM of the process, which starts at about {base:.0f} MB"]
    return "\n".join(lines + notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("smoke", "full"), default="full")
    parser.add_argument("--files", type=int, help="files a class (default: the class' own at full size, "
                        f"{SMOKE_FILES} (1 for the large classes) at smoke size)")
    parser.add_argument("--classes", help="comma-separated class names; known: " + ", ".join(CLASSES))
    parser.add_argument("--repeat", type=int, help="passes a measurement (default: 3 full, 1 smoke)")
    parser.add_argument("--corpus", type=Path, default=Path("/var/tmp/sendit-watcher-bench-classes"))
    parser.add_argument("--json", type=Path, help="write the figures to this file as JSON too")
    args = parser.parse_args()
    names = list(CLASSES) if not args.classes else [n.strip() for n in args.classes.split(",") if n.strip()]
    unknown = [n for n in names if n not in CLASSES]
    if unknown:
        parser.error(f"unknown class {', '.join(unknown)}; known: {', '.join(CLASSES)}")
    repeat = args.repeat or (3 if args.size == "full" else 1)
    quiet_pydicom()
    results: dict[str, Any] = {"size": args.size, "repeat": repeat, "cores": os.cpu_count(),
                               "python": sys.version.split()[0], "classes": {}}
    import pydicom

    results["pydicom"] = pydicom.__version__
    results["note"] = (f"sendit-watcher header readers by corpus class ({args.size} size), pydicom "
                       f"{pydicom.__version__}, Python {results['python']}, {os.cpu_count()} cores")
    folders = {name: corpus(args.corpus, name, files_for(CLASSES[name], args.size, args.files)) for name in names}
    gc.collect()  # the templates: every measurement forks from the same memory
    first = folders[names[0]]
    for full_header in MODES.values():  # pydicom's lazy imports and dictionaries, before the first fork
        read(str(first), "IM00001.dcm", full_header, False)
    for name, folder in folders.items():
        paths = [p for p in folder.iterdir() if not p.name.startswith(".")]
        entry: dict[str, Any] = {"summary": CLASSES[name].summary, "files": len(paths),
                                 "bytes_per_file": sum(p.stat().st_size for p in paths) / max(len(paths), 1)}
        for mode, full_header in MODES.items():
            entry[mode] = {reader: isolated(folder, reader == "lean", full_header, repeat) for reader in READERS}
        results["classes"][name] = entry
        print(f"  {name}: done", file=sys.stderr, flush=True)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\n(the same as JSON in {args.json})")


if __name__ == "__main__":
    main()
