"""The worker processes and their supervisor: each worker claims queued batches and imports them; the service's
Supervisor starts, replaces on reload, restarts and stops them.

A worker wakes on ``NOTIFY sendit_queue`` (sent when a batch is queued) or every second, so it never misses work.
On SIGTERM it finishes the folder in hand and exits; the service kills it after the drain period, which rolls
that folder back whole.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import select
import signal
import time
from multiprocessing.process import BaseProcess
from types import FrameType

import psycopg
from psycopg import sql

from sendit_watcher.batches import QUEUE_CHANNEL
from sendit_watcher.config import Config
from sendit_watcher.db import Connection, connect
from sendit_watcher.errors import DatabaseUnavailable, describe
from sendit_watcher.logs import setup as setup_logging
from sendit_watcher.outage import Outage
from sendit_watcher.parsers import AdaptiveParser
from sendit_watcher.roots import RootGuard
from sendit_watcher.worker import NotHere, import_next

__all__ = ["Supervisor", "worker_main"]

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
    parser = AdaptiveParser(config.importer.parse_process_count)
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


def ended(exitcode: int | None) -> str:
    """How a worker process ended, from its exit code ("was killed by signal 9 (SIGKILL: out of memory?)")."""
    if exitcode is None or exitcode >= 0:
        return f"exited with status {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = "unknown signal"
    oom = ": out of memory?" if -exitcode == signal.SIGKILL else ""
    return f"was killed by signal {-exitcode} ({name}{oom})"


class Supervisor:
    """Starts, supervises, replaces and stops the worker processes."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.processes: list[BaseProcess] = []
        self.retiring: list[BaseProcess] = []  # replaced on reload, finishing their folder
        self.context = multiprocessing.get_context("spawn")

    def start(self) -> None:
        for index in range(self.config.importer.worker_count):
            self.processes.append(self._spawn(index))

    def _spawn(self, index: int) -> BaseProcess:
        process = self.context.Process(target=worker_main, args=(self.config, index, os.getpid()),
                                       name=f"sendit-watcher-worker-{index}", daemon=False)
        process.start()
        return process

    def supervise(self) -> list[tuple[int, str]]:
        """Replace any worker that died (its claim was released with its connection); reap retired ones. Returns
        (pid, how it ended) of each worker that died, for batches.record_death."""
        self.retiring = [p for p in self.retiring if p.is_alive()]
        died: list[tuple[int, str]] = []
        for index, process in enumerate(self.processes):
            if not process.is_alive():
                how = ended(process.exitcode)
                log.error("worker %d (pid %s) %s; starting a new one", index, process.pid, how)
                if process.pid is not None and process.exitcode:
                    died.append((process.pid, how))
                    _kill_group(process)  # its parse pool, orphaned
                self.processes[index] = self._spawn(index)
        return died

    def replace(self, config: Config) -> None:
        """Start workers for a new configuration; the old ones finish the folder in hand and exit."""
        for process in self.processes:
            process.terminate()
        self.retiring += self.processes
        self.config, self.processes = config, []
        self.start()

    def stop(self, drain_seconds: float) -> int:
        """SIGTERM every worker, wait up to the drain period, then kill; returns how many had to be killed."""
        everyone = self.processes + self.retiring
        for process in everyone:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + drain_seconds
        for process in everyone:
            process.join(max(0.0, deadline - time.monotonic()))
        killed = [p for p in everyone if p.is_alive()]
        for process in killed:
            log.warning("worker pid %s did not finish within %.0f s; killed (its folder is rolled back)",
                        process.pid, drain_seconds)
            _kill_group(process)
            process.join()
        self.processes, self.retiring = [], []
        return len(killed)


def _kill_group(process: BaseProcess) -> None:
    """SIGKILL a worker and the processes it started (its parse pool and their forkserver, in the worker's
    process group): none is left parsing for a worker that is gone, nor writing tracebacks to its closed pipes."""
    if process.pid is None:  # never started
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # no such group (yet: killed before it made its own)
        if process.is_alive():
            process.kill()
