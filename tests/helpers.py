"""Helpers every test module may call: waiting on a condition, reading rows, building a Config or a conffile,
making and dropping studies.

Fixtures live in the ``fix_*`` plugins that ``conftest.py`` loads; this module holds plain functions only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import itertools
import json
import os
import stat
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
from psycopg import sql
from pydicom.dataset import Dataset, FileMetaDataset

from sendit_watcher import batches
from sendit_watcher.batch_import import Outcome, import_batch
from sendit_watcher.config import SCHEMA, Config, DatabaseConfig, ImportConfig, RootConfig, WatcherConfig
from sendit_watcher.db import Connection
from sendit_watcher.locks import BATCH_CLASS
from sendit_watcher.names import to_disk
from sendit_watcher.parsers import InlineParser, Parser

if TYPE_CHECKING:
    from hypothesis import settings


def wait_until(check: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    """Poll ``check`` every 0.1 s until it holds; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def scalar(conn: Connection, query: str, *params: object) -> object:
    """The first column of the first row (None when there is none); ends the transaction."""
    row = conn.execute(query, params).fetchone()  # type: ignore[call-overload]
    conn.rollback()
    return None if row is None else row[0]


def as_int(value: object) -> int:
    """A value typed ``object`` (a query's, a JSON record's) that must be an integer, as an int."""
    assert isinstance(value, int) and not isinstance(value, bool), f"not an integer: {value!r}"
    return value


def scalar_int(conn: Connection, query: str, *params: object) -> int:
    """``scalar`` of a query whose answer is an integer (a count); ends the transaction."""
    return as_int(scalar(conn, query, *params))


def batch_rows(conn: Connection) -> dict[str, tuple[str, int, int]]:
    """Every batch by folder path: (status, instances, imports)."""
    rows = conn.execute("SELECT path, status, instances, imports FROM batch").fetchall()
    conn.rollback()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def done(conn: Connection, path: str, instances: int) -> Callable[[], bool]:
    """A check: the folder's batch is done with this many instances."""
    return lambda: batch_rows(conn).get(path, ("", 0, 0))[:2] == ("done", instances)


def count_rows(conn: Connection) -> dict[str, int]:
    """Row counts of every table of the hierarchy."""
    counts = {}
    for table in ("batch", "patient", "study", "series", "instance", "rejected_file"):
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
        assert row is not None
        counts[table] = int(row[0])
    conn.commit()
    return counts


def importing_host(conn: Connection) -> str | None:
    """Which host's worker holds a batch right now (its advisory lock), from its application_name."""
    row = conn.execute(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid::bigint >= %s"
        " AND a.application_name LIKE 'sendit-watcher worker %%'", (BATCH_CLASS,)).fetchone()
    conn.rollback()
    return None if row is None else str(row[0]).rsplit(" on ", 1)[1]


def on_host(config: Config, host: str) -> Config:
    """``config`` as another host reads it (its ``[watcher] host``)."""
    return dataclasses.replace(config, watcher=dataclasses.replace(config.watcher, host=host))


def make_config(database: DatabaseConfig, roots: dict[str, Path] | None = None, *, full_header: bool = True,
                settle: float = 0.5, rescan: float = 0.0, workers: int = 1) -> Config:
    """A Config for tests: the given roots watched with the default processor."""
    import pyinotify

    mask = pyinotify.IN_CREATE | pyinotify.IN_MOVED_TO | pyinotify.IN_CLOSE_WRITE
    watches = tuple(RootConfig(name, path, mask, "sendit_watcher.processors.DicomFolderImporter")
                    for name, path in (roots or {}).items())
    return Config(None, database, ImportConfig(full_header=full_header, workers=workers, parse_processes=2),
                  WatcherConfig(settle_seconds=settle, rescan_interval=rescan, drain_seconds=10, host="test-host"),
                  watches)


def pydicom_test_files() -> Path:
    """The directory of pydicom's bundled test files (real DICOM nobody here wrote)."""
    from pydicom.data import get_testdata_files

    return Path(get_testdata_files("CT_small.dcm")[0]).parent


# --- studies: fast real ones for floods (pydicom's CT_small.dcm with its UIDs patched in place, fixed length)

_SOP, _SERIES, _STUDY = (str(d) * 60 for d in (9, 8, 7))
_counter = itertools.count(1)
PATIENT_NAME, PATIENT_ID, PATIENT_BIRTH_DATE = "Fixture^Jane^Q", "PHI-4711-XYZ", "19610417"


@functools.cache
def _template() -> bytes:
    ds = pydicom.dcmread(pydicom_test_files() / "CT_small.dcm")
    ds.SOPInstanceUID = _SOP
    ds.file_meta.MediaStorageSOPInstanceUID = _SOP
    ds.SeriesInstanceUID, ds.StudyInstanceUID = _SERIES, _STUDY
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, PATIENT_ID, PATIENT_BIRTH_DATE
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _uid(kind: int, number: int) -> bytes:
    """A valid UID of exactly 60 characters (no component starts with 0)."""
    uid = f"1.2.826.0.1.3680043.10.{kind}.1{os.getpid():07d}.1{number:0{60 - 35}d}"
    assert len(uid) == 60, uid
    return uid.encode()


def make_study(folder: Path, files: int) -> list[str]:
    """Write one study of ``files`` instances into ``folder``; returns their SOPInstanceUIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    study = _template().replace(_STUDY.encode(), _uid(1, next(_counter))).replace(
        _SERIES.encode(), _uid(2, next(_counter)))
    uids = []
    for n in range(files):
        sop = _uid(3, next(_counter))
        (folder / f"IM{n:05d}.dcm").write_bytes(study.replace(_SOP.encode(), sop))
        uids.append(sop.decode())
    return uids


def drop_study(root: Path, name: str, files: int) -> list[str]:
    """Write a study into ``root/NAME.tmp`` and rename it to ``NAME``, as upload tools do."""
    uids = make_study(root / f"{name}.tmp", files)
    (root / f"{name}.tmp").rename(root / name)
    return uids


# --- the service's conffile: what the service under test runs with unless a test says otherwise.
TEST_OPTIONS: dict[str, object] = {
    "retry_interval": 0.5, "connect_timeout": 3, "workers": 2, "settle_seconds": 1.0, "rescan_interval": 0,
    "drain_seconds": 10, "log_level": "debug", "host": "test-host", "role": "all",
}


def write_config(path: Path, database: DatabaseConfig, roots: dict[str, Path], *, extra: str = "",
                 **options: object) -> Path:
    """A conffile for the service under test: TEST_OPTIONS overridden by ``options`` (any option of the
    schema, by its key, e.g. ``settle_seconds=0.5``), the given roots, then ``extra`` INI text."""
    sections: dict[str, dict[str, object]] = {}
    values = {"dsn": database.dsn, "schema": database.schema, **TEST_OPTIONS, **options}
    for key, value in values.items():
        sections.setdefault(_section_of(key), {})[key] = value
    text = [f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items()) for name, keys in sections.items()]
    text += [f"[watch:{name}]\npath = {root}\n" for name, root in roots.items()]
    path.write_text("\n".join(text) + extra)
    return path


def _section_of(key: str) -> str:
    found = [section for section, options in SCHEMA.items() if any(o.key == key for o in options)]
    assert len(found) == 1 and not found[0].startswith("watch:"), f"{key!r} is not an option of one section"
    return found[0]


# --- the mirror promise as a check the tests call after every import: for every folder, its
# instance rows + rejected rows = the regular files on disk, every row's path exists (and an instance row's file
# holds that SOP Instance UID), and a SOP Instance UID on disk anywhere has exactly one instance row.

OUTSIDE_ROOTS = "/"


def regular_files(folder: Path, marker: str = "") -> set[str]:
    """Paths (relative, as the os module gives them) of the regular files under ``folder``, not following
    symbolic links; ``marker`` directly in the folder is not counted."""
    found: set[str] = set()
    for directory, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(directory, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                found.add(os.path.relpath(path, folder))
    found.discard(marker)
    return found


def sop_of(path: Path) -> str | None:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    except Exception:  # noqa: BLE001 - not DICOM (a partial file, garbage): no SOP on disk there
        return None
    uid = ds.get("SOPInstanceUID")
    return str(uid) if uid else None


def batch_folders(conn: Connection, roots: dict[str, Path]) -> dict[int, Path]:
    """Every batch's folder on disk, by batch id."""
    rows = conn.execute("SELECT id, root, path FROM batch").fetchall()
    conn.rollback()
    base = {OUTSIDE_ROOTS: Path("/"), **roots}
    return {bid: base[root] / to_disk(path) for bid, root, path in rows}


def mirror_problems(conn: Connection, roots: dict[str, Path], marker: str = "") -> list[str]:
    """Everything that breaks the mirror, as sentences (empty: the database mirrors the disk)."""
    problems: list[str] = []
    instances = conn.execute("SELECT batch, path, sop_instance_uid FROM instance").fetchall()
    rejected = conn.execute("SELECT batch, path, reason FROM rejected_file").fetchall()
    conn.rollback()
    rows_of: dict[int, list[tuple[str, str]]] = {}
    for batch, path, sop in instances:
        rows_of.setdefault(batch, []).append((path, f"instance {sop}"))
    for batch, path, reason in rejected:
        rows_of.setdefault(batch, []).append((path, f"rejected {reason}"))
    on_disk: dict[str, list[str]] = {}
    for batch, folder in batch_folders(conn, roots).items():
        rows = rows_of.get(batch, [])
        files = regular_files(folder, marker) if folder.is_dir() else set()
        if len(rows) != len(files):
            problems.append(f"{folder}: {len(rows)} rows for {len(files)} regular files on disk")
        stored = {to_disk(path) for path, _ in rows}
        for path, what in rows:
            if not os.path.lexists(folder / to_disk(path)):
                problems.append(f"{folder}: row {path!r} ({what}) has no file")
        for path in sorted(files - stored):
            problems.append(f"{folder}: file {path!r} has no row")
        for path in files:
            sop = sop_of(folder / path)
            if sop is not None:
                on_disk.setdefault(sop, []).append(str(folder / path))
    where = {sop: (batch, path) for batch, path, sop in instances}
    folders = batch_folders(conn, roots)
    counted = Counter(sop for _, _, sop in instances)
    for sop, paths in on_disk.items():
        if counted[sop] != 1:
            problems.append(f"SOP {sop} on disk at {paths}: {counted[sop]} instance rows")
    for sop, (batch, path) in where.items():
        file = folders[batch] / to_disk(path)
        if os.path.lexists(file) and sop_of(file) != sop:
            problems.append(f"instance row {sop} at {file}, which holds {sop_of(file)}")
    return problems


def assert_mirror(conn: Connection, roots: dict[str, Path] | None = None, marker: str = "") -> None:
    problems = mirror_problems(conn, roots or {}, marker)
    assert not problems, "the database does not mirror the disk:\n" + "\n".join(problems[:30])


def import_folder(conn: Connection, config: Config, folder: Path, parser: Parser | None = None) -> Outcome:
    """Import ``folder`` as a worker would (its batch row created if new), in this process; its outcome."""
    root, path = batches.locate(config, folder)
    batch_id = batches.ensure(conn, root, path)
    outcome = import_batch(conn, config, parser or InlineParser(), batch_id)
    assert outcome is not None
    return outcome


UNIT = Path(__file__).resolve().parent.parent / "systemd" / "sendit-watcher.service"


def exec_reload() -> list[str]:
    """Every ExecReload= line of the unit, in order (systemd runs them one after another)."""
    return [line.split("=", 1)[1].strip() for line in UNIT.read_text().splitlines() if line.startswith("ExecReload=")]


# --- the property tests (test_dataset_properties, test_tree_properties): hypothesis' settings, folders imported
# through the public `import` command, and what the database says about one batch

# One standard tag per VR, the same VR in pydicom 2.3's and 3.0's dictionaries (so implicit VR reads it back), and
# none of them a main tag (a column of its own): the tests' one VR -> tag table.
VR_TAGS = {"AE": 0x00080054, "AS": 0x0072005F, "AT": 0x00720060, "CS": 0x00080061, "DA": 0x00181200,
           "DS": 0x00082130, "DT": 0x0008002A, "FL": 0x0018605A, "FD": 0x00081163, "IS": 0x00081160,
           "LO": 0x00080070, "LT": 0x00204000, "OB": 0x00720065, "OD": 0x00720073, "OF": 0x00720067,
           "OL": 0x00720075, "OV": 0x00720081, "OW": 0x00720069, "PN": 0x00081070, "SH": 0x00081010,
           "SL": 0x00186020, "SQ": 0x0040A730, "SS": 0x00189219, "ST": 0x00080081, "SV": 0x00720082,
           "TM": 0x00080032, "UC": 0x0072006F, "UI": 0x0008001A, "UL": 0x00081161, "UN": 0x0072006D,
           "UR": 0x00081190, "US": 0x00181244, "UT": 0x00189910, "UV": 0x00720083}

PYDICOM3 = int(pydicom.__version__.split(".")[0]) >= 3
SCALE = float(os.environ.get("SENDIT_HYPOTHESIS_SCALE", "1"))
RANDOM = os.environ.get("SENDIT_HYPOTHESIS_RANDOM") == "1"
SHRINK = os.environ.get("SENDIT_HYPOTHESIS_SHRINK") == "1"


def examples(n: int) -> settings:
    """Hypothesis' settings for a property test of ``n`` examples, each a whole import. Examples are derandomized
    (the same on every run) unless SENDIT_HYPOTHESIS_RANDOM=1; SENDIT_HYPOTHESIS_SCALE multiplies their number for
    a soak; SENDIT_HYPOTHESIS_SHRINK=1 shrinks a failure to a minimal example (slow: hundreds of imports)."""
    from hypothesis import HealthCheck, Phase, settings

    phases = tuple(Phase) if SHRINK else (Phase.explicit, Phase.reuse, Phase.generate)
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, derandomize=not RANDOM, database=None,
                    phases=phases, report_multiple_bugs=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


_serial = itertools.count(1)


def uid(kind: int) -> str:
    """A fresh UID (of this process, this instant)."""
    return f"1.2.826.0.1.3680043.10.99.{kind}.{os.getpid()}.{time.time_ns()}.{next(_serial)}"


def run_import(conffile: Path, folder: Path | bytes) -> tuple[int, list[dict[str, Any]]]:
    """``sendit-watcher --config C import --json --no-progress FOLDER`` in this process: (exit code, JSON lines)."""
    from sendit_watcher.cli import main  # here: a benchmark that imports this module measures no command line

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--config", str(conffile), "import", "--json", "--no-progress", os.fsdecode(folder)])
    return code, [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


@dataclass
class BatchRows:
    """One batch's row and its instance and rejected_file rows, by path."""

    batch: dict[str, Any]
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    rejected_detail: dict[str, str] = field(default_factory=dict)


def rows_of(conn: Connection, batch_id: int) -> BatchRows:
    row = conn.execute("SELECT status, files, instances, rejected, last_error FROM batch WHERE id = %s",
                       (batch_id,)).fetchone()
    assert row is not None, f"no batch row {batch_id}"
    rows = BatchRows(dict(zip(("status", "files", "instances", "rejected", "last_error"), row, strict=True)))
    for path, sop, header, number, series_number, content_date in conn.execute(
            "SELECT i.path, i.sop_instance_uid, i.header::text, i.instance_number, s.series_number, i.content_date"
            " FROM instance i JOIN series s ON s.id = i.series WHERE i.batch = %s", (batch_id,)):
        assert path not in rows.instances
        rows.instances[path] = {"sop": sop, "header": header, "instance_number": number,
                                "series_number": series_number, "content_date": content_date}
    for path, reason, detail in conn.execute("SELECT path, reason, detail FROM rejected_file WHERE batch = %s",
                                             (batch_id,)):
        assert path not in rows.rejected
        rows.rejected[path] = reason
        rows.rejected_detail[path] = detail
    conn.rollback()
    return rows


def import_by_command(conffile: Path, folder: Path, conn: Connection) -> tuple[dict[str, Any], BatchRows]:
    """Import a folder through the command; not failed, and its batch's rows."""
    code, outcomes = run_import(conffile, folder)
    assert len(outcomes) == 1, outcomes
    outcome = outcomes[0]
    assert outcome["status"] != "failed" and code == 0, f"the folder failed: {outcome}"
    return outcome, rows_of(conn, outcome["batch_id"])


def check_accounting(outcome: dict[str, Any], rows: BatchRows, files: int) -> None:
    """What every import holds: one row per file, batch.files = files, every rejection with a reason."""
    assert rows.batch["status"] in ("done", "empty"), rows.batch
    assert not set(rows.instances) & set(rows.rejected), "a file is both an instance and a rejection"
    assert len(rows.instances) + len(rows.rejected) == files, (
        f"{files} files on disk, {len(rows.instances)} instance rows + {len(rows.rejected)} rejected rows: "
        f"{sorted(rows.instances)[:5]} {sorted(rows.rejected.items())[:5]}")
    assert rows.batch["files"] == files and outcome["files"] == files, (rows.batch, outcome)
    assert rows.batch["instances"] == len(rows.instances) and rows.batch["rejected"] == len(rows.rejected)
    assert all(reason.strip() for reason in rows.rejected.values()), rows.rejected


def import_and_check_accounting(conn: Connection, conffile: Path, folder: Path, files: int) -> BatchRows:
    outcome, rows = import_by_command(conffile, folder, conn)
    check_accounting(outcome, rows, files)
    return rows



def dataset_bytes(ds: Dataset, implicit: bool) -> bytes:
    """``ds`` as a file in explicit or implicit VR little endian, its file meta made from its SOP UIDs."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian if implicit else \
        pydicom.uid.ExplicitVRLittleEndian
    buffer = io.BytesIO()
    if PYDICOM3:
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    else:
        ds.is_implicit_VR, ds.is_little_endian = implicit, True
        ds.preamble = b"\0" * 128
        pydicom.dcmwrite(buffer, ds, write_like_original=False)
    return buffer.getvalue()

