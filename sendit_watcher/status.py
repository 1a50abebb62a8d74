"""What the database says about the work: recent batches and totals, for ``status`` and the service's STATUS=."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sendit_watcher.db import Connection

__all__ = ["BatchRow", "Totals", "recent_batches", "totals"]


@dataclass(frozen=True)
class BatchRow:
    """One batch as ``status`` shows it; 'importing' when a worker holds it right now."""

    id: int
    root: str
    path: str
    status: str
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
        return self.batches.get("queued", 0)

    @property
    def imported(self) -> int:
        return self.batches.get("done", 0)


# A worker holds pg_advisory_xact_lock(batch id) while importing; bigint keys show as classid<<32 | objid.
_RECENT = """
SELECT b.id, b.root, b.path,
       CASE WHEN l.pid IS NOT NULL THEN 'importing' ELSE b.status END,
       b.files, b.instances, b.rejected, b.seconds, b.finished_at, b.host, b.last_error
FROM batch b
LEFT JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
     AND (l.classid::bigint << 32 | l.objid::bigint) = b.id
ORDER BY coalesce(b.finished_at, b.queued_at) DESC, b.id DESC
LIMIT %s
"""

_TOTALS = """
SELECT (SELECT json_object_agg(status, n) FROM (SELECT status, count(*) AS n FROM batch GROUP BY status) s),
       (SELECT count(*) FROM patient), (SELECT count(*) FROM study), (SELECT count(*) FROM series),
       (SELECT count(*) FROM instance), (SELECT count(*) FROM rejected_file),
       (SELECT max(finished_at) FROM batch)
"""


def recent_batches(conn: Connection, limit: int = 20) -> list[BatchRow]:
    """The most recently finished or queued batches, newest first."""
    return [BatchRow(*row) for row in conn.execute(_RECENT, (limit,))]  # type: ignore[arg-type]


def totals(conn: Connection) -> Totals:
    """Batch counts by status and row counts of the hierarchy."""
    row = conn.execute(_TOTALS).fetchone()
    assert row is not None
    by_status = {str(k): int(v) for k, v in (row[0] or {}).items()}  # type: ignore[attr-defined]
    patients, studies, series, instances, rejected = (int(str(n)) for n in row[1:6])
    last = row[6] if isinstance(row[6], datetime) else None
    return Totals(by_status, patients, studies, series, instances, rejected, last)
