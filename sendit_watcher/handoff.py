"""The hand-off to downstream work: finished batches in commit order, live (LISTEN) and replayed (--since).

Each finished batch carries ``finished_seq``, assigned in commit order; a consumer remembers the last one it
handled and asks for what came after, so it misses nothing across its own restarts.
"""

from __future__ import annotations

import json
import select
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from psycopg import sql

from sendit_watcher.batches import NOTIFY_CHANNEL
from sendit_watcher.db import Connection

__all__ = ["finished_after", "latest_seq", "follow", "as_json"]

_COLUMNS = ("seq", "id", "root", "folder", "status", "files", "instances", "new_instances", "rejected",
            "seconds", "files_per_second", "host", "finished_at", "last_error")

_FINISHED_AFTER = """
SELECT finished_seq, id, root, path, status, files, instances, new_instances, rejected,
       seconds, files_per_second, host, finished_at, last_error
FROM batch WHERE finished_seq > %s ORDER BY finished_seq
"""


def finished_after(conn: Connection, seq: int) -> list[dict[str, Any]]:
    """Batches finished after ``seq``, oldest first."""
    rows = conn.execute(_FINISHED_AFTER, (seq,)).fetchall()
    conn.rollback()
    return [dict(zip(_COLUMNS, row, strict=True)) for row in rows]


def latest_seq(conn: Connection) -> int:
    row = conn.execute("SELECT coalesce(max(finished_seq), 0) FROM batch").fetchone()
    conn.rollback()
    return int(str(row[0])) if row else 0


def follow(conn: Connection, since: int, wake_seconds: float = 5.0) -> Iterator[dict[str, Any]]:
    """Every batch finished after ``since``, then each new one as it commits, for as long as it is iterated."""
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
    conn.commit()
    last = since
    while True:
        for record in finished_after(conn, last):
            last = int(record["seq"])
            yield record
        select.select([conn.fileno()], [], [], wake_seconds)  # a NOTIFY, or a periodic look anyway
        conn.execute("SELECT 1")
        conn.commit()


def as_json(record: dict[str, Any]) -> str:
    return json.dumps(record, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v),
                      sort_keys=False)
