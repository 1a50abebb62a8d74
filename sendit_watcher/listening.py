"""LISTEN on a channel, and wait for its NOTIFY: the one way a worker (for queued batches) and ``listen`` (for
finished ones, handoff.py) sleep until there is news. The wait always ends after a period as well, so that a
NOTIFY missed (sent while the connection was being made) costs one period, never a batch."""

from __future__ import annotations

import select

from psycopg import sql

from sendit_watcher.db import Connection

__all__ = ["listen", "wait"]


def listen(conn: Connection, channel: str) -> None:
    """LISTEN on ``channel`` from now on (committed: a LISTEN takes effect at commit)."""
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    conn.commit()


def wait(conn: Connection, seconds: float) -> None:
    """Sleep until a NOTIFY arrives on the connection, or ``seconds`` pass; then take in what arrived (the
    notifications themselves are not needed: the caller looks at the database again either way)."""
    select.select([conn.fileno()], [], [], seconds)
    conn.execute("SELECT 1")  # receives pending notifications
    conn.commit()
