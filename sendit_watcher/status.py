"""What the database says about the work: recent batches and totals, for ``status`` and the service's STATUS=."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import class_row

from sendit_watcher.batches import BatchStatus
from sendit_watcher.db import Connection
from sendit_watcher.locks import BATCH_CLASS

__all__ = ["BatchRow", "Totals", "HostCounts", "recent_batches", "totals", "by_status_and_host"]


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
    def imported(self) -> int:
        return self.batches.get(BatchStatus.DONE, 0)


# A worker holds its batch's two-key advisory lock (locks.batch_lock) while importing: objsubid 2, and the id is
# (classid - BATCH_CLASS) << 32 | objid. One-bigint locks (objsubid 1) are other clients', never a batch's.
_RECENT = """
SELECT b.id, b.root, b.path,
       CASE WHEN l.pid IS NOT NULL THEN %(importing)s ELSE b.status END AS status,
       b.files, b.instances, b.rejected, b.seconds, b.finished_at, b.host, b.last_error
FROM batch b
LEFT JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
     AND l.classid::bigint >= %(batch_class)s AND ((l.classid::bigint - %(batch_class)s) << 32 | l.objid::bigint) = b.id
ORDER BY coalesce(b.finished_at, b.queued_at) DESC, b.id DESC
LIMIT %(limit)s
"""

_TOTALS = """
SELECT coalesce((SELECT json_object_agg(status, n) FROM (SELECT status, count(*) AS n FROM batch GROUP BY status) s),
                '{}') AS batches,
       (SELECT count(*) FROM patient) AS patients, (SELECT count(*) FROM study) AS studies,
       (SELECT count(*) FROM series) AS series, (SELECT count(*) FROM instance) AS instances,
       (SELECT count(*) FROM rejected_file) AS rejected, (SELECT max(finished_at) FROM batch) AS last_finished
"""


def recent_batches(conn: Connection, limit: int = 20) -> list[BatchRow]:
    """The most recently finished or queued batches, newest first."""
    with conn.cursor(row_factory=class_row(BatchRow)) as cursor:
        return cursor.execute(_RECENT, {"importing": BatchStatus.IMPORTING, "limit": limit,
                                        "batch_class": BATCH_CLASS}).fetchall()


def totals(conn: Connection) -> Totals:
    """Batch counts by status and row counts of the hierarchy."""
    with conn.cursor(row_factory=class_row(Totals)) as cursor:
        row = cursor.execute(_TOTALS).fetchone()
    assert row is not None
    return row


@dataclass(frozen=True)
class HostCounts:
    """Batches of one status last handled by one host, with the sums of their counts (for ``metrics``)."""

    status: BatchStatus
    host: str
    batches: int
    files: int
    instances: int
    rejected: int
    seconds: float
    attempts: int


_BY_STATUS_AND_HOST = """
SELECT status, coalesce(host, '') AS host, count(*) AS batches, coalesce(sum(files), 0) AS files,
       coalesce(sum(instances), 0) AS instances, coalesce(sum(rejected), 0) AS rejected,
       coalesce(sum(seconds), 0)::float8 AS seconds, coalesce(sum(attempts), 0) AS attempts
FROM batch GROUP BY status, host ORDER BY status, host
"""


def by_status_and_host(conn: Connection) -> list[HostCounts]:
    """Batch counts and sums grouped by status and host."""
    with conn.cursor(row_factory=class_row(HostCounts)) as cursor:
        rows = cursor.execute(_BY_STATUS_AND_HOST).fetchall()
    conn.rollback()
    return rows
