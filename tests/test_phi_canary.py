"""The PHI canary (the promise "no PHI leaves the process"): corpora whose PatientName, PatientID and
PatientBirthDate carry marker strings, plus the values that make PostgreSQL errors likely (a 12,000-character
PatientID beyond a unique index's row size, NaN in FD, U+0000 in text next to the birth date), go through the
running service and the command line; afterwards no marker, nor any fragment of one, may appear in the service's
log, its sd_notify STATUS lines, batch.last_error, `status`, `status --json`, `listen` or `import --json` output.
PostgreSQL's DETAIL and CONTEXT quote the values next to a bad token: none of that may leak either."""

from __future__ import annotations

import io
import random
import subprocess
import sys
from pathlib import Path

import pydicom
from psycopg import sql
from pydicom.uid import generate_uid

from sendit_watcher.config import DatabaseConfig
from sendit_watcher.db import Connection
from tests.fix_service import REPO, ServiceProcess
from tests.helpers import (
    PATIENT_BIRTH_DATE,
    PATIENT_ID,
    PATIENT_NAME,
    make_study,
    pydicom_test_files,
    wait_until,
    write_config,
)

HOSTILE_NAME, HOSTILE_ID, HOSTILE_BIRTH_DATE = "Canarybird^Hostile^Z", "PHI-CANARY-ID-5521", "19370521"
FREE_TEXT = "PHI-FREE-TEXT-Ottoline"
# Rows that the test's CHECK constraints refuse: PostgreSQL's DETAIL then reads "Failing row contains (...)" with
# the patient's name, ID and birth date, or the whole header JSON.
CHECK_PATIENT_ID, CHECK_HEADER_TEXT = "PHI-CANARY-CHECK-77", "PHI-CHECK-HEADER-Wilhelmina"
_rng = random.Random(11)
# Incompressible, so that PostgreSQL cannot fit it in a btree entry (limit 2,704 bytes) even compressed.
LONG_ID = "PHI-LONG-" + "".join(_rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
                                for _ in range(12_000))


def markers() -> list[str]:
    """Every marker and distinctive fragments of them (an error text may cut a value short)."""
    found = [PATIENT_NAME, "Fixture", "Jane", PATIENT_ID, "4711-XYZ", PATIENT_BIRTH_DATE, "1961-04-17",
             HOSTILE_NAME, "Canarybird", HOSTILE_ID, "CANARY-ID", HOSTILE_BIRTH_DATE, "1937-05-21", FREE_TEXT,
             "Ottoline", "PHI-LONG", CHECK_PATIENT_ID, "CANARY-CHECK", CHECK_HEADER_TEXT, "Wilhelmina"]
    found += [LONG_ID[at:at + 12] for at in range(9, len(LONG_ID) - 12, 400)]
    return found


def leaks(where: str, text: str) -> list[str]:
    return [f"{where}: {marker!r} in {line.strip()[:300]!r}" for line in text.splitlines()
            for marker in markers() if marker in line]


def hostile_dicom(*, patient_id: str = HOSTILE_ID, nan: bool = False, nul: bool = False,
                  comment: str = "") -> bytes:
    """CT_small with the markers, fresh UIDs, and the value that breaks a naive COPY right after the birth date
    in tag order (so that a JSON error's CONTEXT quotes it)."""
    previous = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        ds = pydicom.dcmread(pydicom_test_files() / "CT_small.dcm")
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = HOSTILE_NAME, patient_id, HOSTILE_BIRTH_DATE
        for tag in [t for t in ds.keys() if t.group == 0x0010 and t.element > 0x0030]:
            del ds[tag]
        if nul or comment:  # PatientComments
            ds.add_new(0x00104000, "LT", f"{comment}{FREE_TEXT}\x00{HOSTILE_BIRTH_DATE}\x00tail" if nul else comment)
        if nan:
            ds.add_new(0x00110010, "LO", "C")
            ds.add_new(0x00111001, "FD", [float("nan"), float("inf"), float("-inf")])
        buffer = io.BytesIO()
        ds.save_as(buffer)
        return buffer.getvalue()
    finally:
        pydicom.config.settings.writing_validation_mode = previous


def write_corpus(folder: Path) -> None:
    """Folders, each arriving as NAME.tmp renamed to NAME: plain fixture studies and each hostile kind alone,
    then all of them mixed with a good file."""
    make_study(folder / "canary-plain", 3)
    for name, kinds in (("canary-nan", {"nan": True}), ("canary-nul", {"nul": True}),
                        ("canary-long-id", {"patient_id": LONG_ID}),
                        ("canary-long-id-nan-nul", {"patient_id": LONG_ID, "nan": True, "nul": True}),
                        ("canary-check-patient", {"patient_id": CHECK_PATIENT_ID}),
                        ("canary-check-header", {"comment": CHECK_HEADER_TEXT, "nul": True})):
        (folder / name).mkdir(parents=True)
        (folder / name / "hostile.dcm").write_bytes(hostile_dicom(**kinds))  # type: ignore[arg-type]
    make_study(folder / "canary-mixed", 2)
    for n, kinds in enumerate(({"nan": True}, {"nul": True}, {"patient_id": LONG_ID})):
        (folder / "canary-mixed" / f"hostile-{n}.dcm").write_bytes(hostile_dicom(**kinds))  # type: ignore[arg-type]


def cli(conffile: Path, *args: str, timeout: float = 60) -> str:
    """A command of sendit-watcher in its own process: stdout and stderr together."""
    result = subprocess.run([sys.executable, "-m", "sendit_watcher", "--config", str(conffile), *args],
                            capture_output=True, text=True, timeout=timeout, env={"PYTHONPATH": str(REPO),
                                                                                  "PATH": "/usr/bin:/bin",
                                                                                  "SENDIT_WATCHER_USER": ""})
    return result.stdout + result.stderr


def test_no_phi_in_log_status_last_error_listen_or_sd_notify(database: DatabaseConfig, conn: Connection,
                                                              tmp_path: Path) -> None:
    root = tmp_path / "incoming"
    staging = tmp_path / "staging"
    root.mkdir()
    write_corpus(staging)
    # Errors PostgreSQL surely raises during a folder's import, whatever the importer does with odd values.
    conn.execute(sql.SQL("ALTER TABLE patient ADD CONSTRAINT phi_canary CHECK (patient_id <> {})").format(
        sql.Literal(CHECK_PATIENT_ID)))
    conn.execute(sql.SQL("ALTER TABLE instance ADD CONSTRAINT phi_canary CHECK (strpos(header::text, {}) = 0)").format(
        sql.Literal(CHECK_HEADER_TEXT)))
    conn.commit()
    conffile = write_config(tmp_path / "watcher.conf", database, {"incoming": root}, settle_seconds=0.5,
                            log_level="debug")
    service = ServiceProcess(conffile, tmp_path)
    folders = sorted(p.name for p in staging.iterdir())
    try:
        service.wait_ready()
        for name in folders:
            (staging / name).rename(root / f"{name}.tmp")
            (root / f"{name}.tmp").rename(root / name)

        def finished() -> bool:
            rows = conn.execute("SELECT path, status FROM batch").fetchall()
            conn.rollback()
            return sorted(p for p, s in rows if s in ("done", "empty", "failed")) == folders

        try:
            wait_until(finished, timeout=60, what="every canary folder finished")
            stuck = ""
        except AssertionError as exc:
            stuck = str(exc)
        # The command line: an ad-hoc import of a copy (outside any root), status, listen.
        adhoc = tmp_path / "adhoc"
        write_corpus(adhoc)
        outputs = {f"import {name}": cli(conffile, "import", "--json", "--no-progress", str(adhoc / name))
                   for name in folders}
        outputs["import (summary lines)"] = cli(conffile, "import", "--no-progress", str(adhoc / "canary-mixed"))
        outputs["status"] = cli(conffile, "status", "--limit", "100")
        outputs["status --json"] = cli(conffile, "status", "--json", "--limit", "100")
        seqs = conn.execute("SELECT count(*) FROM batch WHERE finished_seq IS NOT NULL").fetchone()
        conn.rollback()
        assert seqs is not None
        if seqs[0]:
            outputs["listen"] = cli(conffile, "listen", "--since", "0", "--count", str(seqs[0]), timeout=30)
    finally:
        code = service.stop()
    errors = conn.execute("SELECT path, last_error FROM batch WHERE last_error IS NOT NULL").fetchall()
    conn.rollback()
    found = leaks("service log", service.log)
    found += leaks("sd_notify", "\n".join(line for line in service.notify.fields() if line.startswith("STATUS=")))
    found += [leak for path, error in errors for leak in leaks(f"batch.last_error of {path}", error)]
    for what, text in outputs.items():
        found += leaks(what, text)
    assert not found, f"{len(found)} PHI leaks, the first ones:\n" + "\n".join(found[:15])
    assert outputs["status"].strip() and '"' in outputs["status --json"], outputs  # the commands did answer
    assert "listen" in outputs, "no batch finished at all"
    # A failure is recorded in last_error; a catch-up scan that listed the folder before it failed may have queued
    # it again (in back-off), so its status need not be 'failed' any more.
    failed = {path for (path,) in conn.execute("SELECT path FROM batch WHERE last_error IS NOT NULL")}
    conn.rollback()
    assert {"canary-check-patient", "canary-check-header"} <= failed, f"the PostgreSQL errors did not happen: {failed}"
    assert not stuck, f"{stuck}; batches: {conn.execute('SELECT path, status FROM batch').fetchall()}"
    assert code == 0, f"the service exited {code}"
