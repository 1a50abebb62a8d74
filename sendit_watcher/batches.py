"""The batch table as a durable queue: enqueue a folder, claim one with SKIP LOCKED, record how it ended."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sendit_watcher.config import Config
from sendit_watcher.db import Connection

__all__ = ["Batch", "OUTSIDE_ROOTS", "locate", "resolve", "ensure", "enqueue", "claim", "claim_id", "record_failure",
           "NOTIFY_CHANNEL", "QUEUE_CHANNEL", "FINISH_LOCK", "retry"]

OUTSIDE_ROOTS = "/"  # root name of folders imported from outside every watch root; paths relative to /
NOTIFY_CHANNEL = "sendit_batch"  # a batch finished (done, empty or failed): payload is its id
QUEUE_CHANNEL = "sendit_queue"  # a batch was queued: wakes idle workers
# Advisory lock held from a batch's finishing step to its commit, so finished_seq follows commit order.
# Negative, like the migration lock, so it never meets a batch id.
FINISH_LOCK = -0x5E4D18


@dataclass(frozen=True)
class Batch:
    """A claimed batch row, with the fingerprint of its last successful import."""

    id: int
    root: str
    path: str
    fingerprint: str | None
    imports: int


def locate(config: Config, folder: Path) -> tuple[str, str]:
    """The (root name, path relative to it) under which ``folder`` is recorded."""
    folder = Path(os.path.abspath(folder))
    for watch in config.watches:
        if watch.path in folder.parents:
            return watch.name, folder.relative_to(watch.path).as_posix()
    return OUTSIDE_ROOTS, folder.relative_to("/").as_posix()


def resolve(config: Config, root: str, path: str) -> Path:
    """The folder on this host for a batch's (root, path); KeyError when the root is not configured here."""
    if root == OUTSIDE_ROOTS:
        return Path("/") / path
    watch = config.watch_named(root)
    if watch is None:
        raise KeyError(f"watch root {root!r} is not configured on this host")
    return watch.path / path


def ensure(conn: Connection, root: str, path: str) -> int:
    """The id of a folder's batch row, creating it (queued) if it was never seen; never waits for a lock."""
    with conn.transaction():
        conn.execute("INSERT INTO batch (root, path) VALUES (%s, %s) ON CONFLICT (root, path) DO NOTHING",
                     (root, path))
        row = conn.execute("SELECT id FROM batch WHERE root = %s AND path = %s", (root, path)).fetchone()
    assert row is not None
    return int(str(row[0]))


def enqueue(conn: Connection, root: str, path: str) -> int | None:
    """Queue a folder (one row per folder, ever); None when a worker holds it right now (try again later)."""
    with conn.transaction():
        conn.execute("INSERT INTO batch (root, path) VALUES (%s, %s) ON CONFLICT (root, path) DO NOTHING",
                     (root, path))
        row = conn.execute(
            "SELECT id, status FROM batch WHERE root = %s AND path = %s FOR UPDATE SKIP LOCKED", (root, path)
        ).fetchone()
        if row is None:
            return None
        batch_id, status = row
        if status != "queued":
            conn.execute("UPDATE batch SET status = 'queued', queued_at = now() WHERE id = %s", (batch_id,))
        conn.execute("SELECT pg_notify(%s, %s)", (QUEUE_CHANNEL, str(batch_id)))  # wakes idle workers
    return int(str(batch_id))


def claim(conn: Connection, host: str) -> Batch | None:
    """Lock the oldest queued batch for this transaction (SKIP LOCKED); None when there is none free."""
    row = conn.execute(
        "SELECT id, root, path, fingerprint, imports FROM batch"
        " WHERE status = 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
    ).fetchone()
    return _mark_importing(conn, row, host)


def claim_id(conn: Connection, batch_id: int, host: str) -> Batch | None:
    """Lock one given batch for this transaction, waiting for a worker that holds it."""
    row = conn.execute("SELECT id, root, path, fingerprint, imports FROM batch WHERE id = %s FOR UPDATE",
                       (batch_id,)).fetchone()
    return _mark_importing(conn, row, host)


def _mark_importing(conn: Connection, row: tuple[object, ...] | None, host: str) -> Batch | None:
    if row is None:
        return None
    batch = Batch(int(str(row[0])), str(row[1]), str(row[2]), None if row[3] is None else str(row[3]),
                  int(str(row[4])))
    # The advisory lock lets `status` see which batches are being imported without a committed 'importing'.
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (batch.id,))
    conn.execute("UPDATE batch SET status = 'importing', started_at = clock_timestamp(), host = %s WHERE id = %s",
                 (host, batch.id))
    return batch


def record_failure(conn: Connection, batch_id: int, host: str, error: str) -> None:
    """Mark a batch failed with its error, in a transaction of its own, and tell listeners."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (FINISH_LOCK,))
        conn.execute(
            "UPDATE batch SET status = 'failed', last_error = %s, attempts = attempts + 1, host = %s,"
            " finished_at = clock_timestamp(), finished_seq = nextval('batch_finished_seq') WHERE id = %s",
            (error[:2000], host, batch_id),
        )
        conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(batch_id)))


def retry(conn: Connection, batch_id: int) -> str | None:
    """Queue a failed batch again; returns its status when it is not failed (nothing is changed then)."""
    with conn.transaction():
        row = conn.execute("SELECT status FROM batch WHERE id = %s FOR UPDATE", (batch_id,)).fetchone()
        if row is None:
            return "missing"
        if row[0] != "failed":
            return str(row[0])
        conn.execute("UPDATE batch SET status = 'queued', queued_at = now() WHERE id = %s", (batch_id,))
        conn.execute("SELECT pg_notify(%s, %s)", (QUEUE_CHANNEL, str(batch_id)))
    return None
