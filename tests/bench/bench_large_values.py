"""Memory per value: ``python -m tests.bench.bench_large_values [--mib N] [--dir PATH]``.

A file whose sequence item holds an OB of ``--mib`` MiB (300 by default; sparse, so it costs no disk), in explicit
and implicit VR, with defined and with undefined lengths, read by each reader in each mode in a forked process of
its own, after a small file: the peak RSS the large file adds (VmHWM, reset after the small file), what the lean
reader reads of it (``dicom.stream``'s count; pydicom's path reads the value whole wherever it walks the sequence),
and the seconds the read takes. Figures, not assertions: the machine may be shared.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from sendit_watcher.dicom import stream
from tests.bench.bench_classes import _vm, in_child
from tests.large_files import write_file, write_in_sequence
from tests.readers import Instance, quiet_pydicom, read


def measure(folder: Path, use_lean: bool, full_header: bool) -> dict[str, Any]:
    """Run in the forked process: the small file, then the large one."""
    read(str(folder), "small.dcm", full_header, use_lean)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here on (Linux >= 4.0)
    except OSError:
        pass
    base, bytes_before = _vm("VmRSS"), stream.COUNTS["bytes_read"]
    started = time.perf_counter()
    result = read(str(folder), "big.dcm", full_header, use_lean)
    seconds = time.perf_counter() - started
    return {"instance": isinstance(result, Instance), "peak_mb": _vm("VmHWM") - base, "seconds": seconds,
            "read_mb": (stream.COUNTS["bytes_read"] - bytes_before) / (1 << 20)}


def isolated(folder: Path, use_lean: bool, full_header: bool) -> dict[str, Any]:
    """``measure`` in a forked process, so that its peak RSS is its own."""
    return in_child(lambda: measure(folder, use_lean, full_header),
                    f"{folder} (lean={use_lean}, full_header={full_header})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=300, help="the OB value's size in MiB (default 300)")
    parser.add_argument("--dir", type=Path, help="where to write the files (default: a temporary directory)")
    args = parser.parse_args()
    quiet_pydicom()
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        folder = Path(scratch)
        print(f"an OB of {args.mib} MiB in a sequence item; peak RSS added over a small file's, in a fresh process")
        print(f"{'syntax':10}{'lengths':11}{'mode':6}{'pydicom +MB':>13}{'lean +MB':>10}{'lean read MB':>14}"
              f"{'pydicom s':>11}{'lean s':>9}")
        for implicit in (False, True):
            write_file(folder / "small.dcm", "1.2.826.0.1.3680043.10.1919.11.1", implicit=implicit)
            for defined in (True, False):
                write_in_sequence(folder / "big.dcm", "1.2.826.0.1.3680043.10.1919.11.2", "OB", implicit=implicit,
                                  defined=defined, size=args.mib << 20)
                for mode, full_header in (("full", True), ("main", False)):
                    slow, fast = (isolated(folder, use_lean, full_header) for use_lean in (False, True))
                    if not (slow["instance"] and fast["instance"]):
                        raise SystemExit("the large file was not read as an instance")
                    print(f"{'implicit' if implicit else 'explicit':10}{'defined' if defined else 'undefined':11}"
                          f"{mode:6}{slow['peak_mb']:>13,.0f}{fast['peak_mb']:>10,.0f}{fast['read_mb']:>14.2f}"
                          f"{slow['seconds']:>11.3f}{fast['seconds']:>9.4f}")
                (folder / "big.dcm").unlink()


if __name__ == "__main__":
    main()
