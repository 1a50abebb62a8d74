"""What the database says about the work: recent batches and totals, for ``status`` and the service's STATUS=."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import class_row, dict_row

from sendit_watcher.batches import BatchStatus, Tally, tally
from sendit_watcher.db import Connection
from sendit_watcher.locks import BATCH_CLASS

__all__ = ["BatchRow", "Totals", "HostCounts", "RejectedRow", "recent_batches", "failed_batches", "totals",
           "by_status_and_host", "last_success", "rejected_files", "batch_id_of"]


@dataclass(frozen=True)
class BatchRow:
    """One batch as ``status`` shows it; 'importing' when a worker holds it right now."""

    id: int
    root: str
    path: str
    status: BatchStatus
    files: int
    instances: int
    rejected: int
    seconds: float | None
    finished_at: datetime | None
    host: str | None
    last_error: str | None


@dataclass(frozen=True)
class Totals:
    """Counts over the whole schema."""

    batches: dict[str, int]
    patients: int
    studies: int
    series: int
    instances: int
    rejected: int
    last_finished: datetime | None

    @property
    def queued(self) -> int:
        return self.batches.get(BatchStatus.QUEUED, 0)

    @property
    def done(self) -> int:
        """Batches whose folder is imported with files (status done; not empty ones)."""
        return self.batches.get(BatchStatus.DONE, 0)


# A worker holds its batch's two-key advisory lock (locks.batch_lock) while importing: objsubid 2, and the id is
# (classid - BATCH_CLASS) << 32 | objid. One-bigint locks (objsubid 1) are other clients', never a batch's. The
# newest rows come first from the index batch_recent (migration 0007), and only they meet pg_locks.
_RECENT = """
SELECT b.id, b.root, b.path,
       CASE WHEN l.pid IS NOT NULL THEN %(importing)s ELSE b.status END AS status,
       b.files, b.instances, b.rejected, b.seconds, b.finished_at, b.host, b.last_error
FROM (SELECT * FROM batch ORDER BY coalesce(finished_at, queued_at) DESC, id DESC LIMIT %(limit)s) b
LEFT JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
     AND l.classid::bigint >= %(batch_class)s AND ((l.classid::bigint - %(batch_class)s) << 32 | l.objid::bigint) = b.id
ORDER BY coalesce(b.finished_at, b.queued_at) DESC, b.id DESC
"""

# Every failed batch, however old (status --failed): the same columns and lock test.
_FAILED = """
SELECT b.id, b.root, b.path,
       CASE WHEN l.pid IS NOT NULL THEN %(importing)s ELSE b.status END AS status,
       b.files, b.instances, b.rejected, b.seconds, b.finished_at, b.host, b.last_error
FROM (SELECT * FROM batch WHERE status = %(failed)s) b
LEFT JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
     AND l.classid::bigint >= %(batch_class)s AND ((l.classid::bigint - %(batch_class)s) << 32 | l.objid::bigint) = b.id
ORDER BY coalesce(b.finished_at, b.queued_at) DESC, b.id DESC
"""

_TOTALS = """
SELECT (SELECT count(*) FROM patient) AS patients, (SELECT count(*) FROM study) AS studies,
       (SELECT count(*) FROM series) AS series, (SELECT count(*) FROM instance) AS instances,
       (SELECT count(*) FROM rejected_file) AS rejected, (SELECT max(finished_at) FROM batch) AS last_finished
"""


def recent_batches(conn: Connection, limit: int = 20) -> list[BatchRow]:
    """The most recently finished or queued batches, newest first."""
    with conn.cursor(row_factory=class_row(BatchRow)) as cursor:
        return cursor.execute(_RECENT, {"importing": BatchStatus.IMPORTING, "limit": limit,
                                        "batch_class": BATCH_CLASS}).fetchall()


def failed_batches(conn: Connection) -> list[BatchRow]:
    """Every failed batch (``status --failed``), newest first, with its error."""
    with conn.cursor(row_factory=class_row(BatchRow)) as cursor:
        return cursor.execute(_FAILED, {"importing": BatchStatus.IMPORTING, "failed": BatchStatus.FAILED,
                                        "batch_class": BATCH_CLASS}).fetchall()


@dataclass(frozen=True)
class RejectedRow:
    """One rejected file (``rejected``): its batch, folder, path in the folder, reason and detail."""

    batch: int
    root: str
    folder: str
    path: str
    reason: str
    detail: str
    rejected_at: datetime


_REJECTED = """
SELECT r.batch, b.root, b.path AS folder, r.path, r.reason, r.detail, r.rejected_at
FROM rejected_file r JOIN batch b ON b.id = r.batch
WHERE %(batch)s::bigint IS NULL OR r.batch = %(batch)s
ORDER BY r.batch, r.path
"""


def rejected_files(conn: Connection, batch_id: int | None = None) -> list[RejectedRow]:
    """The rejected files of one batch, or of every batch."""
    with conn.cursor(row_factory=class_row(RejectedRow)) as cursor:
        return cursor.execute(_REJECTED, {"batch": batch_id}).fetchall()


def batch_id_of(conn: Connection, root: str, path: str) -> int | None:
    """The id of the batch of a folder (by its root name and path), None when it was never seen."""
    row = conn.execute("SELECT id FROM batch WHERE root = %s AND path = %s", (root, path)).fetchone()
    return None if row is None else int(row[0])


def totals(conn: Connection) -> Totals:
    """Batch counts by status (from batch_tally: flat in the number of batch rows) and row counts of the
    hierarchy."""
    batches: dict[str, int] = {}
    for counted in tally(conn):
        batches[counted.status] = batches.get(counted.status, 0) + counted.batches
    with conn.cursor(row_factory=dict_row) as cursor:
        counts = cursor.execute(_TOTALS).fetchone()
    assert counts is not None
    return Totals(batches=batches, **counts)


HostCounts = Tally  # batches of one status last handled by one host, with the sums of their counts


def by_status_and_host(conn: Connection) -> list[HostCounts]:
    """Batch counts and sums grouped by status and host (host '' for a batch no host has handled yet)."""
    return tally(conn)


_LAST_SUCCESS = """
SELECT finished_at FROM batch WHERE status IN (%(done)s, %(empty)s) AND finished_at IS NOT NULL
ORDER BY finished_at DESC LIMIT 1
"""


def last_success(conn: Connection) -> datetime | None:
    """When the last import that succeeded (done, or empty: a folder emptied or removed) committed; the index
    batch_finished is read backwards, up to the first success."""
    row = conn.execute(_LAST_SUCCESS, {"done": BatchStatus.DONE, "empty": BatchStatus.EMPTY}).fetchone()
    return None if row is None else row[0]
