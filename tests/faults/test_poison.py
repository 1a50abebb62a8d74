"""Values, errors, the failure policy and retries: one odd value never fails a
folder, no error text carries a value, a failed folder is not failed again while unchanged, a poison batch never
blocks the queue, and a file unreadable once is read when it becomes readable."""

from __future__ import annotations

import io
import json
import os
import random
import string
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from psycopg import sql
from pydicom.uid import generate_uid

from sendit_watcher import batches
from sendit_watcher.batches import BatchStatus
from sendit_watcher.catchup import scan_roots
from sendit_watcher.config import DatabaseConfig, RootConfig
from sendit_watcher.db import Connection
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

MARKER = "PHIMARKER7731"  # inside the long PatientID: must never leave the process


def ct_file(path: Path, replace: tuple[bytes, bytes] | None = None,
            elements: tuple[tuple[int, str, object], ...] = (), **values: object) -> str:
    """pydicom's CT_small.dcm with a new SOPInstanceUID, extra ``elements`` (tag, VR, value) and keyword
    ``values``; ``replace`` patches the written bytes (same length). Returns the SOPInstanceUID."""
    ds = pydicom.dcmread(pydicom_test_files() / "CT_small.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # over-long values are the point
        for tag, vr, value in elements:
            ds.add_new(tag, vr, value)
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        buffer = io.BytesIO()
        ds.save_as(buffer)
    data = buffer.getvalue()
    if replace is not None:
        assert data.count(replace[0]) == 1 and len(replace[0]) == len(replace[1])
        data = data.replace(*replace)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(ds.SOPInstanceUID)


def long_patient_id() -> str:
    """12,000 incompressible characters (an index entry cannot hold them) with MARKER inside."""
    noise = "".join(random.Random(11).choices(string.ascii_letters + string.digits, k=12000 - len(MARKER)))
    return noise[:6000] + MARKER + noise[6000:]


def drop_poison(root: Path, name: str) -> None:
    """A folder of two good files and one whose PatientID is 12,000 characters long, renamed in from .tmp."""
    make_study(root / f"{name}.tmp", 2)
    ct_file(root / f"{name}.tmp" / "poison.dcm", PatientID=long_patient_id())
    (root / f"{name}.tmp").rename(root / name)


def cli(config: Path, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sendit_watcher", "--config", str(config), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


class Listener:
    """`sendit-watcher listen` as a process; every JSON line it prints, collected by a thread."""

    def __init__(self, config: Path) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "sendit_watcher", "--config", str(config), "listen"],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, "PYTHONPATH": str(REPO)})
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def records(self, folder: str) -> list[dict[str, object]]:
        found = []
        for line in list(self.lines):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("folder") == folder:
                found.append(record)
        return found

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


_LISTENER_WAITING = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                     " AND application_name = 'sendit-watcher listen' AND pid <> pg_backend_pid() AND state = 'idle'"
                     " AND now() - state_change > interval '0.5 s'")


@pytest.fixture
def service_and_listener(tmp_path: Path, database: DatabaseConfig, incoming: Path,
                         conn: Connection) -> Iterator[Callable[..., tuple[ServiceProcess, Listener]]]:
    made: list[ServiceProcess | Listener] = []

    def start(**options: object) -> tuple[ServiceProcess, Listener]:
        config = write_config(tmp_path / "watcher.conf", database, {"incoming": incoming}, **options)
        service = ServiceProcess(config, tmp_path)
        made.append(service)
        service.wait_ready()
        listener = Listener(config)
        made.append(listener)
        wait_until(lambda: scalar_int(conn, _LISTENER_WAITING) >= 1, timeout=20,
                   what="the listener waiting for NOTIFY")
        return service, listener

    yield start
    for thing in made:
        if isinstance(thing, ServiceProcess):
            thing.kill()
        else:
            thing.close()


# --- item 1: one odd value never fails the folder ---------------------------------------------------------------


def test_non_finite_floats_nul_characters_and_huge_numbers_are_instances(tmp_path: Path, database: DatabaseConfig,
                                                                         conn: Connection) -> None:
    """FD/FL NaN and ±Inf, U+0000 inside LT/ST/UT, InstanceNumber 1e999."""
    folder = tmp_path / "ODD"
    make_study(folder, 1)
    ct_file(folder / "fd-nan.dcm", elements=((0x00082134, "FD", float("nan")),))  # EventTimeOffset
    ct_file(folder / "fl-inf.dcm", elements=((0x00180013, "FL", float("inf")),))  # ContrastBolusT1Relaxivity
    ct_file(folder / "fd-minus-inf.dcm", elements=((0x00082134, "FD", float("-inf")),))
    ct_file(folder / "lt-nul.dcm", ImageComments="before\x00after")
    ct_file(folder / "st-nul.dcm", InstitutionAddress="street\x00 1")
    ct_file(folder / "ut-nul.dcm", elements=((0x0040A160, "UT", "text\x00value"),))  # TextValue
    ct_file(folder / "is-1e999.dcm", replace=(b"918273", b"1e999 "), InstanceNumber="918273")
    config = write_config(tmp_path / "watcher.conf", database, {}, full_header="yes")
    result = cli(config, "import", "--json", folder)
    rejected = dict(conn.execute("SELECT path, reason FROM rejected_file").fetchall())
    conn.rollback()
    assert rejected == {}, rejected
    assert result.returncode == 0, result.stdout + result.stderr
    outcome = json.loads(result.stdout)
    assert (outcome["status"], outcome["files"], outcome["instances"], outcome["rejected"]) == ("done", 8, 8, 0)

    def value(path: str, tag: str) -> object:
        return scalar(conn, "SELECT header->%s->'Value'->0 FROM instance WHERE path = %s", tag, path)

    assert value("fd-nan.dcm", "00082134") == "NaN"
    assert value("fl-inf.dcm", "00180013") == "Infinity"
    assert value("fd-minus-inf.dcm", "00082134") == "-Infinity"
    assert scalar(conn, "SELECT count(*) FROM instance WHERE path = 'is-1e999.dcm' AND instance_number IS NULL") == 1


# --- item 2: no value in any error text -------------------------------------------------------------------------


def eventually(check: Callable[[], bool], timeout: float) -> bool:
    """Whether ``check`` holds within ``timeout`` seconds (for tests that check something else either way)."""
    try:
        wait_until(check, timeout=timeout)
    except AssertionError:
        return False
    return True


def leaks(service: ServiceProcess, listener: Listener, conn: Connection, config: Path, markers: list[str]) -> list[str]:
    """Where any of ``markers`` (or PostgreSQL's DETAIL/CONTEXT) shows: last_error, log, STATUS, status, listen."""
    errors = "\n".join(str(e) for (e,) in conn.execute("SELECT last_error FROM batch WHERE last_error IS NOT NULL"))
    conn.rollback()
    outputs = {"batch.last_error": errors, "the log": service.log, "STATUS": "\n".join(service.notify.fields()),
               "listen": "".join(listener.lines)}
    for args in (("status",), ("status", "--json")):
        result = cli(config, *args)
        outputs[" ".join(args)] = result.stdout + result.stderr
    found = [f"{marker!r} in {where}" for where, text in outputs.items() for marker in markers if marker in text]
    found += [f"{word} in batch.last_error" for word in ("DETAIL", "CONTEXT", "Failing row") if word in errors]
    return found


def test_a_program_limit_error_stores_its_sqlstate_and_no_value(service_and_listener: Callable[..., tuple[
        ServiceProcess, Listener]], conn: Connection, incoming: Path, tmp_path: Path) -> None:
    """A 12,000-character PatientID (more than an index entry holds: SQLSTATE 54000 unless the
    file is rejected on its own) and an operator's trigger raising 54000 with the PatientID in its DETAIL: the
    markers go nowhere, and a stored error names SQLSTATE 54000."""
    add_program_limit_trigger(conn)
    service, listener = service_and_listener(workers=1)
    drop_poison(incoming, "POISON")
    drop_triggered(incoming, "TRIGGERED")
    finished = eventually(lambda: batch_rows(conn).get("TRIGGERED", ("",))[0] == "failed"
                          and batch_rows(conn).get("POISON", ("queued",))[0] != "queued", timeout=30)
    found = leaks(service, listener, conn, tmp_path / "watcher.conf", [MARKER, TRIGGER_MARKER])
    assert found == [], found
    assert finished, f"TRIGGERED not failed or POISON not finished after 30 s: {batch_rows(conn)}"
    assert "54000" in str(scalar(conn, "SELECT last_error FROM batch WHERE path = 'TRIGGERED'"))
    assert_poison_handled(conn)
    wait_until(lambda: len(listener.records("TRIGGERED")) == 1, timeout=10, what="listen reporting TRIGGERED")


TRIGGER_MARKER = "TRIGGER-PHI-5150"


def add_program_limit_trigger(conn: Connection) -> None:
    """An operator's trigger: a new patient whose PatientID starts with TRIGGER- raises SQLSTATE 54000
    (psycopg's OperationalError, as a connection failure is) with the PatientID in its DETAIL."""
    conn.execute("""CREATE FUNCTION refuse_patient() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'refused by policy' USING ERRCODE = '54000', DETAIL = 'patient ' || NEW.patient_id;
        END $$""")
    conn.execute("CREATE TRIGGER refuse_patient BEFORE INSERT ON patient FOR EACH ROW"
                 " WHEN (NEW.patient_id LIKE 'TRIGGER-%') EXECUTE FUNCTION refuse_patient()")
    conn.commit()


def drop_triggered(root: Path, name: str) -> None:
    make_study(root / f"{name}.tmp", 1)
    ct_file(root / f"{name}.tmp" / "refused.dcm", PatientID=TRIGGER_MARKER)
    (root / f"{name}.tmp").rename(root / name)


def assert_poison_handled(conn: Connection) -> None:
    """POISON failed with SQLSTATE 54000, or (per-file isolation) its poison file is a rejection with a reason
    and its two good files are instances."""
    status, instances, error = conn.execute(
        "SELECT status, instances, coalesce(last_error, '') FROM batch WHERE path = 'POISON'").fetchone() or ("", 0, "")
    reason = scalar(conn, "SELECT reason FROM rejected_file WHERE path = 'poison.dcm'")
    if status == "failed":
        assert "54000" in str(error), error
    else:
        assert (status, instances) == ("done", 2) and reason, (status, instances, reason)


def test_a_constraint_violation_stores_the_constraint_and_no_row(service_and_listener: Callable[..., tuple[
        ServiceProcess, Listener]], conn: Connection, incoming: Path, tmp_path: Path) -> None:
    """A CHECK violation's DETAIL ("Failing row contains (...)" with every value of the row)
    never leaves the process; the stored error names SQLSTATE 23514 and the constraint."""
    conn.execute("ALTER TABLE patient ADD CONSTRAINT provoked_by_test CHECK (patient_id <> 'CHECKME-PHI-4242')")
    conn.commit()
    service, listener = service_and_listener(workers=1)
    make_study(incoming / "CHECKED.tmp", 1)
    ct_file(incoming / "CHECKED.tmp" / "x.dcm", PatientID="CHECKME-PHI-4242", PatientName="Leaky^Lucy",
            PatientBirthDate="19470203")
    (incoming / "CHECKED.tmp").rename(incoming / "CHECKED")
    failed = eventually(lambda: batch_rows(conn).get("CHECKED", ("",))[0] == "failed", timeout=30)
    found = leaks(service, listener, conn, tmp_path / "watcher.conf",
                  ["CHECKME-PHI-4242", "Leaky", "19470203", "1947-02-03"])
    assert found == [], found
    assert failed, f"CHECKED not failed after 30 s: {batch_rows(conn)}"
    error = str(scalar(conn, "SELECT last_error FROM batch WHERE path = 'CHECKED'"))
    assert "23514" in error and "provoked_by_test" in error, error


# --- item 3: a failed folder is not failed again while it is unchanged ------------------------------------------


def test_a_failed_folder_is_not_requeued_by_catch_up_until_it_changes(service_and_listener: Callable[..., tuple[
        ServiceProcess, Listener]], conn: Connection, incoming: Path) -> None:
    """With rescan_interval = 1 s, the failed batch keeps its finished_seq and attempts for 5 s and
    listen gets one line, while a folder dropped meanwhile is imported within 10 s; a file added to the folder
    queues it again."""
    uids = make_study(incoming / "R.tmp", 3)  # R's instances, and only R's, break a constraint
    conn.execute(sql.SQL("ALTER TABLE instance ADD CONSTRAINT provoked CHECK (sop_instance_uid <> ALL ({}))")
                 .format(sql.Literal(uids)))
    conn.commit()
    service, listener = service_and_listener(workers=1, rescan_interval=1)
    (incoming / "R.tmp").rename(incoming / "R")
    wait_until(lambda: batch_rows(conn).get("R", ("",))[0] == "failed", timeout=30, what="R failed")

    def state() -> object:
        row = conn.execute("SELECT status, finished_seq, attempts FROM batch WHERE path = 'R'").fetchone()
        conn.rollback()
        return row

    before = state()
    started = time.monotonic()
    drop_study(incoming, "LATER", 2)
    wait_until(done(conn, "LATER", 2), timeout=10, what="a folder dropped after R, imported while R stays failed")
    time.sleep(max(0.0, 5 - (time.monotonic() - started)))  # five catch-up scans in which nothing may happen to R
    after = state()
    assert after == before, f"R was imported again by a catch-up scan: {before} -> {after}"
    assert len(listener.records("R")) == 1, listener.records("R")
    make_study(incoming / "R" / "more", 1)  # the folder changes: queued (and, with the constraint, failed) again
    wait_until(lambda: state() != before, timeout=30, what="R imported again after it changed")
    assert service.process.poll() is None


def test_a_failed_folder_a_catch_up_scan_found_young_before_it_failed_stays_failed(
        tmp_path: Path, database: DatabaseConfig, incoming: Path, conn: Connection) -> None:
    """The race behind a rare failure of the test above: a catch-up scan lists R just after its rename and reads
    the batch rows before the rename's enqueue commits (no row: R is new), and finds R young (the rename changed
    its ctime). R then settles like a folder being written; R's import fails meanwhile. Settled, R was queued as
    if an event had found it (the scan's time dropped with its youth): failed -> queued -> failed again, with
    nothing changed in it. Here a hook (faults/hooks) holds that window open: the scan lists the root once R is
    there, and the first enqueue of R waits a second."""
    uids = make_study(incoming / "R.tmp", 3)
    conn.execute(sql.SQL("ALTER TABLE instance ADD CONSTRAINT provoked CHECK (sop_instance_uid <> ALL ({}))")
                 .format(sql.Literal(uids)))
    conn.commit()
    config = write_config(tmp_path / "watcher.conf", database, {"incoming": incoming}, workers=1, rescan_interval=1)
    service = ServiceProcess(config, tmp_path, env={"PYTHONPATH": f"{Path(__file__).parent / 'hooks'}:{REPO}",
                                                    "SENDIT_TEST_RACE_FOLDER": "R"})
    try:
        service.wait_ready()
        time.sleep(0.5)  # the catch-up scan at start has begun, and waits for R
        (incoming / "R.tmp").rename(incoming / "R")
        wait_until(lambda: batch_rows(conn).get("R", ("",))[0] == "failed", timeout=30, what="R failed")
        first = _states_of(conn, "R")
        assert "1 still being written" in service.log, service.log[-3000:]  # the window was met
        time.sleep(5)  # R settles (1 s) and is queued or not; a worker would take it again after its 5 s back-off
        assert _states_of(conn, "R") == first, service.log[-3000:]
        assert service.process.poll() is None
    finally:
        service.kill()


def test_a_failed_folder_of_a_root_with_a_finished_marker_is_not_requeued_by_catch_up_until_it_changes(
        tmp_path: Path, database: DatabaseConfig, conn: Connection) -> None:
    """The failure recorded the folder as it was with its marker, the scan compares it without: before, every
    catch-up scan found it changed and queued it again, failed -> queued -> failed, with nothing changed."""
    marked = tmp_path / "marked"
    marked.mkdir()
    uids = make_study(marked / "R", 3)
    conn.execute(sql.SQL("ALTER TABLE instance ADD CONSTRAINT provoked CHECK (sop_instance_uid <> ALL ({}))")
                 .format(sql.Literal(uids)))
    conn.commit()
    config = write_config(tmp_path / "watcher.conf", database, {}, workers=1, rescan_interval=1,
                          extra=f"\n[watch:m]\npath = {marked}\nfinished_marker = DONE\n")
    service = ServiceProcess(config, tmp_path)
    try:
        service.wait_ready()
        (marked / "R" / "DONE").touch()
        wait_until(lambda: batch_rows(conn).get("R", ("",))[0] == "failed", timeout=30, what="R failed")
        first = _states_of(conn, "R")
        time.sleep(4)  # four catch-up scans
        assert _states_of(conn, "R") == first, service.log[-3000:]
        (marked / "R" / "more").write_bytes(b"not dicom")  # changed: queued (and failed) again
        wait_until(lambda: _states_of(conn, "R") != first, timeout=30, what="R queued again once changed")
    finally:
        service.kill()


def _states_of(conn: Connection, path: str) -> object:
    row = conn.execute("SELECT status, finished_seq, attempts, removal FROM batch WHERE path = %s", (path,)).fetchone()
    conn.rollback()
    return row


# --- item 4: a poison batch never blocks the queue --------------------------------------------------------------


def test_a_poison_batch_fails_and_later_folders_still_import(service_and_listener: Callable[..., tuple[
        ServiceProcess, Listener]], conn: Connection, incoming: Path, figures: Callable[[str], None]) -> None:
    """A batch whose import raises SQLSTATE 54000 (an operator's trigger) fails with a reason
    and so does the 12,000-character PatientID folder (or its file is rejected alone); three folders dropped after
    them are imported within 30 s by the one worker."""
    add_program_limit_trigger(conn)
    service, _ = service_and_listener(workers=1)
    drop_triggered(incoming, "TRIGGERED")
    drop_poison(incoming, "POISON")
    wait_until(lambda: {"POISON", "TRIGGERED"} <= set(batch_rows(conn)), timeout=10, what="both queued")
    started = time.monotonic()
    for n in range(3):
        drop_study(incoming, f"AFTER{n}", 2)
    try:
        wait_until(lambda: all(done(conn, f"AFTER{n}", 2)() for n in range(3)), timeout=30,
                   what=f"the folders after TRIGGERED and POISON imported; batches {batch_rows(conn)}")
    finally:
        figures(f"poison batches: {batch_rows(conn)} after {time.monotonic() - started:.1f} s")
    wait_until(lambda: batch_rows(conn).get("TRIGGERED", ("",))[0] == "failed"
               and batch_rows(conn).get("POISON", ("queued",))[0] != "queued", timeout=30,
               what=f"TRIGGERED failed and POISON finished: {batch_rows(conn)}")
    assert str(scalar(conn, "SELECT coalesce(last_error, '') FROM batch WHERE path = 'TRIGGERED'")).strip() != ""
    assert_poison_handled(conn)
    assert service.process.poll() is None


# --- item 9: unreadable files are retried ------------------------------------------------------------------------


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """A directory under /var/tmp that 'nobody' can traverse (pytest's tmp_path is root's)."""
    top = Path(tempfile.mkdtemp(prefix="sendit-unreadable-", dir="/var/tmp"))
    top.chmod(0o755)
    yield top
    subprocess.run(["chmod", "-R", "u+rwx", str(top)], check=False)
    subprocess.run(["rm", "-rf", str(top)], check=False)


def test_a_file_unreadable_once_is_read_after_chmod(world_readable_dir: Path, database: DatabaseConfig,
                                                    conn: Connection) -> None:
    """Mode 000 at the first import (as 'nobody': root ignores modes) -> rejected unreadable;
    after chmod 644 the same command makes it an instance."""
    folder = world_readable_dir / "U"
    make_study(folder, 3)
    victim = sorted(folder.iterdir())[1]
    victim.chmod(0)
    config = write_config(world_readable_dir / "watcher.conf", database, {})
    config.chmod(0o644)
    command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3", "-m",
               "sendit_watcher", "--config", str(config), "import", "--json", str(folder)]
    environment = {"PYTHONPATH": str(REPO), "PATH": os.environ["PATH"]}
    first = subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment)
    assert first.returncode == 0, first.stdout + first.stderr
    rejected = dict(conn.execute("SELECT path, reason FROM rejected_file").fetchall())
    conn.rollback()
    assert rejected == {victim.name: "unreadable"}
    victim.chmod(0o644)
    second = subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment)
    assert second.returncode == 0, second.stdout + second.stderr
    outcome = json.loads(second.stdout)
    assert (outcome["instances"], outcome["rejected"]) == (3, 0), outcome
    assert scalar(conn, "SELECT count(*) FROM instance") == 3
    assert scalar(conn, "SELECT count(*) FROM rejected_file") == 0


def test_a_scan_that_began_before_a_failure_does_not_queue_the_failed_batch(conn: Connection) -> None:
    """The start-up race: a catch-up scan lists a new folder, the watcher queues it meanwhile, a worker fails it;
    the scan's result must not queue it again (only a change, an event or `retry` does)."""
    before_failure = batches.database_time(conn)
    batch_id = batches.enqueue(conn, "incoming", "R")
    assert batch_id is not None
    with conn.transaction():
        batch = batches.claim_id(conn, batch_id)
    assert batch is not None
    assert batches.record_failure(conn, batch, "test-host", "provoked", "1:2:3")
    after_failure = batches.database_time(conn)

    def status() -> str:
        row = conn.execute("SELECT status FROM batch WHERE id = %s", (batch_id,)).fetchone()
        conn.rollback()
        assert row is not None
        return str(row[0])

    assert batches.enqueue(conn, "incoming", "R", scan_began=before_failure) == batch_id
    assert status() == BatchStatus.FAILED  # the scan did not see the failure: left failed
    assert batches.enqueue(conn, "incoming", "R", scan_began=after_failure) == batch_id
    assert status() == BatchStatus.QUEUED  # a scan after the failure saw a changed folder: queued
    assert batches.record_failure(conn, batch, "test-host", "provoked", "1:2:3") is False  # seq moved on


def test_a_scan_that_saw_a_failed_batch_changed_queues_it_whenever_it_failed(conn: Connection,
                                                                              database: DatabaseConfig,
                                                                              tmp_path: Path) -> None:
    """The guard above never hides a change: a folder the scan saw failed and found changed since is queued, even
    when the failure's time is after the scan's clock (it failed while an earlier root was being walked)."""
    root = tmp_path / "incoming"
    make_study(root / "F", 2)
    make_study(root / "N", 1)
    batch_id = batches.enqueue(conn, "incoming", "F")
    assert batch_id is not None
    with conn.transaction():
        batch = batches.claim_id(conn, batch_id)
    assert batch is not None
    began = batches.database_time(conn)
    assert batches.record_failure(conn, batch, "test-host", "provoked", "1:stale-fingerprint")
    watch = RootConfig("incoming", root, 0, "sendit_watcher.processors.DicomFolderImporter")
    result = scan_roots(database, {"incoming": watch}, "test-host", lambda name: name.endswith(".tmp"), 0.0, set())
    assert sorted(result.changed) == [("incoming", "F"), ("incoming", "N")]
    assert result.seen_failed == {("incoming", "F")}
    assert result.scan_began(("incoming", "F")) is None
    assert result.scan_began(("incoming", "N")) == result.rows_read_at["incoming"] >= began
    assert batches.enqueue(conn, "incoming", "F", scan_began=result.scan_began(("incoming", "F"))) == batch_id
    assert scalar(conn, "SELECT status FROM batch WHERE id = %s", batch_id) == BatchStatus.QUEUED
