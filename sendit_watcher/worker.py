"""A worker process of the service: it claims queued batches and imports them (batch_import.py), one at a time,
until it is told to stop or its service is gone. The service's Supervisor (supervisor.py) starts it.

A worker wakes on ``NOTIFY sendit_queue`` (sent when a batch is queued) or every second, so it never misses work.
On SIGTERM it finishes the folder in hand and exits. After the drain period the service sends SIGUSR1: the worker
abandons the folder in hand (rolled back whole), closes its parse pool and exits, so that multiprocessing unlinks
the semaphores it holds (a worker SIGKILLed leaves them to the resource tracker, which warns of "leaked
semaphore objects" at the service's exit); one still there a few seconds later is killed. It touches its
Heartbeat at every turn of its loop and at every file it imports, so that its supervisor can tell a hung worker
from a busy one.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from multiprocessing.context import BaseContext
from types import FrameType

import psycopg

from sendit_watcher import listening
from sendit_watcher.batch_import import Abandoned, NotHere, abandon, import_next
from sendit_watcher.batches import QUEUE_CHANNEL
from sendit_watcher.config import Config
from sendit_watcher.db import Connection, connect
from sendit_watcher.errors import DatabaseUnavailable, describe
from sendit_watcher.logs import setup as setup_logging
from sendit_watcher.outage import Outage
from sendit_watcher.parsers import AdaptiveParser
from sendit_watcher.roots import RootGuard

__all__ = ["Heartbeat", "worker_main", "ABANDON_SIGNAL"]

log = logging.getLogger(__name__)

_WAKE_SECONDS = 1.0
ABANDON_SIGNAL = signal.SIGUSR1  # the drain ran out: abandon the folder in hand and exit now


class Heartbeat:
    """When a worker last showed it is alive: a number in memory shared with its supervisor (CLOCK_MONOTONIC,
    one clock for every process of the host). Made by the supervisor, handed to the worker when it starts."""

    def __init__(self, context: BaseContext) -> None:
        self._at = context.Value("d", time.monotonic(), lock=False)  # one aligned double: no lock needed

    def touch(self, *_: object) -> None:
        """Now (any arguments ignored: it is also an import's progress callback)."""
        self._at.value = time.monotonic()

    def silence(self) -> float:
        """Seconds since the last touch."""
        return time.monotonic() - float(self._at.value)


class _Stop:
    requested = False

    @classmethod
    def handle(cls, signum: int, frame: FrameType | None) -> None:
        cls.requested = True


def _abandon(signum: int, frame: FrameType | None) -> None:
    abandon()


def worker_main(config: Config, index: int, parent: int, heartbeat: Heartbeat) -> None:
    """Entry point of one worker process."""
    signal.signal(signal.SIGTERM, _Stop.handle)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the service, which stops us in order
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(ABANDON_SIGNAL, _abandon)
    os.setpgid(0, 0)  # its parse pool joins its group: a worker killed after the drain takes its pool with it
    heartbeat.touch()
    setup_logging(config.watcher.log_level)
    parser = AdaptiveParser(config.importing.parse_process_count)
    outage = Outage(log, f"worker {index}")
    try:
        while not _Stop.requested and os.getppid() == parent:
            try:
                application = f"sendit-watcher worker {index} on {config.watcher.host_name}"
                with connect(config.database, application=application) as conn:
                    outage.back()
                    _serve_queue(conn, config, parser, parent, heartbeat)
            except (DatabaseUnavailable, psycopg.Error) as exc:
                outage.failed(describe(exc), config.database.retry_interval)
                _sleep(config.database.retry_interval, parent, heartbeat)
    except Abandoned:
        log.debug("worker %d: the drain ran out; the folder in hand is rolled back", index)
    finally:
        signal.signal(ABANDON_SIGNAL, signal.SIG_IGN)  # once is enough: closing the pool is not interrupted
        parser.close()


def _serve_queue(conn: Connection, config: Config, parser: AdaptiveParser, parent: int,
                 heartbeat: Heartbeat) -> None:
    listening.listen(conn, QUEUE_CHANNEL)
    guard = RootGuard(config)  # batches of a root that is not itself on this host are never claimed here
    not_here = NotHere()  # nor, for a while, those whose folder this host cannot see
    while not _Stop.requested and os.getppid() == parent:
        heartbeat.touch()
        if import_next(conn, config, parser, guard, not_here, progress=heartbeat.touch) is None:
            listening.wait(conn, _WAKE_SECONDS)


def _sleep(seconds: float, parent: int, heartbeat: Heartbeat) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not _Stop.requested and os.getppid() == parent:
        heartbeat.touch()
        time.sleep(0.1)
