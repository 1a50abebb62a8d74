"""A worker process of the service: it claims queued batches and imports them (batch_import.py), one at a time,
until it is told to stop or its service is gone. The service's Supervisor (supervisor.py) starts it.

A worker wakes on ``NOTIFY sendit_queue`` (sent when a batch is queued) or every second, so it never misses work.
On SIGTERM it finishes the folder in hand and exits; the service kills it after the drain period, which rolls
that folder back whole.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time
from types import FrameType

import psycopg
from psycopg import sql

from sendit_watcher.batch_import import NotHere, import_next
from sendit_watcher.batches import QUEUE_CHANNEL
from sendit_watcher.config import Config
from sendit_watcher.db import Connection, connect
from sendit_watcher.errors import DatabaseUnavailable, describe
from sendit_watcher.logs import setup as setup_logging
from sendit_watcher.outage import Outage
from sendit_watcher.parsers import AdaptiveParser
from sendit_watcher.roots import RootGuard

__all__ = ["worker_main"]

log = logging.getLogger(__name__)

_WAKE_SECONDS = 1.0


class _Stop:
    requested = False

    @classmethod
    def handle(cls, signum: int, frame: FrameType | None) -> None:
        cls.requested = True


def worker_main(config: Config, index: int, parent: int) -> None:
    """Entry point of one worker process."""
    signal.signal(signal.SIGTERM, _Stop.handle)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the service, which stops us in order
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    os.setpgid(0, 0)  # its parse pool joins its group: a worker killed after the drain takes its pool with it
    setup_logging(config.watcher.log_level)
    parser = AdaptiveParser(config.importing.parse_process_count)
    outage = Outage(log, f"worker {index}")
    try:
        while not _Stop.requested and os.getppid() == parent:
            try:
                application = f"sendit-watcher worker {index} on {config.watcher.host_name}"
                with connect(config.database, application=application) as conn:
                    outage.back()
                    _serve_queue(conn, config, parser, parent)
            except (DatabaseUnavailable, psycopg.Error) as exc:
                outage.failed(describe(exc), config.database.retry_interval)
                _sleep(config.database.retry_interval, parent)
    finally:
        parser.close()


def _serve_queue(conn: Connection, config: Config, parser: AdaptiveParser, parent: int) -> None:
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(QUEUE_CHANNEL)))
    conn.commit()
    guard = RootGuard(config)  # batches of a root that is not itself on this host are never claimed here
    not_here = NotHere()  # nor, for a while, those whose folder this host cannot see
    while not _Stop.requested and os.getppid() == parent:
        if import_next(conn, config, parser, guard, not_here) is None:
            _wait_for_work(conn)


def _wait_for_work(conn: Connection) -> None:
    """Sleep until a NOTIFY arrives on the connection (or a second passes), then drain it."""
    select.select([conn.fileno()], [], [], _WAKE_SECONDS)
    conn.execute("SELECT 1")  # receives pending notifications
    conn.commit()


def _sleep(seconds: float, parent: int) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not _Stop.requested and os.getppid() == parent:
        time.sleep(0.1)
