"""The batch protocol, in one place: the batch table as a durable queue and the record of every folder.

Enqueue a folder, claim one (SKIP LOCKED, inside the transaction that imports it), finish it (commit-ordered
``finished_seq`` and a NOTIFY), record a failure, retry it; and the reads other modules need of the table.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from psycopg.rows import class_row, dict_row

from sendit_watcher.config import Config
from sendit_watcher.db import Connection
from sendit_watcher.locks import FINISH_LOCK, LEGACY_LOCKS, TALLY_LOCK, batch_lock
from sendit_watcher.names import to_disk, to_text
from sendit_watcher.outcomes import BatchStatus

__all__ = ["BatchStatus", "Batch", "Finished", "QueueCounts", "OUTSIDE_ROOTS", "NOTIFY_CHANNEL", "QUEUE_CHANNEL",
           "FINISH_LOCK", "DEATHS_LIMIT", "locate", "resolve", "ensure", "enqueue", "enqueue_known", "claim",
           "claim_id", "hold", "next_queued", "deaths", "start_attempt", "end_attempt", "record_death", "claim_queued",
           "finish", "record_failure", "retry", "retry_failed", "requeue", "lock_mirror", "reread_pending",
           "take_reread", "lock_if_free", "Known", "known_folders", "see", "Tally", "TALLY_LOCK", "tally", "fold_tally",
           "queue_counts", "finished_after", "latest_seq"]

log = logging.getLogger(__name__)

# Longer than a share's client caches may hide a folder from one host while another already sees it (NFS caches
# directory attributes for at most 60 s by default): a folder recorded longer ago than this, missing from the root
# of a host whose root has shown it is the share, is gone, though that host never saw it (a host renamed, a
# worker host replaced, a deletion while only the other hosts ran).
SHARE_CACHE_SECONDS = 600

OUTSIDE_ROOTS = "/"  # root name of folders imported from outside every watch root; paths relative to /
NOTIFY_CHANNEL = "sendit_batch"  # a batch finished (done, empty or failed): payload is its id
QUEUE_CHANNEL = "sendit_queue"  # a batch was queued: wakes idle workers
# The mirror lock: an advisory lock every import takes before its first write to the rows of the mirror
# (instance, rejected_file, main_tag_conflict, patient, study, series, requeues) and holds to its commit; so
# finished_seq follows commit order, and no two imports ever decide on rows the other is changing (see
# importer.import_claimed). Its key, and TALLY_LOCK's, are in locks.py.


@dataclass(frozen=True)
class Batch:
    """A claimed batch row, with the fingerprint of its last successful import."""

    id: int
    root: str
    path: str
    fingerprint: str | None
    imports: int
    finished_seq: int | None = None  # at claim time: a failure is never recorded over a later success
    removal: bool = False  # queued because its folder was deleted or moved away (enqueue_known)
    failed_last: bool = False  # its last import failed: the next success is news, even if nothing changed
    seen_on: list[str] = field(default_factory=list)  # the hosts that saw its folder (migration 0013)


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
    finished: int  # done or empty: the folders imported, with or without files (STATUS's "folders imported")
    failed: int
    seconds_since_last: float | None


def locate(config: Config, folder: Path) -> tuple[str, str]:
    """The (root name, path relative to it) under which ``folder`` is recorded: under a watch root also when it
    is reached through a symbolic link (its real path is under the root's real path)."""
    folder = Path(os.path.abspath(folder))
    real = Path(os.path.realpath(folder))
    for watch in config.watches:
        if watch.path in folder.parents:
            return watch.name, to_text(folder.relative_to(watch.path).as_posix())
        if Path(os.path.realpath(watch.path)) in real.parents:
            return watch.name, to_text(real.relative_to(os.path.realpath(watch.path)).as_posix())
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


def enqueue(conn: Connection, root: str, path: str, scan_began: datetime | None = None, *,
            host: str | None = None) -> int | None:
    """Queue a folder (one row per folder, ever); None when a worker holds it right now (try again later). A
    folder only a catch-up scan found, which did not see its batch failed (``scan_began``: the database's time
    just before the scan read the batch rows), is left alone when its batch has failed since: the scan looked
    at the folder as it was before that failure (ScanResult.scan_began). ``host``: the host that found the folder
    finished on its disk, which has seen it from now on (``seen``)."""
    with conn.transaction():
        conn.execute("INSERT INTO batch (root, path) VALUES (%s, %s) ON CONFLICT (root, path) DO NOTHING",
                     (root, path))
        row = conn.execute(
            "SELECT id, status, finished_at, removal FROM batch WHERE root = %s AND path = %s"
            " FOR UPDATE SKIP LOCKED", (root, path)).fetchone()
        if row is None:
            return None
        batch_id, status = int(row[0]), BatchStatus(row[1])
        if status is BatchStatus.FAILED and scan_began is not None and row[2] is not None and row[2] >= scan_began:
            return batch_id
        if status is not BatchStatus.QUEUED:
            conn.execute("UPDATE batch SET status = %s, queued_at = now() WHERE id = %s",
                         (BatchStatus.QUEUED, batch_id))
        if row[3]:  # a removal still waiting: the folder is back, finished, and is to be imported instead
            conn.execute("UPDATE batch SET removal = false, next_attempt_at = NULL WHERE id = %s", (batch_id,))
        if host is not None:
            _see(conn, [batch_id], host)
        conn.execute("SELECT pg_notify(%s, %s)", (QUEUE_CHANNEL, str(batch_id)))  # wakes idle workers
    return batch_id


def _see(conn: Connection, batch_ids: list[int], host: str) -> None:
    """``host`` found these folders finished on its disk: it has seen them, unless another host saw a folder of
    that name and this host's root has not shown it is theirs (roots.share): a namesake there proves nothing."""
    conn.execute("UPDATE batch SET seen_on = array_append(seen_on, %(host)s) WHERE id = ANY(%(ids)s)"
                 " AND NOT %(host)s = ANY(seen_on) AND (coalesce(fingerprint, '0:') LIKE '0:%%' OR EXISTS ("
                 " SELECT 1 FROM root_identity r"
                 " WHERE r.root = batch.root AND r.host = %(host)s AND r.shared))", {"host": host, "ids": batch_ids})


def see(conn: Connection, root: str, paths: list[str], host: str) -> None:
    """Record that ``host`` has seen these folders of ``root`` as they were last recorded (a catch-up listing)."""
    if paths:
        with conn.transaction():
            conn.execute("UPDATE batch SET seen_on = array_append(seen_on, %(host)s) WHERE root = %(root)s"
                         " AND path = ANY(%(paths)s::text[]) AND NOT %(host)s = ANY(seen_on)",
                         {"host": host, "root": root, "paths": paths})



def enqueue_known(conn: Connection, root: str, path: str, hold_seconds: float = 0.0, *,
                  host: str) -> int | None:
    """Queue the removal of a folder that is gone from ``host``'s disk: a worker removes its rows and reads
    nothing, not before ``hold_seconds`` (a folder back by then is queued again by ``enqueue``, as the same
    folder, and nothing is removed). 0 (nothing to do) for a folder never recorded, or one ``host`` never saw
    (a namesake on a host whose share is not mounted: the hosts that saw the folder decide); None when a worker
    holds it right now (try again later)."""
    with conn.transaction():
        row = conn.execute(
            "SELECT id, (seen_on = '{}' AND coalesce(fingerprint, '0:') LIKE '0:%%') OR %(host)s = ANY(seen_on)"
            " OR (coalesce(finished_at, queued_at) < now() - make_interval(secs => %(settled)s)"
            " AND EXISTS (SELECT 1 FROM root_identity r WHERE r.root = batch.root AND r.host = %(host)s AND r.shared)"
            " AND EXISTS (SELECT 1 FROM root_identity r WHERE r.root = batch.root AND r.host = batch.host"
            " AND r.shared))"
            " FROM batch WHERE root = %(root)s AND path = %(path)s FOR UPDATE SKIP LOCKED",
            {"root": root, "path": path, "host": host, "settled": SHARE_CACHE_SECONDS}).fetchone()
        if row is None:
            exists = conn.execute("SELECT 1 FROM batch WHERE root = %s AND path = %s", (root, path)).fetchone()
            return None if exists else 0
        if not row[1]:
            log.warning("%s:%s is gone on host %s, which never saw the folder of that name the database knows (and "
                        "whose root has not shown it is the share, or the folder is newer than %d s): its rows "
                        "stay; the hosts that saw it decide", root, path, host, SHARE_CACHE_SECONDS)
            return 0
        conn.execute(_QUEUE_REMOVAL, {"queued": BatchStatus.QUEUED, "hold": hold_seconds, "batch": row[0]})
        conn.execute("SELECT pg_notify(%s, %s)", (QUEUE_CHANNEL, str(row[0])))
    return int(row[0])


# A removal already waiting keeps its time; any other batch (a queued import too: its folder is gone now, and
# what comes back under its name is a new folder) becomes a removal, held back for hold seconds.
_QUEUE_REMOVAL = """
UPDATE batch SET
    next_attempt_at = CASE WHEN status = %(queued)s AND removal THEN next_attempt_at
                           ELSE clock_timestamp() + make_interval(secs => %(hold)s) END,
    queued_at = CASE WHEN status = %(queued)s THEN queued_at ELSE now() END,
    status = %(queued)s, removal = true
WHERE id = %(batch)s
"""


def hold(conn: Connection, batch_id: int, seconds: float) -> None:
    """Let no worker take a queued batch (to be imported, not a removal) for ``seconds``, in a transaction of its
    own; never waits for the row (a batch someone holds is left alone)."""
    with conn.transaction():
        conn.execute("UPDATE batch SET next_attempt_at = clock_timestamp() + make_interval(secs => %s) WHERE id IN"
                     " (SELECT id FROM batch WHERE id = %s AND status = %s AND NOT removal FOR UPDATE SKIP LOCKED)",
                     (seconds, batch_id, BatchStatus.QUEUED))


def claim(conn: Connection, roots: list[str]) -> Batch | None:
    """Lock the oldest queued batch of one of ``roots`` (the roots this host has) that is not backing off, for
    this transaction (SKIP LOCKED), or failing that one to be read again (``requeue``); None when there is none
    free. A worker takes the same two steps apart, to record its attempt in between (batch_import.import_next)."""
    candidate = next_queued(conn, roots)
    return claim_queued(conn, candidate.id) if candidate is not None else None


DEATHS_LIMIT = 3  # a batch whose import killed its worker this many times is failed, not tried again at once


def next_queued(conn: Connection, roots: list[str], not_here: list[int] | None = None,
                host: str | None = None) -> Batch | None:
    """Lock the oldest queued batch of one of ``roots`` that is not backing off, or failing that one to be read
    again (``requeue``), without claiming it (SKIP LOCKED): its deaths are read and its attempt recorded before
    the claim (``start_attempt``, then ``claim_queued``). Batches ``not_here`` (their folder is not visible on this
    host) are passed over, unless they are removals now; a removal is taken only by a ``host`` that saw the
    folder (seen_on) or whose root has shown it is the share (roots.share): it checks that the folder is not
    back as it was."""
    with conn.cursor(row_factory=class_row(Batch)) as cursor:
        batch = cursor.execute(
            "SELECT id, root, path, fingerprint, imports, finished_seq, removal, attempts > 0 AS failed_last, seen_on"
            " FROM batch"
            " WHERE status = %(queued)s AND root = ANY(%(roots)s)"
            " AND (next_attempt_at IS NULL OR next_attempt_at <= now()) AND (removal OR NOT id = ANY(%(not_here)s))"
            " AND (NOT removal OR (seen_on = '{}' AND coalesce(fingerprint, '0:') LIKE '0:%%')"
            " OR %(host)s::text IS NULL OR %(host)s::text = ANY(seen_on)"
            " OR EXISTS (SELECT 1 FROM root_identity r WHERE r.root = batch.root AND r.host = %(host)s::text"
            " AND r.shared))"
            " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
            {"queued": BatchStatus.QUEUED, "roots": roots, "not_here": not_here or [], "host": host}).fetchone()
        if batch is None:
            batch = cursor.execute(
                "SELECT b.id, b.root, b.path, b.fingerprint, b.imports, b.finished_seq, b.removal,"
                " b.attempts > 0 AS failed_last, b.seen_on FROM reread r"
                " JOIN batch b ON b.id = r.batch WHERE b.root = ANY(%s) AND NOT b.id = ANY(%s)"
                " AND (b.next_attempt_at IS NULL OR b.next_attempt_at <= now())"
                " ORDER BY b.id LIMIT 1 FOR UPDATE OF b SKIP LOCKED", (roots, not_here or [])).fetchone()
    return batch


def deaths(conn: Connection, batch_id: int) -> list[str]:
    """How each worker that died importing this batch since it last finished or failed ended, oldest first."""
    rows = conn.execute("SELECT died FROM batch_attempt WHERE batch = %s AND died IS NOT NULL ORDER BY started_at",
                        (batch_id,)).fetchall()
    return [str(row[0]) for row in rows]


def start_attempt(conn: Connection, batch_id: int, host: str, pid: int) -> None:
    """Record that worker ``pid`` of ``host`` starts importing the batch (commit it before the claim: a worker
    that dies leaves it); an earlier attempt of this worker that ended without dying (a lost connection) goes."""
    conn.execute("DELETE FROM batch_attempt WHERE host = %s AND pid = %s AND died IS NULL", (host, pid))
    conn.execute("INSERT INTO batch_attempt (batch, host, pid) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                 (batch_id, host, pid))


def end_attempt(conn: Connection, batch_id: int, host: str, pid: int) -> None:
    """Forget an attempt that never claimed its batch (another worker took it first)."""
    with conn.transaction():
        conn.execute("DELETE FROM batch_attempt WHERE batch = %s AND host = %s AND pid = %s AND died IS NULL",
                     (batch_id, host, pid))


def record_death(conn: Connection, host: str, pid: int, how: str) -> None:
    """Mark the attempt of worker ``pid`` of ``host``, which died (``how``: "killed by signal 9 (SIGKILL)")."""
    with conn.transaction():
        conn.execute("UPDATE batch_attempt SET died = %s WHERE host = %s AND pid = %s AND died IS NULL",
                     (how, host, pid))


def claim_queued(conn: Connection, batch_id: int) -> Batch | None:
    """Claim one batch for this transaction if it is still queued (or to be read again) and free (SKIP
    LOCKED); None otherwise."""
    with conn.cursor(row_factory=class_row(Batch)) as cursor:
        batch = cursor.execute(
            "SELECT id, root, path, fingerprint, imports, finished_seq, removal, attempts > 0 AS failed_last, seen_on"
            " FROM batch"
            " WHERE id = %s AND (status = %s OR EXISTS (SELECT 1 FROM reread WHERE reread.batch = batch.id))"
            " AND (next_attempt_at IS NULL OR next_attempt_at <= now()) FOR UPDATE SKIP LOCKED",
            (batch_id, BatchStatus.QUEUED)).fetchone()
    return _mark_importing(conn, batch)


def claim_id(conn: Connection, batch_id: int) -> Batch | None:
    """Lock one given batch for this transaction, waiting for a worker that holds it (an ad-hoc import)."""
    with conn.cursor(row_factory=class_row(Batch)) as cursor:
        batch = cursor.execute("SELECT id, root, path, fingerprint, imports, finished_seq, removal,"
                               " attempts > 0 AS failed_last, seen_on FROM batch WHERE id = %s FOR UPDATE",
                               (batch_id,)).fetchone()
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
        lock_mirror(conn)
    with conn.cursor(row_factory=class_row(Finished)) as cursor:
        finished = cursor.execute(_FINISH, {"batch": batch.id, "fingerprint": fingerprint, "files": files,
                                            "new": new_instances, "removed": removed, "seconds": seconds,
                                            "host": host, "channel": NOTIFY_CHANNEL,
                                            "counted": 0 if unchanged else 1, "empty": BatchStatus.EMPTY,
                                            "done": BatchStatus.DONE}).fetchone()
    assert finished is not None
    conn.execute(_FORGET_ATTEMPTS, (batch.id,))
    return finished


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
        failed_fingerprint = NULL, removal = false,
        seen_on = CASE WHEN %(files)s = 0 THEN '{}'::text[] WHEN %(host)s = ANY(seen_on) THEN seen_on
                       ELSE array_append(seen_on, %(host)s) END,
        finished_at = clock_timestamp(), seconds = %(seconds)s,
        finished_seq = CASE WHEN %(counted)s = 1 THEN nextval('batch_finished_seq') ELSE finished_seq END
    FROM counts WHERE id = %(batch)s
    RETURNING status, batch.instances, batch.rejected,
              CASE WHEN %(counted)s = 1 THEN pg_notify(%(channel)s, id::text) END AS notified
)
SELECT status, instances, rejected FROM done
"""
_FORGET_ATTEMPTS = "DELETE FROM batch_attempt WHERE batch = %s"


BACKOFF_SECONDS = 5.0  # the first wait after a failure; doubled at each failure in a row
BACKOFF_CAP_SECONDS = 3600.0


def lock_mirror(conn: Connection) -> None:
    """Take the mirror lock (FINISH_LOCK) until this transaction ends; taking it again is free. Its legacy key
    too, so that hosts of an older version still finish in commit order (locks.LEGACY_LOCKS)."""
    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", FINISH_LOCK)
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (LEGACY_LOCKS[FINISH_LOCK],))


def requeue(conn: Connection, batch_ids: list[int]) -> list[int]:
    """Have finished batches read again from scratch: their folders hold duplicates that are now the only copy
    of an instance. Called under the mirror lock, it never waits for a batch row: a batch no one holds is queued
    (its fingerprint forgotten); one a worker or another transaction holds right now is recorded in ``reread``
    instead (its importer reads it again under the mirror lock, after this commits; otherwise the row makes
    the batch claimable). A folder imported by hand from outside every root is never queued (no worker has
    its root): returns the ids of those recorded in ``reread``, for the next ``import`` of the folder."""
    if not batch_ids:
        return []
    queued = {row[0] for row in conn.execute(
        "UPDATE batch SET status = %s, queued_at = now(), fingerprint = NULL,"
        " next_attempt_at = CASE WHEN removal THEN next_attempt_at END"
        " WHERE id IN (SELECT id FROM batch WHERE id = ANY(%s) AND root <> %s FOR UPDATE SKIP LOCKED)"
        " RETURNING id", (BatchStatus.QUEUED, batch_ids, OUTSIDE_ROOTS))}
    rest = sorted(set(batch_ids) - queued)
    conn.execute("INSERT INTO reread (batch) SELECT unnest(%s::bigint[]) ON CONFLICT DO NOTHING", (rest,))
    conn.execute("SELECT pg_notify(%s, %s)", (QUEUE_CHANNEL, "requeued"))
    return [row[0] for row in conn.execute("SELECT id FROM batch WHERE id = ANY(%s) AND root = %s",
                                            (rest, OUTSIDE_ROOTS))]


def reread_pending(conn: Connection, batch_id: int) -> bool:
    """Whether the batch's folder is to be read again from scratch (``requeue`` recorded it in ``reread``)."""
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM reread WHERE batch = %s)", (batch_id,)).fetchone()
    return bool(row and row[0])


def take_reread(conn: Connection, batch_id: int) -> None:
    """The import that holds the batch reads its folder again now, under the mirror lock: the request is met."""
    conn.execute("DELETE FROM reread WHERE batch = %s", (batch_id,))


def lock_if_free(conn: Connection, batch_ids: list[int], root: str) -> list[tuple[int, str, str | None]]:
    """Lock those of the batches under ``root`` that no one holds, without waiting (SKIP LOCKED); their (id,
    path, host of their last import)."""
    rows = conn.execute("SELECT id, path, host FROM batch WHERE id = ANY(%s) AND root = %s ORDER BY id"
                        " FOR UPDATE SKIP LOCKED", (batch_ids, root)).fetchall()
    return [(int(r[0]), str(r[1]), r[2]) for r in rows]


def record_failure(conn: Connection, batch: Batch, host: str, error: str, fingerprint: str | None) -> bool:
    """Mark a batch failed with its error (which must hold no value from any file), in a transaction of its
    own, with an exponential back-off before it may be claimed again, and tell listeners. Nothing is recorded
    when another worker finished the batch since it was claimed; returns whether it was recorded."""
    with conn.transaction():
        # The batch's row first, then the mirror lock: an import holding the mirror lock never waits for a batch
        # row, so taking them in this order never closes a circle with a worker that holds this row.
        conn.execute("SELECT 1 FROM batch WHERE id = %s FOR UPDATE", (batch.id,))
        lock_mirror(conn)
        updated = conn.execute(_FAIL, {"failed": BatchStatus.FAILED, "error": error[:2000], "host": host,
                                       "fingerprint": fingerprint, "base": BACKOFF_SECONDS,
                                       "cap": BACKOFF_CAP_SECONDS, "batch": batch.id,
                                       "seq": batch.finished_seq}).rowcount
        if updated:
            conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(batch.id)))
            conn.execute(_FORGET_ATTEMPTS, (batch.id,))
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


def retry_failed(conn: Connection) -> tuple[list[int], list[tuple[int, str]]]:
    """Queue every failed batch again (``retry`` with no id): the ids queued, and the (id, path) of failed folders
    imported by hand from outside every root, which no worker takes (``import`` them again); a failed batch a
    worker holds right now is left to it."""
    with conn.transaction():
        queued = sorted(row[0] for row in conn.execute(
            "UPDATE batch SET status = %s, queued_at = now(), next_attempt_at = NULL WHERE id IN (SELECT id FROM batch"
            " WHERE status = %s AND root <> %s FOR UPDATE SKIP LOCKED) RETURNING id",
            (BatchStatus.QUEUED, BatchStatus.FAILED, OUTSIDE_ROOTS)))
        if queued:
            conn.execute("SELECT pg_notify(%s, %s)", (QUEUE_CHANNEL, "retried"))
        by_hand = [(int(row[0]), str(row[1])) for row in conn.execute(
            "SELECT id, path FROM batch WHERE status = %s AND root = %s ORDER BY id",
            (BatchStatus.FAILED, OUTSIDE_ROOTS))]
    return queued, by_hand


def database_time(conn: Connection) -> datetime:
    """The database's clock now (the clock batch rows are stamped with)."""
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    conn.rollback()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


class Known(NamedTuple):
    """What the catch-up scan reads of a recorded folder."""

    stamp: str | None  # its fingerprint at its last import (for a failed one: when it failed)
    status: BatchStatus
    removal: bool  # queued as a removal
    seen: bool  # the scanning host has seen it
    seen_elsewhere: bool  # another host has seen it, and not the scanning one
    settled: bool = False  # recorded more than SHARE_CACHE_SECONDS before the listing, by a host of the share
    by_another: bool = False  # last imported by another host

    def absence_counts(self, shared: bool) -> bool:
        """Whether its absence from the scanning host's root is evidence: that host saw it, no host is known to
        have (a folder queued by an earlier version), or, where the root has shown it is the share (``shared``),
        it was recorded long enough ago that every host's view of the share shows it."""
        return not self.seen_elsewhere or (self.settled and shared)


def known_folders(conn: Connection, root: str, listed: list[str], listed_at: datetime, host: str
                  ) -> dict[str, Known]:
    """For the catch-up scan of ``host``, the folders recorded under ``root`` that matter to it: those ``listed``
    on disk, and those that may have to be reported gone (not queued, with files at their last import; or queued
    to be imported: the queue is short). Rows of folders whose removal was imported are never read: the cost is
    that of the folders on disk."""
    # The planner cannot tell how few rows the partial index holds and would estimate all of them, which costs
    # a JIT compilation (0.07-0.2 s in a new session) for a query of milliseconds.
    conn.execute("SET LOCAL jit = off")
    rows = conn.execute(_KNOWN_FOLDERS, {"root": root, "listed": listed, "listed_at": listed_at, "host": host,
                                         "settled": SHARE_CACHE_SECONDS}).fetchall()
    conn.rollback()
    # A folder with rows (its last import found files) and no seen_on recorded, as an earlier version's import
    # leaves it, is another host's, never anyone's.
    return {path: Known(stamp, BatchStatus(status), removal, seen, not seen and (bool(hosts) or has_rows), settled,
                        by_another)
            for path, stamp, status, removal, seen, hosts, settled, by_another, has_rows in rows}


# The second half's WHERE is the predicate of the partial index batch_may_be_gone (migration 0007), word for
# word and with literals, so that the planner proves the index applies; the first half uses (root, path).
_KNOWN_FOLDERS = """
SELECT path, CASE WHEN status = 'failed' THEN failed_fingerprint ELSE fingerprint END, status, removal,
       %(host)s = ANY(seen_on), seen_on <> '{}',
       coalesce(coalesce(finished_at, queued_at) < %(listed_at)s - make_interval(secs => %(settled)s), false)
       AND EXISTS (SELECT 1 FROM root_identity r WHERE r.root = batch.root AND r.host = batch.host AND r.shared),
       coalesce(host <> %(host)s, false), coalesce(fingerprint, '0:') NOT LIKE '0:%%'
FROM batch WHERE root = %(root)s AND path = ANY(%(listed)s::text[])
UNION
SELECT path, CASE WHEN status = 'failed' THEN failed_fingerprint ELSE fingerprint END, status, removal,
       %(host)s = ANY(seen_on), seen_on <> '{}',
       coalesce(coalesce(finished_at, queued_at) < %(listed_at)s - make_interval(secs => %(settled)s), false)
       AND EXISTS (SELECT 1 FROM root_identity r WHERE r.root = batch.root AND r.host = batch.host AND r.shared),
       coalesce(host <> %(host)s, false), coalesce(fingerprint, '0:') NOT LIKE '0:%%'
FROM batch WHERE root = %(root)s
  AND status <> 'queued'
  AND coalesce(CASE WHEN status = 'failed' THEN failed_fingerprint ELSE fingerprint END, '0:') NOT LIKE '0:%%'
UNION
SELECT path, fingerprint, status, removal,
       %(host)s = ANY(seen_on), seen_on <> '{}',
       coalesce(coalesce(finished_at, queued_at) < %(listed_at)s - make_interval(secs => %(settled)s), false)
       AND EXISTS (SELECT 1 FROM root_identity r WHERE r.root = batch.root AND r.host = batch.host AND r.shared),
       coalesce(host <> %(host)s, false), coalesce(fingerprint, '0:') NOT LIKE '0:%%'
FROM batch WHERE root = %(root)s AND status = 'queued' AND NOT removal AND queued_at < %(listed_at)s
"""


@dataclass(frozen=True)
class Tally:
    """Batches of one status last handled by one host ('' for none yet), with the sums of their counts."""

    status: BatchStatus
    host: str
    batches: int
    files: int
    instances: int
    rejected: int
    seconds: float
    attempts: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", BatchStatus(self.status))


# batch_tally holds the differences every change to batch added (migration 0007's triggers): their sums are
# the counts over batch at the statement's snapshot, whether or not they were folded since.
_TALLY = """
SELECT status, host, sum(batches)::bigint AS batches, sum(files)::bigint AS files,
       sum(instances)::bigint AS instances, sum(rejected)::bigint AS rejected, sum(seconds)::float8 AS seconds,
       sum(attempts)::bigint AS attempts
FROM batch_tally GROUP BY status, host HAVING sum(batches) <> 0 ORDER BY status, host
"""

_FOLD_TALLY = """
WITH folded AS (DELETE FROM batch_tally RETURNING *)
INSERT INTO batch_tally (status, host, batches, files, instances, rejected, seconds, attempts)
SELECT status, host, sum(batches), sum(files), sum(instances), sum(rejected), sum(seconds), sum(attempts)
FROM folded GROUP BY status, host HAVING sum(batches) <> 0
"""


def tally(conn: Connection) -> list[Tally]:
    """Batch counts and sums by status and host, at a cost that does not grow with the table."""
    with conn.cursor(row_factory=class_row(Tally)) as cursor:
        rows = cursor.execute(_TALLY).fetchall()
    conn.rollback()
    return rows


def fold_tally(conn: Connection) -> None:
    """Fold batch_tally's differences into one row per (status, host), so that reading it stays cheap; skipped
    while another process folds."""
    with conn.transaction():
        row = conn.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", TALLY_LOCK).fetchone()
        if row is not None and row[0]:
            conn.execute(_FOLD_TALLY)


def queue_counts(conn: Connection) -> QueueCounts:
    """Queued, finished (done or empty) and failed batches, and seconds since the last one finished."""
    counts = {status: 0 for status in BatchStatus}
    for row in tally(conn):
        counts[row.status] += row.batches
    last = conn.execute("SELECT extract(epoch FROM now() - max(finished_at))::float8 FROM batch").fetchone()
    conn.rollback()
    return QueueCounts(queued=counts[BatchStatus.QUEUED],
                       finished=counts[BatchStatus.DONE] + counts[BatchStatus.EMPTY],
                       failed=counts[BatchStatus.FAILED], seconds_since_last=last[0] if last else None)


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

