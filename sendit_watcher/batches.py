"""The batch protocol, in one place: the batch table as a durable queue and the record of every folder.

Enqueue a folder, claim one (SKIP LOCKED, inside the transaction that imports it), finish it (commit-ordered
``finished_seq`` and a NOTIFY), record a failure, retry it; and the reads other modules need of the table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from psycopg.rows import class_row, dict_row

from sendit_watcher.config import Config
from sendit_watcher.db import Connection
from sendit_watcher.locks import FINISH_LOCK, LEGACY_LOCKS, batch_lock
from sendit_watcher.names import to_disk, to_text

__all__ = ["BatchStatus", "Batch", "Finished", "QueueCounts", "OUTSIDE_ROOTS", "NOTIFY_CHANNEL", "QUEUE_CHANNEL",
           "FINISH_LOCK", "locate", "resolve", "ensure", "enqueue", "enqueue_known", "claim", "claim_id", "finish",
           "record_failure", "retry", "requeue", "known_folders", "queue_counts", "finished_after", "latest_seq"]

OUTSIDE_ROOTS = "/"  # root name of folders imported from outside every watch root; paths relative to /
NOTIFY_CHANNEL = "sendit_batch"  # a batch finished (done, empty or failed): payload is its id
QUEUE_CHANNEL = "sendit_queue"  # a batch was queued: wakes idle workers


class BatchStatus(StrEnum):
    """Where a batch stands; ``importing`` is never committed (a worker's advisory lock shows it)."""

    QUEUED = "queued"
    IMPORTING = "importing"
    DONE = "done"
    EMPTY = "empty"
    FAILED = "failed"


@dataclass(frozen=True)
class Batch:
    """A claimed batch row, with the fingerprint of its last successful import."""

    id: int
    root: str
    path: str
    fingerprint: str | None
    imports: int
    finished_seq: int | None = None  # at claim time: a failure is never recorded over a later success
    failed_last: bool = False  # its last import failed: the next success is news, even if nothing changed


@dataclass(frozen=True)
class Finished:
    """A batch's row as its finishing step left it."""

    status: BatchStatus
    instances: int
    rejected: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", BatchStatus(self.status))  # the row gives the status as text


@dataclass(frozen=True)
class QueueCounts:
    """The queue at a glance, for the service's STATUS= line."""

    queued: int
    imported: int
    failed: int
    seconds_since_last: float | None


def locate(config: Config, folder: Path) -> tuple[str, str]:
    """The (root name, path relative to it) under which ``folder`` is recorded."""
    folder = Path(os.path.abspath(folder))
    for watch in config.watches:
        if watch.path in folder.parents:
            return watch.name, to_text(folder.relative_to(watch.path).as_posix())
    return OUTSIDE_ROOTS, to_text(folder.relative_to("/").as_posix())


def resolve(config: Config, root: str, path: str) -> Path:
    """The folder on this host for a batch's (root, path); KeyError when the root is not configured here."""
    if root == OUTSIDE_ROOTS:
        return Path("/") / to_disk(path)
    watch = config.watch_named(root)
    if watch is None:
        raise KeyError(f"watch root {root!r} is not configured on this host")
    return watch.path / to_disk(path)


def ensure(conn: Connection, root: str, path: str) -> int:
    """The id of a folder's batch row for an ad-hoc import, creating it if it was never seen; never waits for a
    lock. A new row is 'empty' (seen, nothing imported), never 'queued': no worker may take it from the import
    that is about to claim it."""
    with conn.transaction():
        conn.execute("INSERT INTO batch (root, path, status) VALUES (%s, %s, %s) ON CONFLICT (root, path) DO NOTHING",
                     (root, path, BatchStatus.EMPTY))
        row = conn.execute("SELECT id FROM batch WHERE root = %s AND path = %s", (root, path)).fetchone()
    assert row is not None
    return int(row[0])


def enqueue(conn: Connection, root: str, path: str, scan_began: datetime | None = None) -> int | None:
    """Queue a folder (one row per folder, ever); None when a worker holds it right now (try again later). A
    folder only a catch-up scan found, which did not see its batch failed (``scan_began``: the database's time
    just before the scan read the batch rows), is left alone when its batch has failed since: the scan looked
    at the folder as it was before that failure (ScanResult.scan_began)."""
    with conn.transaction():
        conn.execute("INSERT INTO batch (root, path) VALUES (%s, %s) ON CONFLICT (root, path) DO NOTHING",
                     (root, path))
        row = conn.execute(
            "SELECT id, status, finished_at FROM batch WHERE root = %s AND path = %s FOR UPDATE SKIP LOCKED",
            (root, path)).fetchone()
        if row is None:
            return None
        batch_id, status = int(row[0]), BatchStatus(row[1])
        if status is BatchStatus.FAILED and scan_began is not None and row[2] is not None and row[2] >= scan_began:
            return batch_id
        if status is not BatchStatus.QUEUED:
            conn.execute("UPDATE batch SET status = %s, queued_at = now() WHERE id = %s",
                         (BatchStatus.QUEUED, batch_id))
        conn.execute("SELECT pg_notify(%s, %s)", (QUEUE_CHANNEL, str(batch_id)))  # wakes idle workers
    return batch_id


def enqueue_known(conn: Connection, root: str, path: str) -> int | None:
    """Queue a folder that is gone from disk, so that a worker removes its rows; 0 (nothing to do) for a folder
    never recorded; None when a worker holds it right now (try again later)."""
    with conn.transaction():
        row = conn.execute("SELECT id, status FROM batch WHERE root = %s AND path = %s FOR UPDATE SKIP LOCKED",
                           (root, path)).fetchone()
        if row is None:
            exists = conn.execute("SELECT 1 FROM batch WHERE root = %s AND path = %s", (root, path)).fetchone()
            return None if exists else 0
        if row[1] != BatchStatus.QUEUED:
            conn.execute("UPDATE batch SET status = %s, queued_at = now() WHERE id = %s",
                         (BatchStatus.QUEUED, row[0]))
        conn.execute("SELECT pg_notify(%s, %s)", (QUEUE_CHANNEL, str(row[0])))
    return int(row[0])


# A claim reads what the import needs; attempts > 0: the batch's last import failed (a success resets it).
_CLAIM_NEXT = """
SELECT id, root, path, fingerprint, imports, finished_seq, attempts > 0 AS failed_last FROM batch
WHERE status = %s AND root = ANY(%s) AND (next_attempt_at IS NULL OR next_attempt_at <= now())
ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED
"""
_CLAIM_ID = """
SELECT id, root, path, fingerprint, imports, finished_seq, attempts > 0 AS failed_last FROM batch
WHERE id = %s FOR UPDATE
"""


def claim(conn: Connection, roots: list[str]) -> Batch | None:
    """Lock the oldest queued batch of one of ``roots`` (the roots this host has) that is not backing off, for
    this transaction (SKIP LOCKED); None when there is none free."""
    with conn.cursor(row_factory=class_row(Batch)) as cursor:
        batch = cursor.execute(_CLAIM_NEXT, (BatchStatus.QUEUED, roots)).fetchone()
    return _mark_importing(conn, batch)


def claim_id(conn: Connection, batch_id: int) -> Batch | None:
    """Lock one given batch for this transaction, waiting for a worker that holds it (an ad-hoc import)."""
    with conn.cursor(row_factory=class_row(Batch)) as cursor:
        batch = cursor.execute(_CLAIM_ID, (batch_id,)).fetchone()
    return _mark_importing(conn, batch)


def _mark_importing(conn: Connection, batch: Batch | None) -> Batch | None:
    if batch is None:
        return None
    # The advisory lock lets `status` see which batches are being imported without a committed 'importing'.
    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", batch_lock(batch.id))
    conn.execute("UPDATE batch SET status = %s, started_at = clock_timestamp() WHERE id = %s",
                 (BatchStatus.IMPORTING, batch.id))
    return batch


def finish(conn: Connection, batch: Batch, *, host: str, fingerprint: str, files: int, new_instances: int,
           removed: int, seconds: float, unchanged: bool) -> Finished:
    """Record a successful import in the claiming transaction: counts, fingerprint, and unless nothing changed,
    the next ``finished_seq`` and a NOTIFY (both take effect at commit, in commit order)."""
    if not unchanged:  # held until commit, so finished_seq numbers batches in commit order
        _lock_finishing(conn)
    with conn.cursor(row_factory=class_row(Finished)) as cursor:
        finished = cursor.execute(_FINISH, {"batch": batch.id, "fingerprint": fingerprint, "files": files,
                                            "new": new_instances, "removed": removed, "seconds": seconds,
                                            "host": host, "channel": NOTIFY_CHANNEL,
                                            "counted": 0 if unchanged else 1, "empty": BatchStatus.EMPTY,
                                            "done": BatchStatus.DONE}).fetchone()
    assert finished is not None
    return finished


def _lock_finishing(conn: Connection) -> None:
    """Take the lock that orders finished_seq by commit, until this transaction ends (see locks.LEGACY_LOCKS)."""
    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", FINISH_LOCK)
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (LEGACY_LOCKS[FINISH_LOCK],))


# The NOTIFY is in the update's RETURNING: a data-modifying CTE runs to completion, RETURNING included, whether
# or not the outer query reads that column.
_FINISH = """
WITH counts AS (
    SELECT (SELECT count(*) FROM instance WHERE batch = %(batch)s) AS instances,
           (SELECT count(*) FROM rejected_file WHERE batch = %(batch)s) AS rejected
), done AS (
    UPDATE batch SET
        status = CASE WHEN %(files)s = 0 THEN %(empty)s ELSE %(done)s END,
        fingerprint = %(fingerprint)s, files = %(files)s, new_instances = %(new)s, removed = %(removed)s,
        instances = counts.instances, rejected = counts.rejected,
        imports = imports + %(counted)s, attempts = 0, last_error = NULL, next_attempt_at = NULL,
        host = CASE WHEN %(counted)s = 1 THEN %(host)s ELSE host END,
        failed_fingerprint = NULL,
        finished_at = clock_timestamp(), seconds = %(seconds)s,
        finished_seq = CASE WHEN %(counted)s = 1 THEN nextval('batch_finished_seq') ELSE finished_seq END
    FROM counts WHERE id = %(batch)s
    RETURNING status, batch.instances, batch.rejected,
              CASE WHEN %(counted)s = 1 THEN pg_notify(%(channel)s, id::text) END AS notified
)
SELECT status, instances, rejected FROM done
"""


BACKOFF_SECONDS = 5.0  # the first wait after a failure; doubled at each failure in a row
BACKOFF_CAP_SECONDS = 3600.0


def requeue(conn: Connection, batch_ids: list[int]) -> None:
    """Queue finished batches again, to be read again from scratch (their fingerprint is forgotten): their
    folders hold duplicates that are now the only copy of an instance."""
    if batch_ids:
        conn.execute("UPDATE batch SET status = %s, queued_at = now(), fingerprint = NULL, next_attempt_at = NULL"
                     " WHERE id = ANY(%s)", (BatchStatus.QUEUED, batch_ids))
        conn.execute("SELECT pg_notify(%s, %s)", (QUEUE_CHANNEL, "requeued"))


def record_failure(conn: Connection, batch: Batch, host: str, error: str, fingerprint: str | None) -> bool:
    """Mark a batch failed with its error (which must hold no value from any file), in a transaction of its
    own, with an exponential back-off before it may be claimed again, and tell listeners. Nothing is recorded
    when another worker finished the batch since it was claimed; returns whether it was recorded."""
    with conn.transaction():
        _lock_finishing(conn)
        updated = conn.execute(_FAIL, {"failed": BatchStatus.FAILED, "error": error[:2000], "host": host,
                                       "fingerprint": fingerprint, "base": BACKOFF_SECONDS,
                                       "cap": BACKOFF_CAP_SECONDS, "batch": batch.id,
                                       "seq": batch.finished_seq}).rowcount
        if updated:
            conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(batch.id)))
    return bool(updated)


_FAIL = """
UPDATE batch SET status = %(failed)s, last_error = %(error)s, attempts = attempts + 1, host = %(host)s,
    finished_at = clock_timestamp(), finished_seq = nextval('batch_finished_seq'),
    failed_fingerprint = %(fingerprint)s,
    next_attempt_at = clock_timestamp() + make_interval(secs => least(%(cap)s, %(base)s * 2 ^ least(attempts, 30)))
WHERE id = %(batch)s AND finished_seq IS NOT DISTINCT FROM %(seq)s
"""


def retry(conn: Connection, batch_id: int) -> str | None:
    """Queue a failed batch again; returns its status when it is not failed (nothing is changed then)."""
    with conn.transaction():
        row = conn.execute("SELECT status FROM batch WHERE id = %s FOR UPDATE", (batch_id,)).fetchone()
        if row is None:
            return "missing"
        if row[0] != BatchStatus.FAILED:
            return str(row[0])
        conn.execute("UPDATE batch SET status = %s, queued_at = now(), next_attempt_at = NULL WHERE id = %s",
                     (BatchStatus.QUEUED, batch_id))
        conn.execute("SELECT pg_notify(%s, %s)", (QUEUE_CHANNEL, str(batch_id)))
    return None


def database_time(conn: Connection) -> datetime:
    """The database's clock now (the clock batch rows are stamped with)."""
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    conn.rollback()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def known_folders(conn: Connection, root: str) -> dict[str, tuple[str | None, BatchStatus]]:
    """Every folder recorded under ``root``: its status and the fingerprint it had when it was last imported
    (or, for a failed one, when it failed), for the catch-up scan."""
    rows = conn.execute("SELECT path, CASE WHEN status = %s THEN failed_fingerprint ELSE fingerprint END, status"
                        " FROM batch WHERE root = %s", (BatchStatus.FAILED, root)).fetchall()
    conn.rollback()
    return {path: (stamp, BatchStatus(status)) for path, stamp, status in rows}


def queue_counts(conn: Connection) -> QueueCounts:
    """Queued, imported (done or empty) and failed batches, and seconds since the last one finished."""
    with conn.cursor(row_factory=class_row(QueueCounts)) as cursor:
        counts = cursor.execute(_QUEUE_COUNTS, (BatchStatus.QUEUED, BatchStatus.DONE, BatchStatus.EMPTY,
                                                BatchStatus.FAILED)).fetchone()
    conn.rollback()
    assert counts is not None
    return counts


_QUEUE_COUNTS = """
SELECT count(*) FILTER (WHERE status = %s) AS queued, count(*) FILTER (WHERE status IN (%s, %s)) AS imported,
       count(*) FILTER (WHERE status = %s) AS failed,
       extract(epoch FROM now() - max(finished_at))::float8 AS seconds_since_last
FROM batch
"""


_FINISHED_AFTER = """
SELECT finished_seq AS seq, id, root, path AS folder, status, files, instances, new_instances, rejected,
       removed, imports > 1 AND new_instances > 0 AS grew, seconds, files_per_second, host, finished_at,
       last_error
FROM batch WHERE finished_seq > %s ORDER BY finished_seq
"""


def finished_after(conn: Connection, seq: int) -> list[dict[str, Any]]:
    """Batches finished after ``seq``, oldest first, as the hand-off records them."""
    with conn.cursor(row_factory=dict_row) as cursor:
        rows = cursor.execute(_FINISHED_AFTER, (seq,)).fetchall()
    conn.rollback()
    return rows


def latest_seq(conn: Connection) -> int:
    """The ``finished_seq`` of the batch that finished last (0 before any)."""
    row = conn.execute("SELECT coalesce(max(finished_seq), 0) FROM batch").fetchone()
    conn.rollback()
    return int(row[0]) if row else 0

