"""The recipes of README "Connecting a DICOM receiver", each with the real program against the
running service: DCMTK storescp (spool + --exec-on-eostudy mv, straight into the root with a pause, with
--rename-on-eostudy), pynetdicom's storescp, rsync (NAME.tmp + mv, and plain), cp -r, mv from a tmpfs, and the
finished_marker rule. Each checks: every SOP instance sent is one instance row at an existing path, nothing stuck,
no stale rows (the mirror), the finished batches per study the recipe promises, and the latency from the last
file to the commit (printed in the figures section)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sendit_watcher.db import Connection
from sendit_watcher.names import to_disk
from tests.fix_service import ServiceProcess
from tests.helpers import assert_mirror, make_study, scalar, wait_until

SETTLE = 1.0  # settle_seconds of the service under test
FILES = 20  # instances per study
PYNETDICOM_PYTHON = os.environ.get("SENDIT_PYNETDICOM_PYTHON",
                                   "/root/.cache/sendit-watcher/venv-pypi-114362149cc0/bin/python")
Figures = Callable[[str], None]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def accepting(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


@contextmanager
def receiver(command: list[str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A DICOM receiver (the real program) listening on ``port``; stopped (by its pid) after the block."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: accepting(port) or process.poll() is not None, timeout=30, what=f"{command[0]} up")
            assert process.poll() is None, f"{command} exited: {log.read_text(errors='replace')}"
            yield process
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def storescu(port: int, files: list[Path]) -> None:
    """DCMTK's storescu: one association sending ``files`` (CT_small clones, explicit VR little endian)."""
    subprocess.run(["storescu", "-aec", "STORESCP", "127.0.0.1", str(port), *map(str, files)], check=True,
                   capture_output=True, timeout=60)


@pytest.fixture
def start(start_service: Callable[..., ServiceProcess]) -> Callable[..., ServiceProcess]:
    """Start the service watching ``incoming`` (settle_seconds 1, one worker; ``extra`` conffile text)."""
    def run(extra: str = "", **options: object) -> ServiceProcess:
        return start_service(extra, **{"workers": 1, "settle_seconds": SETTLE, "linger_seconds": 30, **options})

    return run


def studies(source: Path, count: int, files: int = FILES) -> list[tuple[Path, list[str]]]:
    """``count`` studies of ``files`` instances each, in source/S0, S1, ...: (folder, SOPInstanceUIDs)."""
    return [(source / f"S{n}", make_study(source / f"S{n}", files)) for n in range(count)]


def all_stored(conn: Connection, sent: list[str]) -> Callable[[], bool]:
    def check() -> bool:
        stored = scalar(conn, "SELECT count(*) FROM instance WHERE sop_instance_uid = ANY(%s)", sent)
        busy = scalar(conn, "SELECT count(*) FROM batch WHERE status IN ('queued', 'importing')")
        return stored == len(sent) and busy == 0
    return check


def last_arrival(folder: Path) -> float:
    """When the last file landed under its name: the newest ctime (rsync -a, cp -p and mv keep the sender's
    mtime; a rename sets the ctime)."""
    return max(os.lstat(os.path.join(d, n)).st_ctime for d, _, names in os.walk(folder) for n in names)


def verify(conn: Connection, roots: dict[str, Path], sent: list[list[str]], recipe: str, figures: Figures,
           batches: Callable[[int], bool], promise: str, *, marker: str = "", quiet: float = SETTLE + 1.5,
           last_file: float | None = None) -> list[int]:
    """Wait for every instance sent, then (after ``quiet`` seconds in which nothing more may happen) check the
    recipe's promises; returns the finished batches of each study."""
    everything = [uid for study in sent for uid in study]
    wait_until(all_stored(conn, everything), timeout=60, what=f"{recipe}: all {len(everything)} instances stored")
    time.sleep(quiet)  # nothing more may happen: no extra batch, no late import
    assert scalar(conn, "SELECT count(*) FROM batch WHERE status NOT IN ('done', 'empty')") == 0, "stuck or failed"
    assert scalar(conn, "SELECT count(*) FROM instance") == len(everything), "an instance row for a file not sent"
    assert_mirror(conn, roots, marker)
    per_study, latencies = [], []
    for uids in sent:
        rows = conn.execute("SELECT b.root, b.path, b.imports, b.finished_at, count(*) FROM instance i"
                            " JOIN batch b ON b.id = i.batch WHERE i.sop_instance_uid = ANY(%s)"
                            " GROUP BY b.id", (uids,)).fetchall()
        conn.rollback()
        assert len(rows) == 1, f"{recipe}: a study spread over {rows}"
        root, path, imports, finished_at, count = rows[0]
        assert count == len(uids)
        folder = roots[root] / to_disk(path)
        latency = finished_at.timestamp() - (last_file if last_file is not None else last_arrival(folder))
        per_study.append(imports)
        latencies.append(latency)
    figures(f"recipe {recipe}: {len(everything)} instances sent, "
            f"{scalar(conn, 'SELECT count(*) FROM instance')} stored in {len(sent)} studies, finished batches "
            f"per study {per_study} ({promise}), last file -> commit "
            + ", ".join(f"{s:.2f} s" for s in latencies))
    assert all(batches(n) for n in per_study), f"{recipe}: finished batches per study {per_study}, {promise}"
    return per_study


# --- DCMTK storescp --------------------------------------------------------------------------------------------


def test_storescp_spool_and_move_on_end_of_study(start: Callable[..., ServiceProcess], conn: Connection,
                                                 incoming: Path, tmp_path: Path, figures: Figures) -> None:
    """The recommended wiring: storescp writes each study into its own folder in a spool on the same file
    system, and moves it into the root (one rename) when the study ends."""
    start()
    spool = tmp_path / "spool"
    spool.mkdir()
    sent = studies(tmp_path / "src", 2)
    port = free_port()
    with receiver(["storescp", "-od", str(spool), "--sort-conc-studies", "st", "--eostudy-timeout", "2",
                   "--exec-on-eostudy", f"mv #p {incoming}/", str(port)], port, tmp_path / "storescp.log"):
        for folder, _ in sent + sent[:1]:  # the first study is sent twice: a folder of its own, all duplicates
            storescu(port, sorted(folder.iterdir()))
        wait_until(lambda: len(list(incoming.iterdir())) == 3, timeout=30, what="three receptions moved")
        verify(conn, {"incoming": incoming}, [uids for _, uids in sent], "storescp spool (--sort-conc-studies) + "
               "--exec-on-eostudy mv", figures, lambda n: n == 1, "one per study")
    assert not list(spool.iterdir())  # every reception moved out of the spool
    assert scalar(conn, "SELECT count(*) FROM rejected_file WHERE reason = 'duplicate'") == FILES
    assert scalar(conn, "SELECT count(*) FROM batch WHERE imports = 1") == 3


def test_storescp_straight_into_the_root_with_a_pause(start: Callable[..., ServiceProcess], conn: Connection,
                                                      incoming: Path, tmp_path: Path, figures: Figures) -> None:
    """storescp -od ROOT --sort-on-study-uid: a final-named folder that files trickle into; the modality pauses
    longer than settle_seconds in the middle of the study. The late half is imported within settle_seconds
    + a few seconds (the folder lingers), as a second finished batch."""
    start()
    ((folder, uids),) = studies(tmp_path / "src", 1)
    files = sorted(folder.iterdir())
    port = free_port()
    with receiver(["storescp", "-od", str(incoming), "--sort-on-study-uid", "st", str(port)], port,
                  tmp_path / "storescp.log"):
        storescu(port, files[:FILES // 2])
        wait_until(lambda: scalar(conn, "SELECT count(*) FROM batch WHERE status = 'done' AND instances = %s",
                                  FILES // 2) == 1, timeout=30, what="the first half imported at the pause")
        time.sleep(SETTLE)  # the modality's pause goes on
        storescu(port, files[FILES // 2:])
        sent_at = time.time()
        per_study = verify(conn, {"incoming": incoming}, [uids], "storescp -od ROOT --sort-on-study-uid, paused",
                           figures, lambda n: n == 2, "one per settle: 2")
    finished = scalar(conn, "SELECT extract(epoch FROM finished_at) FROM batch")
    assert float(str(finished)) - sent_at < SETTLE + 3, "the late half waited for more than settle_seconds + 3 s"
    assert per_study == [2]


def test_storescp_rename_on_end_of_study(start: Callable[..., ServiceProcess], conn: Connection, incoming: Path,
                                         tmp_path: Path, figures: Figures) -> None:
    """storescp --rename-on-eostudy renames every file of the study (CT000001, ...) when the study ends: the rows
    follow the files, none is left at an old name, none becomes a duplicate of itself."""
    start()
    ((folder, uids),) = studies(tmp_path / "src", 1)
    port = free_port()
    with receiver(["storescp", "-od", str(incoming), "--sort-on-study-uid", "st", "--rename-on-eostudy",
                   "--eostudy-timeout", "2", str(port)], port, tmp_path / "storescp.log"):
        storescu(port, sorted(folder.iterdir()))
        wait_until(lambda: any(p.name.startswith("CT0") for p in incoming.glob("*/*")), timeout=30,
                   what="storescp renamed the files")
        # The files were stored under their first names before the rename: wait for the import of the renamed
        # folder too, or a loaded machine finds it still queued when verify looks.
        wait_until(lambda: scalar(conn, "SELECT count(*) FROM instance WHERE path LIKE 'CT0%%'") == len(uids),
                   timeout=60, what="the renamed files imported")
        verify(conn, {"incoming": incoming}, [uids], "storescp --rename-on-eostudy", figures,
               lambda n: 1 <= n <= 2, "one per settle: the files as received, then as renamed")
    assert scalar(conn, "SELECT count(*) FROM instance WHERE path NOT LIKE 'CT0%%'") == 0
    assert scalar(conn, "SELECT count(*) FROM rejected_file") == 0
    assert scalar(conn, "SELECT new_instances FROM batch") == 0, "the renames were reported as growth"


# --- pynetdicom ------------------------------------------------------------------------------------------------


def test_pynetdicom_storescp(start: Callable[..., ServiceProcess], conn: Connection, incoming: Path,
                             tmp_path: Path, figures: Figures) -> None:
    """pynetdicom's storescp (from PyPI; Debian 12 does not package it) writing into ROOT/NAME, a final-named
    folder it creates at the first instance: one finished batch per settle."""
    probe = subprocess.run([PYNETDICOM_PYTHON, "-c", "import pynetdicom; print(pynetdicom.__version__)"],
                           capture_output=True, text=True, check=False) if Path(PYNETDICOM_PYTHON).exists() else None
    if probe is None or probe.returncode != 0:
        pytest.fail(f"pynetdicom is required: SENDIT_PYNETDICOM_PYTHON={PYNETDICOM_PYTHON!r} is not an interpreter "
                    "that imports pynetdicom (pip install pynetdicom in a virtualenv and point the variable at it)")
    start()
    ((folder, uids),) = studies(tmp_path / "src", 1)
    port = free_port()
    with receiver([PYNETDICOM_PYTHON, "-m", "pynetdicom", "storescp", str(port), "-od", str(incoming / "pynetdicom"),
                   "-ll", "warn"], port, tmp_path / "pynetdicom.log"):
        storescu(port, sorted(folder.iterdir()))
        verify(conn, {"incoming": incoming}, [uids], f"pynetdicom {probe.stdout.strip()} storescp -od ROOT/NAME",
               figures, lambda n: n == 1, "one per settle: 1, the sender did not pause")


# --- rsync, cp, mv ---------------------------------------------------------------------------------------------


def test_rsync_into_tmp_then_rename(start: Callable[..., ServiceProcess], conn: Connection, incoming: Path,
                                    tmp_path: Path, figures: Figures) -> None:
    start()
    sent = studies(tmp_path / "src", 2)
    for folder, _ in sent:
        subprocess.run(["rsync", "-a", f"{folder}/", f"{incoming}/{folder.name}.tmp/"], check=True)
        os.rename(incoming / f"{folder.name}.tmp", incoming / folder.name)
    verify(conn, {"incoming": incoming}, [uids for _, uids in sent], "rsync -a into NAME.tmp, mv NAME.tmp NAME",
           figures, lambda n: n == 1, "one per study")


def test_plain_rsync_into_a_final_named_folder(start: Callable[..., ServiceProcess], conn: Connection,
                                               incoming: Path, tmp_path: Path, figures: Figures) -> None:
    """rsync writes each file as .NAME.XXXXXX and renames it: the temporaries never become rows. --bwlimit
    keeps each temporary on disk for a while (the whole study takes about a second)."""
    start()
    sent = studies(tmp_path / "src", 2)
    for folder, _ in sent:
        subprocess.run(["rsync", "-a", "--bwlimit=400", f"{folder}/", f"{incoming}/{folder.name}/"], check=True)
    verify(conn, {"incoming": incoming}, [uids for _, uids in sent], "rsync -a into a final-named folder", figures,
           lambda n: n == 1, "one per settle: 1")
    assert scalar(conn, "SELECT count(*) FROM rejected_file") == 0


def test_cp_r_of_a_study_with_series_folders(start: Callable[..., ServiceProcess], conn: Connection,
                                             incoming: Path, tmp_path: Path, figures: Figures) -> None:
    start()
    study = tmp_path / "src" / "STUDY"
    uids = make_study(study / "SERIES1", FILES // 2) + make_study(study / "SERIES2", FILES // 2)
    subprocess.run(["cp", "-r", str(study), f"{incoming}/"], check=True)
    verify(conn, {"incoming": incoming}, [uids], "cp -r (series sub-folders)", figures, lambda n: n == 1,
           "one per settle: 1")


def test_mv_from_another_file_system(start: Callable[..., ServiceProcess], conn: Connection, incoming: Path,
                                     tmp_path: Path, figures: Figures) -> None:
    """mv across file systems copies the folder into the root (mkdir, then file by file) and deletes the source:
    a final-named folder that settles."""
    start()
    ram = tmp_path / "ram"
    ram.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "none", str(ram)], check=True)
    try:
        uids = make_study(ram / "STUDY", FILES)
        subprocess.run(["mv", str(ram / "STUDY"), f"{incoming}/"], check=True)
        verify(conn, {"incoming": incoming}, [uids], "mv from a tmpfs", figures, lambda n: n == 1,
               "one per settle: 1")
    finally:
        subprocess.run(["umount", str(ram)], check=True)


# --- the finished marker ---------------------------------------------------------------------------------------


def test_finished_marker(start: Callable[..., ServiceProcess], conn: Connection, incoming: Path, tmp_path: Path,
                         figures: Figures) -> None:
    """A producer that can neither rename nor use a suffix: files written into ROOT/NAME (with a pause longer
    than settle_seconds, which must not finish it), then `touch DONE`. One batch; the marker is not a row."""
    marked = tmp_path / "marked"
    marked.mkdir()
    start(extra=f"\n[watch:m]\npath = {marked}\nfinished_marker = DONE\n")
    ((folder, uids),) = studies(tmp_path / "src", 1)
    target = marked / "STUDY"
    target.mkdir()
    files = sorted(folder.iterdir())
    for file in files[:FILES // 2]:
        shutil.copy(file, target)
    time.sleep(SETTLE + 1.5)  # a pause longer than settle_seconds: without DONE nothing may be imported
    assert scalar(conn, "SELECT count(*) FROM instance") == 0
    for file in files[FILES // 2:]:
        shutil.copy(file, target)
    subprocess.run(["touch", str(target / "DONE")], check=True)
    done_at = os.lstat(target / "DONE").st_ctime
    verify(conn, {"incoming": incoming, "m": marked}, [uids], "finished_marker = DONE", figures, lambda n: n == 1,
           "one per study", marker="DONE", last_file=done_at)
    assert scalar(conn, "SELECT count(*) FROM rejected_file") == 0
    assert scalar(conn, "SELECT files FROM batch WHERE root = 'm'") == FILES
