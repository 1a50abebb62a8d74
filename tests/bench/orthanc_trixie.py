"""The peer of today: Debian 13's Orthanc with its PostgreSQL index plugin, in a systemd-nspawn container.

The container is plain (not booted): Debian 13's image from the e2e cache (tests/e2e/run builds it) with
``apt-get install orthanc orthanc-postgresql``, built once and cached as ``$SENDIT_E2E_CACHE/orthanc-trixie``;
each run gets a throwaway overlay over it. It has a loopback-only network of its own. Orthanc runs as the host's
postgres user (same uid, no user namespace) and reaches the host's PostgreSQL through its Unix socket, bound in,
so that its index lives on the same server as every other figure's; the uploader of tests/bench/orthanc.py runs
inside with the container's python3. ``python -m tests.bench.orthanc_trixie --repeat N`` measures Debian 12's
Orthanc (tests/bench/orthanc.py) and this one alternately on the benchmark corpus and prints median and range.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from tests.bench.orthanc import (
    PLUGIN_GLOB,
    REPO,
    files_per_second,
    measure_orthanc,
    orthanc_database,
    version,
    work_directory,
    write_config,
)

CACHE = Path(os.environ.get("SENDIT_E2E_CACHE", "/var/cache/sendit-watcher-e2e"))
IMAGE = CACHE / "orthanc-trixie"
NSPAWN = ["systemd-nspawn", "-q", "--register=no", "--keep-unit", "--console=pipe",
          "--setenv=DEBIAN_FRONTEND=noninteractive"]
INSTALL = """set -e
printf '#!/bin/sh\\nexit 101\\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d
apt-get update -qq
apt-get install -y -qq --no-install-recommends orthanc orthanc-postgresql >/dev/null
rm /usr/sbin/policy-rc.d; apt-get clean; rm -rf /var/lib/apt/lists/*
"""


def base_image() -> Path:
    """The e2e cache's Debian 13 runtime image (systemd, python3), unpacked."""
    for rootfs in sorted(CACHE.glob("trixie-*.rootfs")):
        if (rootfs / "usr/bin/python3").exists() and (rootfs / "usr/bin/apt-get").exists():
            return rootfs
    raise RuntimeError(f"no Debian 13 image in {CACHE}: run `tests/e2e/run trixie` once (it builds and caches it)")


def image() -> Path:
    """The cached Debian 13 image with Orthanc and its PostgreSQL plugin, built on first use."""
    if (IMAGE / "usr/sbin/Orthanc").exists():
        return IMAGE
    part = IMAGE.with_name(IMAGE.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    subprocess.run(["cp", "-a", "--reflink=auto", str(base_image()), str(part)], check=True)
    result = subprocess.run([*NSPAWN, "-D", str(part), "/bin/bash", "-c", INSTALL], capture_output=True,
                            text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"apt-get install orthanc orthanc-postgresql in {part} failed:\n"
                           f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
    part.rename(IMAGE)
    return IMAGE


def trixie_version() -> str:
    return version(str(image() / "var/lib/dpkg"))


def measure_orthanc_trixie(files: list[Path], threads: int) -> float:
    """files/s of Debian 13's Orthanc given ``files`` over REST from ``threads`` threads (fresh index)."""
    root = image()
    plugin = sorted(root.glob(PLUGIN_GLOB.lstrip("/")))[0]
    postgres = pwd.getpwnam("postgres")
    corpus = Path(os.path.commonpath([str(f.parent) for f in files]))
    with orthanc_database() as database, work_directory(files) as work:
        config = write_config(work, Path("/") / plugin.relative_to(root), database)
        script = (f"setpriv --reuid={postgres.pw_uid} --regid={postgres.pw_gid} --clear-groups "
                  f"/usr/sbin/Orthanc {config} >{work}/orthanc.log 2>&1 & orthanc=$!; "
                  f"PYTHONPATH=/bench python3 -m tests.bench.orthanc upload {work}/files.txt {threads}; "
                  f"status=$?; kill $orthanc; wait; exit $status")
        result = subprocess.run([*NSPAWN, "-D", str(root), "--volatile=overlay", "--private-network", "--as-pid2",
                                 "--bind=/run/postgresql", f"--bind={work}",
                                 f"--bind-ro={corpus}", f"--bind-ro={REPO}:/bench", "/bin/bash", "-c", script],
                                capture_output=True, text=True, timeout=3600)
        return files_per_second(result, work)


def main() -> None:
    from tests.bench.corpus import build

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--folders", type=int, default=200)
    parser.add_argument("--corpus", type=Path, default=Path("/var/tmp/sendit-watcher-bench"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    folders = build(args.corpus / f"{args.files}-{args.folders}", args.files, args.folders)
    files = [p for folder in folders for p in sorted(folder.iterdir())]
    peers = {f"Orthanc {version()} (Debian 12, host)": measure_orthanc,
             f"Orthanc {trixie_version()} (Debian 13, container)": measure_orthanc_trixie}
    rates: dict[str, list[float]] = {label: [] for label in peers}
    for run in range(args.repeat):
        for label, measure in peers.items():
            rates[label].append(measure(files, args.threads))
            print(f"run {run + 1}: {label}: {rates[label][-1]:,.0f} files/s; loadavg "
                  f"{Path('/proc/loadavg').read_text().split()[0]}", flush=True)
            time.sleep(1)
    print(f"\n{len(files):,} files, REST upload from {args.threads} threads, {args.repeat} runs each:")
    for label, values in rates.items():
        print(f"{label:<50} median {statistics.median(values):>6,.0f} files/s, "
              f"range {min(values):,.0f}-{max(values):,.0f}")


if __name__ == "__main__":
    main()
