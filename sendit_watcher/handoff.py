"""The hand-off to downstream work: finished batches in commit order, live (LISTEN) and replayed (--since).

Each finished batch carries ``finished_seq``, assigned in commit order; a consumer remembers the last one it
handled and asks for what came after, so it misses nothing across its own restarts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Iterator
from datetime import datetime
from typing import Any

import psycopg

from sendit_watcher import listening
from sendit_watcher.batches import NOTIFY_CHANNEL, finished_after, latest_seq
from sendit_watcher.db import Connection
from sendit_watcher.errors import DatabaseUnavailable, connection_trouble, describe

__all__ = ["latest_seq", "follow", "as_json"]

_FIRST_RETRY_SECONDS = 0.5  # then doubling, up to the caller's retry_seconds

Records = Generator[dict[str, Any], None, None]


def follow(open_connection: Callable[[], Connection], since: int | None, *, retry_seconds: float = 5.0,
           wake_seconds: float = 5.0, say: Callable[[str], None] = lambda message: None) -> Records:
    """Every batch finished after ``since`` (None: after the latest one now), then each new one as it commits,
    for as long as it is iterated. When the connection fails (a server restart, a failover, a terminated
    backend), it reconnects with back-off, LISTENs again and goes on after the last record it yielded: no gap,
    no duplicate. ``say`` hears one line when the connection is lost (and again only when the reason changes)
    and one when it is back. The first connection's failure, and any error that is not connection trouble,
    are the caller's."""
    first = open_connection()
    last = latest_seq(first) if since is None else since
    conn: Connection | None = first
    reason: str | None = None
    attempts = 0
    while True:
        try:
            if conn is None:
                conn = open_connection()
                say(f"reconnected; replaying every batch finished after seq {last}")
                reason, attempts = None, 0
            with conn:
                for record in _live(conn, last, wake_seconds):
                    last = int(record["seq"])
                    yield record
        except (DatabaseUnavailable, psycopg.Error) as exc:
            if isinstance(exc, psycopg.Error) and not connection_trouble(exc):
                raise
            if conn is not None:
                conn.close()
            conn = None
            if describe(exc) != reason:
                reason = describe(exc)
                say(f"connection lost ({reason}); reconnecting (every {retry_seconds:g} s at most), then going on"
                    f" after seq {last}")
            time.sleep(min(retry_seconds, _FIRST_RETRY_SECONDS * 2 ** min(attempts, 16)))
            attempts += 1


def _live(conn: Connection, last: int, wake_seconds: float) -> Iterator[dict[str, Any]]:
    """LISTEN, then what finished after ``last`` and each batch as it commits, on one connection."""
    listening.listen(conn, NOTIFY_CHANNEL)
    while True:
        for record in finished_after(conn, last):
            last = int(record["seq"])
            yield record
        listening.wait(conn, wake_seconds)  # a NOTIFY, or a periodic look anyway


def as_json(record: dict[str, Any]) -> str:
    return json.dumps(record, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v),
                      sort_keys=False)
