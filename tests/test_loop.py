"""The loop, races, memory and secrets: the event loop survives names and reloads,
an ad-hoc import is never taken by a running service, a worker never claims a root it lacks, the import's memory
is bounded, and the DSN keeps its secrets and the operator's settings."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pydicom

from sendit_watcher.config import DatabaseConfig
from sendit_watcher.db import Connection, connect
from tests.fix_service import REPO, ServiceProcess
from tests.helpers import (
    batch_rows,
    done,
    drop_study,
    make_study,
    pydicom_test_files,
    scalar,
    scalar_int,
    wait_until,
    write_config,
)


def cli(config: Path, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sendit_watcher", "--config", str(config), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def status_lines(service: ServiceProcess) -> int:
    return sum(1 for line in service.notify.fields() if line.startswith("STATUS="))


def still_serving(service: ServiceProcess, conn: Connection, root: Path, name: str) -> None:
    """The loop is alive: a folder dropped now is imported and a new STATUS line follows it."""
    before = status_lines(service)
    drop_study(root, name, 2)
    wait_until(done(conn, name, 2), timeout=30, what=f"{name} imported; log tail:\n{service.log[-3000:]}")
    wait_until(lambda: status_lines(service) > before, timeout=10, what="a new STATUS line")
    assert service.process.poll() is None, "the service exited"


# --- item 5: the event loop survives ----------------------------------------------------------------------------


def test_a_batch_folder_whose_name_is_not_utf8_is_imported(services: Callable[..., ServiceProcess], conn: Connection,
                                                          tmp_path: Path, database: DatabaseConfig,
                                                          incoming: Path) -> None:
    """A folder b"bad\\xff\\xfe.tmp" renamed to b"bad\\xff\\xfe": imported, its name stored escaped."""
    service = services(write_config(tmp_path / "watcher.conf", database, {"incoming": incoming}))
    temporary = os.fsencode(incoming) + b"/bad\xff\xfe.tmp"
    os.mkdir(temporary)
    make_study(Path(os.fsdecode(temporary)), 2)
    os.rename(temporary, os.fsencode(incoming) + b"/bad\xff\xfe")

    def bad() -> list[tuple[str, str, int]]:
        rows = conn.execute("SELECT path, status, instances FROM batch WHERE path LIKE 'bad%'").fetchall()
        conn.rollback()
        return [(str(p), str(s), int(i)) for p, s, i in rows]

    wait_until(lambda: [r[1:] for r in bad()] == [("done", 2)], timeout=30,
               what=f"the non-UTF-8 folder imported; batches {batch_rows(conn)}; log tail:\n{service.log[-3000:]}")
    path = bad()[0][0]
    assert "ff" in path.lower() and "fe" in path.lower() and "\ufffd" not in path, path  # escaped, not replaced
    still_serving(service, conn, incoming, "after-bad-name")


def test_a_reload_that_drops_a_root_with_a_settling_folder(services: Callable[..., ServiceProcess], conn: Connection,
                                                           tmp_path: Path, database: DatabaseConfig,
                                                           incoming: Path) -> None:
    """SIGHUP with a conffile without a root while one of its folders settles (created under
    its final name, files still arriving): the service stays up and the remaining root imports."""
    gone = tmp_path / "gone"
    gone.mkdir()
    config = write_config(tmp_path / "watcher.conf", database, {"incoming": incoming, "gone": gone},
                          settle_seconds=1)
    service = services(config)
    source = tmp_path / "source"
    make_study(source, 12)
    settling = gone / "SETTLING"
    settling.mkdir()
    stop = threading.Event()

    def arrive() -> None:  # a slow copy: one file every 0.25 s, until told to stop or out of files
        for file in sorted(source.iterdir()):
            if stop.wait(0.25):
                return
            (settling / file.name).write_bytes(file.read_bytes())

    writer = threading.Thread(target=arrive)
    writer.start()
    try:
        wait_until(lambda: len(list(settling.iterdir())) >= 2, timeout=10, what="files arriving")
        write_config(config, database, {"incoming": incoming}, settle_seconds=1)
        service.signal(signal.SIGHUP)
        wait_until(lambda: "reloaded" in service.log, timeout=20, what=f"the reload; log:\n{service.log[-3000:]}")
        writer.join(10)
    finally:
        stop.set()
        writer.join()
    time.sleep(2)  # more than the settle period: the dropped root's folder would settle now
    assert service.process.poll() is None, f"the service died; log tail:\n{service.log[-3000:]}"
    still_serving(service, conn, incoming, "after-reload")
    assert "gone" not in {str(r) for (r,) in conn.execute("SELECT DISTINCT root FROM batch")}
    conn.rollback()


# --- item 11: races and claims ----------------------------------------------------------------------------------


def test_an_ad_hoc_import_is_never_taken_by_a_running_service(services: Callable[..., ServiceProcess],
                                                               conn: Connection, tmp_path: Path,
                                                               database: DatabaseConfig, incoming: Path) -> None:
    """`import FOLDER` of a folder under a watch root, 25 times with a service running on the
    same database: every batch is imported by the command line's host; so are 4 folders of one command. (The
    folders end in .tmp so that the service never queues them itself: only the command line creates their rows.)"""
    roots = {"incoming": incoming}
    services(write_config(tmp_path / "service.conf", database, roots, workers=2, host="service-host"))
    command_line = write_config(tmp_path / "cli.conf", database, roots, host="cli-host")
    names = [f"ADHOC{n:02d}.tmp" for n in range(25)]
    together = [f"TOGETHER{n:02d}.tmp" for n in range(4)]  # one command: each waits its turn, visible to all
    for name in names:
        make_study(incoming / name, 1)
    for name in together:  # large enough that the service's workers look for work while they wait
        make_study(incoming / name, 400)
    outcomes = []
    for name in names:
        result = cli(command_line, "import", "--json", "--processes", "2", incoming / name)
        assert result.returncode == 0, result.stdout + result.stderr
        outcomes.append(json.loads(result.stdout))
    result = cli(command_line, "import", "--json", "--processes", "1", *(incoming / name for name in together))
    assert result.returncode == 0, result.stdout + result.stderr
    outcomes += [json.loads(line) for line in result.stdout.splitlines()]
    # A batch the service took first is "unchanged" for the command line (which then records its own host).
    not_imported_here = [(o["path"], o.get("unchanged"), o.get("new_instances")) for o in outcomes
                         if o.get("unchanged") or o.get("new_instances") != o.get("files")]
    rows = {str(p): (str(s), h, int(i)) for p, s, h, i in conn.execute(
        "SELECT path, status, host, imports FROM batch").fetchall()}
    conn.rollback()
    taken = {name: row for name, row in rows.items() if row[0] != "done" or row[1:] != ("cli-host", 1)}
    assert not_imported_here == [], f"imported by the service, not the command line: {not_imported_here}"
    assert set(rows) == set(names + together) and taken == {}, f"not imported (once) by cli-host: {taken}"


def test_a_worker_never_claims_a_root_it_does_not_have(services: Callable[..., ServiceProcess], conn: Connection,
                                                       tmp_path: Path, database: DatabaseConfig,
                                                       incoming: Path) -> None:
    """A worker-only host without root 'other' leaves other's batches queued; a host that has
    the root imports them."""
    other = tmp_path / "other"
    other.mkdir()
    both = {"incoming": incoming, "other": other}
    services(write_config(tmp_path / "watcher.conf", database, both, role="watcher", host="watcher-host"))
    services(write_config(tmp_path / "worker.conf", database, {"incoming": incoming}, role="worker",
                          host="lacks-other", workers=1))
    drop_study(other, "THERE", 2)
    drop_study(incoming, "HERE", 2)
    wait_until(done(conn, "HERE", 2), timeout=30, what="HERE imported by the worker host")
    assert scalar(conn, "SELECT host FROM batch WHERE path = 'HERE'") == "lacks-other"
    time.sleep(4)  # the worker without 'other' may not touch THERE in this time

    def there() -> tuple[str, str | None]:
        row = conn.execute("SELECT status, host FROM batch WHERE root = 'other' AND path = 'THERE'").fetchone()
        conn.rollback()
        return (str(row[0]), row[1]) if row else ("", None)

    assert there() == ("queued", None), f"THERE was claimed by a host without its root: {there()}"
    services(write_config(tmp_path / "has-other.conf", database, both, role="worker", host="has-other", workers=1))
    wait_until(lambda: there() == ("done", "has-other"), timeout=30, what=f"THERE imported by has-other: {there()}")


# --- item 12: bounded memory ------------------------------------------------------------------------------------


def big_header_files(folder: Path, files: int, size: int) -> None:
    """``files`` CT images, each with a UT TextValue of ``size`` characters above the pixel data (UT, not LT: an
    LT value is cut to the 10,240 characters the standard allows, so it would not make a large header)."""
    placeholder = "1.2.826.0.1.3680043.10.77." + "9" * 34
    ds = pydicom.dcmread(pydicom_test_files() / "CT_small.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = placeholder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.add_new(0x0040A160, "UT", ("0123456789abcdef" * (size // 16 + 1))[:size])
        buffer = io.BytesIO()
        ds.save_as(buffer)
    template = buffer.getvalue()
    assert template.count(placeholder.encode()) == 2
    folder.mkdir()
    for n in range(files):
        uid = f"1.2.826.0.1.3680043.10.77.1{n:033d}"
        (folder / f"IM{n:05d}.dcm").write_bytes(template.replace(placeholder.encode(), uid.encode()))


def test_import_memory_is_bounded(tmp_path: Path, database: DatabaseConfig, conn: Connection,
                                  figures: Callable[[str], None]) -> None:
    """200 files with 1 MB headers, `import --processes 2`, full header, and a slow COPY (the
    import's PostgreSQL backend paused with SIGSTOP for 6 s while the files are parsed): peak RSS < 150 MB."""
    folder = tmp_path / "MEMORY"
    big_header_files(folder, 200, 1 << 20)
    config = write_config(tmp_path / "watcher.conf", database, {}, full_header="yes")
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "sendit_watcher", "--config", str(config), "import", "--json",
                                "--processes", "2", str(folder)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    status = Path(f"/proc/{process.pid}/status")
    peak_kb, paused, resumed = 0, [], None
    # This import's backends only: the session's database also holds the connections of earlier tests' services,
    # some of them still going away (a root check's, a killed worker's).
    busy = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND application_name IN ('sendit-watcher', 'sendit-watcher import') AND state <> 'idle'")
    backends = ("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND application_name IN ('sendit-watcher', 'sendit-watcher import')")
    try:
        while process.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak_kb = max(peak_kb, int(line.split()[1]))
            except (OSError, ValueError):
                pass
            if resumed is None and scalar_int(conn, busy) > 0:  # the import's backends: every one paused
                paused = [int(pid) for (pid,) in conn.execute(backends).fetchall()]
                conn.rollback()
                resumed = time.monotonic() + 6
                for pid in paused:
                    os.kill(pid, signal.SIGSTOP)
            if paused and resumed is not None and time.monotonic() > resumed:
                for pid in paused:
                    os.kill(pid, signal.SIGCONT)
                paused = []
            time.sleep(0.05)
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
    out, err = process.communicate()
    peak = peak_kb / 1024
    figures(f"import of 200 files with 1 MB headers, --processes 2, COPY paused 6 s: peak RSS {peak:.0f} MB "
            f"(limit 150 MB), {time.monotonic() - started:.1f} s")
    assert resumed is not None, "the import's backend was never seen busy: nothing was paused"
    assert process.returncode == 0, err[-3000:]
    assert json.loads(out)["instances"] == 200
    assert peak < 150, f"peak RSS {peak:.0f} MB"


# --- item 10: secrets and the operator's settings ---------------------------------------------------------------


def test_an_unquoted_password_with_a_space_is_never_printed(tmp_path: Path) -> None:
    """`password=Tr0ub4dor horse-battery-staple` in the dsn: check-config and status never show
    any part of it (libpq's parse error echoes the fragment)."""
    (tmp_path / "in").mkdir()
    database = DatabaseConfig(dsn="host=127.0.0.1 port=9 user=someone password=Tr0ub4dor horse-battery-staple",
                              schema="s")
    config = write_config(tmp_path / "watcher.conf", database, {"in": tmp_path / "in"})
    for args in (("check-config",), ("status",), ("status", "--json")):
        result = cli(config, *args, timeout=60)
        printed = result.stdout + result.stderr
        assert "horse-battery-staple" not in printed and "Tr0ub4dor" not in printed, (args, printed)
        assert "Traceback" not in printed, printed


def test_the_operators_options_in_the_dsn_are_kept(database: DatabaseConfig) -> None:
    """`options=-c statement_timeout=12345` in the dsn survives our own session settings."""
    mine = DatabaseConfig(dsn=f"{database.dsn} options='-c statement_timeout=12345'", schema=database.schema)
    with connect(mine) as conn:
        assert scalar(conn, "SHOW statement_timeout") == "12345ms"
        assert scalar(conn, "SELECT current_schema()") == database.schema
        assert scalar(conn, "SHOW search_path") == database.schema
