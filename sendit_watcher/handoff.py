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

from sendit_watcher.batches import NOTIFY_CHANNEL, finished_after, latest_seq
from sendit_watcher.db import Connection

__all__ = ["latest_seq", "follow", "as_json"]


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
