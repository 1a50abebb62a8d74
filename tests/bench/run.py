"""Every performance figure in one run on one corpus: ``python -m tests.bench.run [--peer orthanc]``.

Generates the corpus if missing (pydicom's CT_small/MR_small cloned with fresh UIDs), then measures: the parse
floor (1 and N processes), a naive importer (dcmread + one INSERT per file, N processes), sendit-watcher end
to end through the running service (every folder renamed from NAME.tmp; the clock stops when the last batch
is committed) with the full header off and on, the service's peak RSS per process idle and in the burst, the
catch-up scan over the imported corpus, the rename-to-commit latency of single 100-file folders, and with
``--peer orthanc`` Debian's Orthanc with its PostgreSQL index on the same files: Debian 12's on the host
(tests/bench/orthanc.py) and Debian 13's in a container (tests/bench/orthanc_trixie.py), the last column taken
against Debian 12's (Debian 13's row then reads as the ratio of the two). Prints one table and writes the same
as JSON. Figures, not assertions.

``--mix``: the realistic mix instead of the clones (tests/bench/corpus.py's MIX: by files, half explicit VR CT,
a quarter implicit VR CT with GE privates, a quarter enhanced MR of 200 frames; a series a folder), with the
header's storage cost per instance after each service run. ``--service-only``: the parse floor with every
process and the service in both modes, nothing else.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pydicom

from sendit_watcher.config import DatabaseConfig
from tests.bench.bench_import import parse_floor
from tests.bench.bench_latency import measure as latency
from tests.bench.bench_storage import footprint, report, series_split
from tests.bench.corpus import build, build_mix
from tests.bench.scratch import scratch_database
from tests.fix_service import ServiceProcess
from tests.helpers import write_config

# --- the naive importer: what a first script does ---

_naive: dict[str, Any] = {}


def _naive_start(dsn: str) -> None:
    _naive["conn"] = psycopg.connect(dsn)


def _naive_folder(folder: str) -> int:
    conn = _naive["conn"]
    files = sorted(os.listdir(folder))
    for name in files:
        ds = pydicom.dcmread(os.path.join(folder, name), stop_before_pixels=True)
        conn.execute("INSERT INTO naive (sop_instance_uid, series_instance_uid, study_instance_uid, patient_id, "
                     "modality, path) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                     (str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID),
                      str(ds.get("PatientID", "")), str(ds.get("Modality", "")), os.path.join(folder, name)))
    conn.commit()
    return len(files)


def naive_import(dsn: str, folders: list[Path], processes: int) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE naive (sop_instance_uid text PRIMARY KEY, series_instance_uid text, "
                     "study_instance_uid text, patient_id text, modality text, path text)")
    started = time.perf_counter()
    with multiprocessing.get_context("forkserver").Pool(processes, _naive_start, (dsn,)) as pool:
        files = sum(pool.imap_unordered(_naive_folder, [str(f) for f in folders]))
    return files / (time.perf_counter() - started)


# --- the service, end to end ---

def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class RssSampler:
    """Peak RSS of the service's main process and of each worker, sampled every 50 ms."""

    def __init__(self, service: ServiceProcess) -> None:
        self.service = service
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        pids = {"main": self.service.process.pid} | {f"worker {n}": pid
                                                     for n, pid in enumerate(self.service.worker_pids())}
        for name, pid in pids.items():
            self.peaks[name] = max(self.peaks.get(name, 0.0), rss_mb(pid))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(0.05)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def service_run(dsn: str, folders: list[Path], files: int, processes: int, full_header: bool,
                work: Path, storage: bool = False) -> dict[str, Any]:
    incoming = work / "incoming"
    incoming.mkdir()
    database = DatabaseConfig(dsn=dsn, schema=f"svc_{uuid.uuid4().hex[:8]}")
    config = write_config(work / "watcher.conf", database, {"incoming": incoming}, workers=processes,
                          log_level="info", full_header="yes" if full_header else "no")
    service = ServiceProcess(config, work)
    result: dict[str, Any] = {}
    try:
        service.wait_ready()
        for folder in folders:
            folder.rename(incoming / f"{folder.name}.tmp")
        time.sleep(2)
        idle = RssSampler(service)
        idle.sample()
        result["rss_idle_mb"] = idle.peaks
        with RssSampler(service) as burst, psycopg.connect(dsn, options=f"-c search_path={database.schema}") as conn:
            started = time.perf_counter()
            for folder in folders:
                (incoming / f"{folder.name}.tmp").rename(incoming / folder.name)
            while conn.execute("SELECT count(*) FROM batch WHERE status = 'done'").fetchone() != (len(folders),):
                conn.rollback()
                time.sleep(0.02)
            result["seconds"] = time.perf_counter() - started
            if storage:
                result["storage"] = footprint(conn)
                result["series_split"] = series_split(conn) if full_header else []
        result["rss_burst_mb"] = burst.peaks
        result["files_per_second"] = files / result["seconds"]
        service.stop()
        # The catch-up over the imported corpus, by stat alone; a scan that finds nothing logs its line at debug.
        again = ServiceProcess(write_config(work / "catch-up.conf", database, {"incoming": incoming},
                                            workers=processes, log_level="debug",
                                            full_header="yes" if full_header else "no"), work)
        again.wait_ready()
        match = None
        deadline = time.monotonic() + 120
        while match is None and time.monotonic() < deadline:
            match = re.search(r"catch-up scan: (\d+) folders in ([0-9.]+) s; (\d+) to import", again.log)
            time.sleep(0.1)
        again.stop()
        assert match is not None, again.log[-2000:]
        result["catch_up_seconds"] = float(match[2])
        result["catch_up_to_import"] = int(match[3])
    finally:
        service.kill()
        for folder in folders:
            for name in (folder.name, f"{folder.name}.tmp"):
                if (incoming / name).exists():
                    (incoming / name).rename(folder)
    return result


# --- Orthanc, Debian 12's and Debian 13's, with its PostgreSQL index ---

def orthanc_run(folders: list[Path], threads: int) -> dict[str, Any]:
    from tests.bench.orthanc import measure_orthanc, version
    from tests.bench.orthanc_trixie import measure_orthanc_trixie, trixie_version

    files = [p for folder in folders for p in sorted(folder.iterdir())]
    return {"orthanc": measure_orthanc(files, threads), "orthanc_version": version(),
            "orthanc_trixie": measure_orthanc_trixie(files, threads), "orthanc_trixie_version": trixie_version()}


def table(results: dict[str, Any], processes: int, files: int, folders: int) -> str:
    floor = results["parse_floor_n"]
    if "naive" not in results:  # --service-only
        return "\n".join([f"{files:,} files in {folders} folders, {os.cpu_count()} cores", "",
                          f"{'':<50}{'files/s':>9}  {'x floor':>8}",
                          f"{f'parse floor, {processes} processes':<50}{floor:>9,.0f}  {1:>8.2f}"] + [
            f"{label:<50}{results[key]['files_per_second']:>9,.0f}  "
            f"{results[key]['files_per_second'] / floor:>8.2f}"
            for label, key in (("sendit-watcher end to end, main tags only", "service_main"),
                               ("sendit-watcher end to end, full header", "service_full"))])
    rows = [("parse floor, 1 process", results["parse_floor_1"]), (f"parse floor, {processes} processes", floor),
            (f"naive importer (dcmread + INSERT per file), {processes} processes", results["naive"]),
            ("sendit-watcher end to end, main tags only", results["service_main"]["files_per_second"]),
            ("sendit-watcher end to end, full header", results["service_full"]["files_per_second"])]
    if "orthanc" in results:
        rows += [(f"Orthanc {results['orthanc_version']} + PostgreSQL index, Debian 12, REST upload, 2 threads",
                  results["orthanc"]),
                 (f"Orthanc {results['orthanc_trixie_version']} + PostgreSQL index, Debian 13, REST upload, 2 threads",
                  results["orthanc_trixie"])]
    lines = [f"{files:,} files in {folders} folders, {os.cpu_count()} cores", "",
             f"{'':<72}{'files/s':>9}  {'x floor':>8}  {'x naive':>8}" + ("  x Orthanc" if "orthanc" in results
                                                                             else "")]
    for label, rate in rows:
        line = f"{label:<72}{rate:>9,.0f}  {rate / floor:>8.2f}  {rate / results['naive']:>8.2f}"
        if "orthanc" in results:
            line += f"  {rate / results['orthanc']:>9.1f}"
        lines.append(line)
    lat = results["latency"]
    lines += ["", f"100-file folder, rename -> committed + NOTIFY: p50 {lat['p50']:.3f} s, p99 {lat['p99']:.3f} s",
              "peak RSS (MB), idle / burst: " + ", ".join(
                  f"{name} {results['service_full']['rss_idle_mb'].get(name, 0):.0f} / {peak:.0f}"
                  for name, peak in results["service_full"]["rss_burst_mb"].items()),
              f"catch-up scan over the imported corpus: {results['service_full']['catch_up_seconds']:.2f} s "
              f"({results['service_full']['catch_up_seconds'] / results['service_full']['seconds']:.3f} of the "
              f"import time; {results['service_full']['catch_up_to_import']} folders re-queued)"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--folders", type=int, default=200)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--corpus", type=Path, default=Path("/var/tmp/sendit-watcher-bench"))
    parser.add_argument("--latency-folders", type=int, default=30)
    parser.add_argument("--peer", choices=("orthanc",), action="append", default=[])
    parser.add_argument("--json", type=Path, default=Path("/var/tmp/sendit-watcher-bench.json"))
    parser.add_argument("--mix", action="store_true", help="the realistic mix of classes, not the clones")
    parser.add_argument("--service-only", action="store_true", help="the parse floor and the service, no more")
    args = parser.parse_args()
    if args.mix:
        folders = build_mix(args.corpus / f"mix-{args.files}-{args.folders}", args.files, args.folders)
    else:
        folders = build(args.corpus / f"{args.files}-{args.folders}", args.files, args.folders)
    files = sorted(str(p) for folder in folders for p in folder.iterdir() if not p.name.startswith("."))
    n = args.processes
    results: dict[str, Any] = {"files": len(files), "folders": len(folders), "cores": os.cpu_count(),
                               "corpus": "mix" if args.mix else "clones", "load_before": os.getloadavg()}
    if not args.service_only:
        results["parse_floor_1"] = parse_floor(files, 1)
    results["parse_floor_n"] = parse_floor(files, n)
    with scratch_database() as dsn:
        if not args.service_only:
            results["naive"] = naive_import(dsn, folders, n)
        for key, full in (("service_main", False), ("service_full", True)):
            with tempfile.TemporaryDirectory(dir=folders[0].parent) as work:
                results[key] = service_run(dsn, folders, len(files), n, full, Path(work), args.mix)
        results["load_after"] = os.getloadavg()
        if args.service_only:
            return _print(results, args, n, len(files), len(folders))
        with tempfile.TemporaryDirectory() as work:
            samples = sorted(latency(args.latency_folders, 100, Path(work), dsn, True))
        results["latency"] = {"p50": statistics.median(samples),
                              "p99": samples[min(len(samples) - 1, round(0.99 * (len(samples) - 1)))]}
    if "orthanc" in args.peer:
        results |= orthanc_run(folders, 2)
    _print(results, args, n, len(files), len(folders))


def _print(results: dict[str, Any], args: argparse.Namespace, processes: int, files: int, folders: int) -> None:
    print(table(results, processes, files, folders))
    for key, label in (("service_main", "main tags only"), ("service_full", "full header")):
        if "storage" in results[key]:
            print(f"\nheader storage, {label}:\n" + report(results[key]["storage"], results[key]["series_split"]))
    print(f"\nload average (1, 5, 15 min) before: {results['load_before']}, after the service runs: "
          f"{results['load_after']}")
    args.json.write_text(json.dumps(results, indent=2))
    print(f"\n(the same as JSON in {args.json})")


if __name__ == "__main__":
    main()
