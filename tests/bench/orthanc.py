"""The peer: Debian's Orthanc with its PostgreSQL index plugin, fed the same files over REST.

Orthanc runs in a network namespace of its own (loopback only), as user postgres so that it reaches the host's
PostgreSQL through its Unix socket with peer authentication; the uploader runs in that namespace too.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

PLUGIN_GLOB = "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so*"
REPO = Path(__file__).resolve().parent.parent.parent


def install() -> None:
    """apt install orthanc orthanc-postgresql, without letting the package start its own daemon."""
    if Path("/usr/sbin/Orthanc").exists() and list(Path("/").glob(PLUGIN_GLOB.lstrip("/"))):
        return
    policy = Path("/usr/sbin/policy-rc.d")
    existed = policy.exists()
    if not existed:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "orthanc", "orthanc-postgresql"],
                       check=True, env=env, stdout=subprocess.DEVNULL)
    finally:
        if not existed:
            policy.unlink()
    subprocess.run(["pkill", "-x", "Orthanc"], check=False)


def version(admin_dir: str = "/var/lib/dpkg") -> str:
    """The installed orthanc and orthanc-postgresql packages' versions, e.g. ``1.10.1 / 4.0`` (Debian revision off)."""
    found = subprocess.run(["dpkg-query", f"--admindir={admin_dir}", "-W", "-f", "${Version} ", "orthanc",
                            "orthanc-postgresql"], capture_output=True, text=True, check=True).stdout.split()
    return " / ".join(v.split(":")[-1].split("+")[0].rsplit("-", 1)[0] for v in found)


@contextmanager
def orthanc_database() -> Iterator[str]:
    """A database of its own for one Orthanc run on the host's PostgreSQL, owned by postgres; dropped after."""
    database = f"orthanc_bench_{uuid.uuid4().hex[:8]}"
    subprocess.run(["runuser", "-u", "postgres", "--", "createdb", database], check=True)
    try:
        yield database
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", "dropdb", "--force", database], check=False)


@contextmanager
def work_directory(files: list[Path]) -> Iterator[Path]:
    """A world-writable directory with ``storage/`` (Orthanc's files) and ``files.txt`` (what to upload)."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as work_dir:
        work = Path(work_dir)
        os.chmod(work, 0o777)
        (work / "storage").mkdir()
        os.chmod(work / "storage", 0o777)
        (work / "files.txt").write_text("\n".join(str(f) for f in files))
        yield work


def write_config(work: Path, plugin: Path, database: str) -> Path:
    """Orthanc's configuration: REST on loopback only, no DICOM server, the index in PostgreSQL over its Unix
    socket as user postgres, the files in ``work/storage``."""
    config = work / "orthanc.json"
    config.write_text(json.dumps({
        "Name": "bench", "StorageDirectory": str(work / "storage"), "IndexDirectory": str(work / "storage"),
        "HttpPort": 8042, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "Plugins": [str(plugin)], "ConcurrentJobs": 2,
        "PostgreSQL": {"EnableIndex": True, "EnableStorage": False, "Host": "/var/run/postgresql",
                       "Port": 5432, "Database": database, "Username": "postgres", "Password": ""},
    }))
    return config


def files_per_second(result: subprocess.CompletedProcess[str], work: Path) -> float:
    """The uploader's figure from its output, or an error with the tail of Orthanc's log."""
    if result.returncode != 0:
        log = (work / "orthanc.log").read_text()[-2000:] if (work / "orthanc.log").exists() else ""
        raise RuntimeError(f"Orthanc run failed: {result.stderr[-2000:]}\n{log}")
    rates = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("FILES_PER_SECOND ")]
    if not rates:
        raise RuntimeError(f"no figure from the uploader: {result.stdout[-1000:]} {result.stderr[-1000:]}")
    return float(rates[-1])


def measure_orthanc(files: list[Path], threads: int) -> float:
    """Debian 12's Orthanc (installed on the host if missing), in a network namespace of its own."""
    install()
    plugin = sorted(Path("/").glob(PLUGIN_GLOB.lstrip("/")))[0]
    with orthanc_database() as database, work_directory(files) as work:
        config = write_config(work, plugin, database)
        script = (f"ip link set lo up; runuser -u postgres -- /usr/sbin/Orthanc {config} "
                  f">{work}/orthanc.log 2>&1 & orthanc=$!; "
                  f"PYTHONPATH={REPO} {sys.executable} -m tests.bench.orthanc upload {work}/files.txt {threads}; "
                  f"status=$?; kill $orthanc; wait; exit $status")
        result = subprocess.run(["unshare", "--net", "bash", "-c", script], capture_output=True, text=True,
                                timeout=3600)
        return files_per_second(result, work)


def _post_all(paths: list[str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", 8042, timeout=60)
    for path in paths:
        conn.request("POST", "/instances", body=Path(path).read_bytes(),
                     headers={"Content-Type": "application/dicom"})
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"Orthanc answered {response.status} for {path}")
    return len(paths)


def upload(listing: Path, threads: int) -> float:
    """POST every file to Orthanc from ``threads`` threads; returns files/s (all of them stored, checked)."""
    paths = listing.read_text().split("\n")
    deadline = time.monotonic() + 60
    while True:
        try:
            http.client.HTTPConnection("127.0.0.1", 8042, timeout=2).request("GET", "/system")
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    time.sleep(1)
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        sent = sum(pool.map(_post_all, [paths[k::threads] for k in range(threads)]))
    rate = sent / (time.perf_counter() - started)
    _check_stored(len(paths))
    return rate


def _get(path: str) -> object:
    conn = http.client.HTTPConnection("127.0.0.1", 8042, timeout=60)
    conn.request("GET", path)
    return json.loads(conn.getresponse().read())


def _check_stored(expected: int) -> None:
    """The figure counts only if the index is PostgreSQL's and holds every file once."""
    plugins = _get("/plugins")
    if not isinstance(plugins, list) or "postgresql-index" not in plugins:
        raise RuntimeError(f"Orthanc runs without its PostgreSQL index (plugins: {plugins})")
    statistics = _get("/statistics")
    if not isinstance(statistics, dict) or statistics.get("CountInstances") != expected:
        raise RuntimeError(f"Orthanc holds {statistics} instances, not {expected}")


if __name__ == "__main__" and sys.argv[1:2] == ["upload"]:
    print(f"FILES_PER_SECOND {upload(Path(sys.argv[2]), int(sys.argv[3]))}", flush=True)
