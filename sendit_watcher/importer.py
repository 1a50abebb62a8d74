"""The import engine: one claimed batch becomes rows, in the one transaction that also holds its claim.

Walk the folder by stat, skip files already recorded unchanged, parse the rest (in parallel), COPY every
result into a staging table, then merge set-wise into patient/study/series/instance and rejected_file.
"""

from __future__ import annotations

import logging
import select
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from sendit_watcher import batches
from sendit_watcher.batches import Batch, BatchStatus
from sendit_watcher.db import Connection
from sendit_watcher.dicom.tags import MAIN_TAGS, SQL_TYPES, Instance
from sendit_watcher.dicom.values import storable
from sendit_watcher.names import to_disk
from sendit_watcher.outcomes import RETRYABLE, RejectReason
from sendit_watcher.parsers import Parser
from sendit_watcher.walk import FileEntry, Rejection, fingerprint, walk

__all__ = ["Result", "import_claimed"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    """How one import of one batch ended."""

    batch_id: int
    root: str
    path: str
    status: BatchStatus
    files: int
    instances: int
    new_instances: int
    rejected: int
    seconds: float
    unchanged: bool = False
    removed: int = 0  # rows of files that were gone since the last import

    @property
    def files_per_second(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else 0.0


def import_claimed(conn: Connection, batch: Batch, folder: str | None, parser: Parser, host: str, *,
                   full_header: bool, progress: Callable[[int, int], None] | None = None,
                   leave_out: str = "", force: bool = False) -> Result:
    """Import a batch claimed in the current transaction; the caller commits or rolls back. The batch's rows
    end up mirroring the folder as it is now: rows of files that are gone are removed, and a duplicate whose
    original went with them becomes the instance. ``folder`` None: the folder is gone, and so are its rows.

    Concurrency: the files are parsed and staged (the slow part) while other imports run; every decision on the
    shared rows is then taken again and carried out under the mirror lock (batches.lock_mirror), held to
    commit. Under READ COMMITTED each statement sees what was committed before it started, and the previous
    holder of the lock committed before releasing it; so each import's locked part sees every other import's
    rows as committed, and the imports act on the mirror one after another, as the one-at-a-time tests prove
    right. Without it, an import that recorded duplicates of A's instances (rows not yet committed) and A's
    removal (looking for A's duplicates in its own snapshot) missed each other, and the duplicates pointed at
    nothing. The lock holder never waits for a batch row (batches.requeue, lock_if_free: SKIP LOCKED), so a
    worker that holds its batch and waits for the lock never closes a circle. ``force`` reads every file again,
    as if each had changed (``import --force``)."""
    started = time.monotonic()
    entries = list(walk(folder, leave_out)) if folder is not None else []
    stamp = fingerprint(entries)
    # A batch that failed since is news when it succeeds, even as the folder its last success saw: failed ->
    # done takes a finished_seq, a NOTIFY and a log line.
    unchanged = not batch.failed_last
    if (not force and stamp == batch.fingerprint and not _has_retryable(conn, batch.id)
            and not batches.reread_pending(conn, batch.id)):  # the last import saw exactly this
        return _finish(conn, batch, host, stamp, len(entries), 0, 0, started, unchanged=unchanged)
    planned = _to_read(_known(conn, batch.id, force), entries)[0] if folder is not None else []
    if planned:  # parsed and staged before the lock, from the rows as they were a moment ago
        assert folder is not None
        _stage(conn, batch.id, folder, planned, parser, full_header, progress)
    batches.lock_mirror(conn)
    batches.take_reread(conn, batch.id)
    todo, gone, dropped = _reconcile(conn, batch.id, entries, force)  # the rows as they are now: nobody else writes
    staged = _restage(conn, batch.id, folder, todo, planned, parser, full_header) if folder is not None else 0
    freed = [sop for sop, _ in dropped]
    if not (todo or gone or freed):  # only metadata changed (a touch, a chmod, a new fingerprint format)
        return _finish(conn, batch, host, stamp, len(entries), 0, 0, started, unchanged=unchanged)
    new_instances = _merge(conn, batch.id, staged) if folder is not None else 0
    promoted = _promote_duplicates(conn, batch.id, freed, parser, full_header, host)
    if promoted and folder is not None:  # duplicates in this folder whose original is gone: now the instance
        again = [e for e in entries if e.path in promoted]
        new_instances += _merge(conn, batch.id, _stage_only(conn, batch.id, folder, again, parser, full_header))
    new_instances -= _returning(conn, batch.id, freed)  # a renamed or rewritten file is not a new instance
    arrived = [e.path for e in todo]  # a gone file's SOP read again here, not promoted from a duplicate: moved
    moved = _returning(conn, batch.id, [sop for sop, still_there in dropped if not still_there], arrived)
    return _finish(conn, batch, host, stamp, len(entries), new_instances, max(0, len(gone) - moved), started)


def _restage(conn: Connection, batch_id: int, folder: str, todo: list[FileEntry | Rejection],
             planned: list[FileEntry | Rejection], parser: Parser, full_header: bool) -> int:
    """Make the staging table hold exactly ``todo`` (the files to read, as decided under the mirror lock) from
    what was staged before it (``planned``); returns how many staged rows are instances. Rarely differs: a
    concurrent import freed some of this folder's duplicates, or read some of them in."""
    wanted = {e.path for e in todo}
    done = {e.path for e in planned}
    conn.execute(_CREATE_STAGING)
    if done - wanted:
        conn.execute("DELETE FROM staging WHERE path = ANY(%s)", (sorted(done - wanted),))
    missing = [e for e in todo if e.path not in done]
    if missing:
        _stage(conn, batch_id, folder, missing, parser, full_header, None)
    row = conn.execute("SELECT count(*) FROM staging WHERE reason IS NULL").fetchone()
    return int(row[0]) if row else 0


def _stage_only(conn: Connection, batch_id: int, folder: str, todo: list[FileEntry | Rejection], parser: Parser,
                full_header: bool) -> int:
    """Empty the staging table, then stage ``todo``; returns how many are instances."""
    conn.execute(_CREATE_STAGING)
    conn.execute("DELETE FROM staging")
    return _stage(conn, batch_id, folder, todo, parser, full_header, None)


def _returning(conn: Connection, batch_id: int, freed: list[str], paths: list[str] | None = None) -> int:
    """How many of the SOPInstanceUIDs this import dropped are instances of the folder again (rewritten or
    moved files), at any path or at one of ``paths`` only."""
    if not freed:
        return 0
    row = conn.execute("SELECT count(*) FROM instance WHERE batch = %s AND sop_instance_uid = ANY(%s)"
                       " AND (%s::text[] IS NULL OR path = ANY(%s))", (batch_id, freed, paths, paths)).fetchone()
    return int(row[0]) if row else 0


def _has_retryable(conn: Connection, batch_id: int) -> bool:
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM rejected_file WHERE batch = %s AND reason = ANY(%s))",
                       (batch_id, list(RETRYABLE))).fetchone()
    return bool(row and row[0])


_FORCED = (-1, -1, -1)  # a recorded stamp no file has: every file is read again


def _known(conn: Connection, batch_id: int, force: bool = False) -> dict[str, tuple[int, int, int | None]]:
    """The batch's recorded files (rejections worth another try left out) and their (size, mtime, ctime);
    ``force``: each with a stamp no file has, so that every one is read again, as a changed file is."""
    return {path: _FORCED if force else (size, mtime, ctime) for path, size, mtime, ctime in conn.execute(
        "SELECT path, size, mtime_ns, ctime_ns FROM instance WHERE batch = %s UNION ALL SELECT path, size,"
        " mtime_ns, ctime_ns FROM rejected_file WHERE batch = %s AND NOT reason = ANY(%s)",
        (batch_id, batch_id, list(RETRYABLE)))}


def _to_read(known: dict[str, tuple[int, int, int | None]], entries: list[FileEntry | Rejection]
             ) -> tuple[list[FileEntry | Rejection], list[str], list[str]]:
    """The entries to read (new or changed), the recorded paths that are gone, and the stale ones (gone or
    changed)."""
    present = {e.path: (e.size, e.mtime_ns, _ctime(e)) for e in entries}
    gone = [path for path in known if path not in present]
    stale = gone + [path for path, stamp in present.items() if path in known and not _same(known[path], stamp)]
    stale_set = set(stale)
    return [e for e in entries if e.path not in known or e.path in stale_set], gone, stale


def _same(recorded: tuple[int, int, int | None], now: tuple[int | None, int | None, int | None]) -> bool:
    """A file as recorded is the file now; a row of 1.0 or 1.1 has no ctime: its size and mtime decide."""
    return recorded == now or (recorded[2] is None and recorded[:2] == now[:2])


def _reconcile(conn: Connection, batch_id: int, entries: list[FileEntry | Rejection], force: bool = False
               ) -> tuple[list[FileEntry | Rejection], list[str], list[tuple[str, bool]]]:
    """Drop the rows of files that are gone or changed (and rejections worth another try: unreadable,
    vanished); returns the entries to read, the recorded paths that are gone (a rejection worth another try
    too, when its file is gone: its row is removed as any other), and the SOPInstanceUIDs whose instance row was
    dropped, each with whether its file is still there (changed) or not (gone)."""
    todo, gone, stale = _to_read(_known(conn, batch_id, force), entries)
    present = {e.path for e in entries}
    gone += [path for (path,) in conn.execute(
        "DELETE FROM rejected_file WHERE batch = %s AND reason = ANY(%s) RETURNING path", (batch_id, list(RETRYABLE)))
        if path not in present]
    freed: list[tuple[str, bool]] = []  # (SOPInstanceUID, whether its path is still there: changed, not gone)
    if stale:
        freed = [(sop, path in present) for sop, path in conn.execute(
            "DELETE FROM instance WHERE batch = %s AND path = ANY(%s) RETURNING sop_instance_uid, path",
            (batch_id, stale))]
        conn.execute("DELETE FROM rejected_file WHERE batch = %s AND path = ANY(%s)", (batch_id, stale))
        conn.execute("DELETE FROM main_tag_conflict WHERE batch = %s AND path = ANY(%s)", (batch_id, stale))
    return todo, gone, freed


def _ctime(entry: FileEntry | Rejection) -> int | None:
    return entry.ctime_ns if isinstance(entry, FileEntry) else None


def _promote_duplicates(conn: Connection, batch_id: int, freed: list[str], parser: Parser, full_header: bool,
                        host: str) -> set[str]:
    """Duplicates of SOPInstanceUIDs that lost their instance row and did not get a new one: their rejection
    rows go, and their folders elsewhere are read again; returns the paths of this folder's."""
    if not freed:
        return set()
    rows = conn.execute(_FREE_DUPLICATES, {"sops": freed, "duplicate": RejectReason.DUPLICATE}).fetchall()
    elsewhere: dict[int, set[str]] = {}
    for batch, path in rows:
        if batch != batch_id:
            elsewhere.setdefault(batch, set()).add(path)
    adopted = _read_outside_folders(conn, elsewhere, parser, full_header, host)
    for outside in batches.requeue(conn, sorted(set(elsewhere) - adopted)):
        log.warning("batch %d, imported by hand from outside every root, holds the only copy of instances whose"
                    " original is gone, and cannot be read here: `sendit-watcher import` of its folder on the"
                    " host that imported it records them", outside)
    return {path for batch, path in rows if batch == batch_id}


def _read_outside_folders(conn: Connection, freed: dict[int, set[str]], parser: Parser, full_header: bool,
                          host: str) -> set[int]:
    """Read the freed duplicates of folders imported by hand from outside every root, in this transaction: no
    worker has their root, so queued they would stay queued for ever. Only those this host imported and can
    open now, whose batch no one holds; returns their batch ids. The others are left to ``requeue``."""
    adopted: set[int] = set()
    for batch_id, path, imported_by in batches.lock_if_free(conn, sorted(freed), batches.OUTSIDE_ROOTS):
        if imported_by != host:
            continue
        folder = "/" + to_disk(path)
        try:
            entries = [e for e in walk(folder) if e.path in freed[batch_id]]
        except OSError:
            continue  # not there, or not readable, on this host (a sandbox hides it): left to its own import
        _merge(conn, batch_id, _stage_only(conn, batch_id, folder, entries, parser, full_header))
        conn.execute(_RECOUNT, {"batch": batch_id})
        adopted.add(batch_id)
    return adopted


_RECOUNT = """
UPDATE batch SET instances = (SELECT count(*) FROM instance WHERE batch = %(batch)s),
                 rejected = (SELECT count(*) FROM rejected_file WHERE batch = %(batch)s)
WHERE id = %(batch)s
"""


# A staged row: the file, its rejection (reason, detail) or its Instance's columns (the main tags, then the
# header), and its ctime.
_INSTANCE_FIELDS = tuple(t.column for t in MAIN_TAGS) + ("header",)
_STAGING_COLUMNS = ("path", "size", "mtime_ns", "reason", "detail") + _INSTANCE_FIELDS


def _stage(conn: Connection, batch_id: int, folder: str, todo: list[FileEntry | Rejection], parser: Parser,
           full_header: bool, progress: Callable[[int, int], None] | None) -> int:
    """COPY every result into the staging table; returns how many are instances."""
    conn.execute(_CREATE_STAGING)
    files = [e for e in todo if isinstance(e, FileEntry)]
    ctimes = {e.path: e.ctime_ns for e in files}
    results = _chain([e for e in todo if isinstance(e, Rejection)], parser.parse(folder, files, full_header))
    instances = unflushed = 0
    with conn.cursor().copy(_COPY_STAGING) as copy:
        for done, result in enumerate(results, 1):
            line = _copy_line(_staging_row(result) + (ctimes.get(result.path),))
            copy.write(line)
            instances += isinstance(result, Instance)
            unflushed += len(line)
            if unflushed > _FLUSH_BYTES:
                _flush_to_server(conn)
                unflushed = 0
            if progress is not None:
                progress(done, len(todo))
    return instances


_FLUSH_BYTES = 8 << 20


def _flush_to_server(conn: Connection) -> None:
    """Wait until libpq has sent what COPY gave it: psycopg 3.1 leaves it in libpq's output buffer, which
    then grows without bound while the server is slow (every file's header in memory at once)."""
    while conn.pgconn.flush() == 1:
        select.select([], [conn.fileno()], [], 1.0)


def _chain(first: Iterable[Rejection], second: Iterable[Instance | Rejection]) -> Iterator[Instance | Rejection]:
    yield from first
    yield from second


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\x00": None})


def _copy_line(row: tuple[Any, ...]) -> bytes:
    """One line of COPY's text format (psycopg's generic write_row costs several times more per row), in UTF-8:
    NUL characters, which no text column can hold, are dropped, and lone surrogates become U+FFFD."""
    line = "\t".join("\\N" if v is None else _copy_text(str(v)) for v in row) + "\n"
    try:
        return line.encode("utf-8")
    except UnicodeEncodeError:
        return storable(line).encode("utf-8")


def _copy_text(text: str) -> str:
    """``text`` escaped for COPY's text format; scanned first, since most values (a header of 100s of KB of
    DICOM JSON, whose strings escape their control characters) have nothing to escape, and str.translate costs
    a dictionary lookup per character."""
    if "\\" in text or "\n" in text or "\r" in text or "\t" in text or "\x00" in text:
        return text.translate(_COPY_ESCAPES)
    return text


def _staging_row(result: Instance | Rejection) -> tuple[Any, ...]:
    if isinstance(result, Rejection):
        return (result.path, result.size, result.mtime_ns, result.reason, result.detail) + _NO_INSTANCE
    return (result.path, result.size, result.mtime_ns, None, None) + tuple(
        getattr(result, name) for name in _INSTANCE_FIELDS)


_NO_INSTANCE = (None,) * len(_INSTANCE_FIELDS)


def _merge(conn: Connection, batch_id: int, staged: int) -> int:
    """Move staged rows into the hierarchy (staging empties itself at commit); returns new instance rows."""
    if staged:
        conn.execute(_MERGE_PATIENTS)
        conn.execute(_MERGE_STUDIES)
        conn.execute(_MERGE_SERIES)
        conn.execute(_RECORD_CONFLICTS, {"batch": batch_id})
    inserted = max(conn.execute(_MERGE_INSTANCES, {"batch": batch_id}).rowcount, 0) if staged else 0
    if inserted < staged:  # some staged instances already existed: they are duplicates
        conn.execute(_MERGE_DUPLICATES, {"batch": batch_id, "duplicate": RejectReason.DUPLICATE})
    conn.execute(_MERGE_REJECTED, {"batch": batch_id})
    return inserted


def _finish(conn: Connection, batch: Batch, host: str, stamp: str, files: int, new_instances: int, removed: int,
            started: float, *, unchanged: bool = False) -> Result:
    seconds = time.monotonic() - started
    finished = batches.finish(conn, batch, host=host, fingerprint=stamp, files=files, new_instances=new_instances,
                              removed=removed, seconds=seconds, unchanged=unchanged)
    return Result(batch.id, batch.root, batch.path, finished.status, files, finished.instances, new_instances,
                  finished.rejected, seconds, unchanged, removed)


# Once per connection. The header is compressed as instance.header is (migration 0004 decides: lz4 where the
# server has it), so the merge copies the compressed value as it is. attcompression is read through to_jsonb so
# that the block also runs on servers older than 14, which have no such column. The main tags' columns come
# from their table (dicom.tags.MAIN_TAGS).
_CREATE_STAGING = sql.SQL("""
DO $$
BEGIN
    IF to_regclass('pg_temp.staging') IS NULL THEN
        CREATE TEMP TABLE staging (
            path text, size bigint, mtime_ns bigint, ctime_ns bigint, reason text, detail text,
            {main_columns},
            header jsonb
        ) ON COMMIT DELETE ROWS;
        IF EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = 'instance'::regclass AND a.attname = 'header'
                   AND to_jsonb(a) ->> 'attcompression' = 'l') THEN
            EXECUTE 'ALTER TABLE pg_temp.staging ALTER COLUMN header SET COMPRESSION lz4';
        END IF;
    END IF;
END
$$
""").format(main_columns=sql.SQL(", ").join(
    sql.SQL("{} {}").format(sql.Identifier(t.column), sql.SQL(SQL_TYPES[t.kind])) for t in MAIN_TAGS))

_COPY_STAGING = sql.SQL("COPY staging ({}) FROM STDIN").format(
    sql.SQL(", ").join(sql.Identifier(c) for c in _STAGING_COLUMNS + ("ctime_ns",)))

# Each merge takes the first file (by path) for a key and leaves existing rows alone: first writer wins.
# A patient without a PatientID is one per study (study_key), never one row shared by different people.
_MERGE_PATIENTS = """
INSERT INTO patient (patient_id, issuer_of_patient_id, study_key, patient_name, patient_birth_date, patient_sex)
SELECT DISTINCT ON (patient_id, issuer_of_patient_id, study_key)
       patient_id, issuer_of_patient_id, study_key, patient_name, patient_birth_date, patient_sex
FROM (SELECT *, CASE WHEN patient_id = '' THEN study_instance_uid ELSE '' END AS study_key
      FROM staging WHERE reason IS NULL) s
ORDER BY patient_id, issuer_of_patient_id, study_key, path
ON CONFLICT (patient_id, issuer_of_patient_id, study_key) DO NOTHING
"""

_MERGE_STUDIES = """
INSERT INTO study (study_instance_uid, patient, study_date, study_time, accession_number, study_id,
                   study_description, referring_physician_name)
SELECT DISTINCT ON (s.study_instance_uid)
       s.study_instance_uid, p.id, s.study_date, s.study_time, s.accession_number, s.study_id,
       s.study_description, s.referring_physician_name
FROM staging s JOIN patient p ON p.patient_id = s.patient_id AND p.issuer_of_patient_id = s.issuer_of_patient_id
     AND p.study_key = CASE WHEN s.patient_id = '' THEN s.study_instance_uid ELSE '' END
WHERE s.reason IS NULL
ORDER BY s.study_instance_uid, s.path
ON CONFLICT (study_instance_uid) DO NOTHING
"""

_MERGE_SERIES = """
INSERT INTO series (series_instance_uid, study, modality, series_number, series_date, series_description,
                    body_part_examined)
SELECT DISTINCT ON (s.series_instance_uid)
       s.series_instance_uid, st.id, s.modality, s.series_number, s.series_date, s.series_description,
       s.body_part_examined
FROM staging s JOIN study st USING (study_instance_uid)
WHERE s.reason IS NULL
ORDER BY s.series_instance_uid, s.path
ON CONFLICT (series_instance_uid) DO NOTHING
"""

_MERGE_INSTANCES = """
INSERT INTO instance (sop_instance_uid, sop_class_uid, series, instance_number, content_date, transfer_syntax_uid,
                      batch, path, size, mtime_ns, ctime_ns, header)
SELECT DISTINCT ON (s.sop_instance_uid)
       s.sop_instance_uid, s.sop_class_uid, se.id, s.instance_number, s.content_date, s.transfer_syntax_uid,
       %(batch)s, s.path, s.size, s.mtime_ns, s.ctime_ns, s.header
FROM staging s JOIN series se USING (series_instance_uid)
WHERE s.reason IS NULL
ORDER BY s.sop_instance_uid, s.path
ON CONFLICT (sop_instance_uid) DO NOTHING
"""

_MERGE_DUPLICATES = """
INSERT INTO rejected_file (batch, path, size, mtime_ns, ctime_ns, reason, detail, duplicate_of)
SELECT %(batch)s, s.path, s.size, s.mtime_ns, s.ctime_ns, %(duplicate)s,
       'same SOPInstanceUID as ' || b.root || ':' || b.path || '/' || i.path, s.sop_instance_uid
FROM staging s
JOIN instance i ON i.sop_instance_uid = s.sop_instance_uid
JOIN batch b ON b.id = i.batch
WHERE s.reason IS NULL AND NOT (i.batch = %(batch)s AND i.path = s.path)
ON CONFLICT (batch, path_key(path)) DO NOTHING
"""

_MERGE_REJECTED = """
INSERT INTO rejected_file (batch, path, size, mtime_ns, ctime_ns, reason, detail)
SELECT %(batch)s, path, size, mtime_ns, ctime_ns, reason, detail FROM staging WHERE reason IS NOT NULL
ON CONFLICT (batch, path_key(path)) DO NOTHING
"""

# Files filed under a study or series whose stored main tags they contradict: which file, which tag.
_RECORD_CONFLICTS = """
INSERT INTO main_tag_conflict (batch, path, sop_instance_uid, level, tag, stored_id)
SELECT %(batch)s, s.path, s.sop_instance_uid, 'study',
       CASE WHEN p.patient_id <> s.patient_id THEN 'PatientID (0010,0020)'
            ELSE 'IssuerOfPatientID (0010,0021)' END, st.id
FROM staging s JOIN study st USING (study_instance_uid) JOIN patient p ON p.id = st.patient
WHERE s.reason IS NULL AND (p.patient_id <> s.patient_id OR p.issuer_of_patient_id <> s.issuer_of_patient_id)
UNION ALL
SELECT %(batch)s, s.path, s.sop_instance_uid, 'series', 'StudyInstanceUID (0020,000D)', se.id
FROM staging s JOIN series se USING (series_instance_uid) JOIN study st ON st.id = se.study
WHERE s.reason IS NULL AND st.study_instance_uid <> s.study_instance_uid
ON CONFLICT (batch, path_key(path), tag) DO NOTHING
"""

_FREE_DUPLICATES = """
DELETE FROM rejected_file r
WHERE r.reason = %(duplicate)s AND r.duplicate_of = ANY(%(sops)s)
  AND NOT EXISTS (SELECT 1 FROM instance i WHERE i.sop_instance_uid = r.duplicate_of)
RETURNING r.batch, r.path
"""
