"""The supervisor of the service's worker processes (worker.py): it starts them, replaces one that died (with
back-off) or hung (silent heartbeat), replaces them all on reload, and stops them with a bounded drain."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess

from sendit_watcher.config import Config
from sendit_watcher.worker import ABANDON_SIGNAL, Heartbeat, worker_main

__all__ = ["Supervisor", "ended", "default_heartbeat_limit", "HEARTBEAT_LIMIT_ENV"]

log = logging.getLogger(__name__)

HEARTBEAT_LIMIT_ENV = "SENDIT_TEST_HEARTBEAT_LIMIT"


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


@dataclass
class _Slot:
    """One worker's place: its process (None while a new one waits out its back-off), its heartbeat, and how
    often in a row it died soon after its start."""

    index: int
    process: BaseProcess | None = None
    heartbeat: Heartbeat | None = None
    started: float = 0.0
    quick_deaths: int = 0
    respawn_at: float = 0.0


class Supervisor:
    """Starts, supervises, replaces and stops the worker processes.

    A worker that dies is replaced at once if it had lived LIVED_LONG seconds; one that dies sooner is replaced
    after a back-off (FIRST_BACKOFF seconds, doubling with each such death in a row, up to MOST_BACKOFF), so a
    worker that cannot start never spins. A worker whose heartbeat (worker.Heartbeat: every turn of its loop,
    every file it imports) has been silent for ``heartbeat_limit`` seconds is hung: it is killed, with its
    parse pool, and replaced; its import is rolled back and counted as a death of its batch."""

    FIRST_BACKOFF = 1.0
    MOST_BACKOFF = 60.0
    LIVED_LONG = 60.0
    ABANDON_SECONDS = 5.0  # after the drain: how long a worker may take to roll back, close its pool and exit

    def __init__(self, config: Config, heartbeat_limit: float | None = None) -> None:
        self.config = config
        self.slots: list[_Slot] = []
        self.retiring: list[BaseProcess] = []  # replaced on reload, finishing their folder
        self.context = multiprocessing.get_context("spawn")
        self.heartbeat_limit = heartbeat_limit if heartbeat_limit is not None else default_heartbeat_limit()

    @property
    def processes(self) -> list[BaseProcess]:
        """The current workers' processes (not those waiting out a back-off, nor the retiring ones)."""
        return [slot.process for slot in self.slots if slot.process is not None]

    def start(self) -> None:
        self.slots = [_Slot(index) for index in range(self.config.importing.worker_count)]
        for slot in self.slots:
            self._spawn(slot)

    def _spawn(self, slot: _Slot) -> None:
        slot.heartbeat = Heartbeat(self.context)
        slot.process = self.context.Process(target=worker_main,
                                            args=(self.config, slot.index, os.getpid(), slot.heartbeat),
                                            name=f"sendit-watcher-worker-{slot.index}", daemon=False)
        slot.process.start()
        slot.started = time.monotonic()

    def supervise(self) -> list[tuple[int, str]]:
        """Replace any worker that died (its claim was released with its connection) or hung, each after its
        back-off; reap retired ones. Returns (pid, how it ended) of each worker that died, for
        batches.record_death."""
        self.retiring = [p for p in self.retiring if p.is_alive()]
        died: list[tuple[int, str]] = []
        for slot in self.slots:
            if slot.process is None:
                if time.monotonic() >= slot.respawn_at:
                    self._spawn(slot)
            elif not slot.process.is_alive():
                died += self._ended(slot, ended(slot.process.exitcode))
            elif slot.heartbeat is not None and slot.heartbeat.silence() > self.heartbeat_limit:
                silent = slot.heartbeat.silence()
                log.error("worker %d (pid %s) has given no sign of life for %.0f s (hung? the limit is %.0f s); "
                          "killing it and its parse processes", slot.index, slot.process.pid, silent,
                          self.heartbeat_limit)
                _kill_group(slot.process)
                slot.process.join()
                died += self._ended(slot, f"was killed after {silent:.0f} s without a heartbeat (hung)")
        return died

    def _ended(self, slot: _Slot, how: str) -> list[tuple[int, str]]:
        """Log a worker's end and schedule its replacement; [(pid, how)] when it died (not a clean exit)."""
        process = slot.process
        assert process is not None
        lived = time.monotonic() - slot.started
        slot.quick_deaths = slot.quick_deaths + 1 if lived < self.LIVED_LONG else 0
        wait = 0.0 if not slot.quick_deaths else min(self.MOST_BACKOFF,
                                                     self.FIRST_BACKOFF * 2 ** (slot.quick_deaths - 1))
        later = (f" in {wait:.0f} s ({slot.quick_deaths} in a row within {self.LIVED_LONG:.0f} s of their start)"
                 if wait else "")
        log.error("worker %d (pid %s) %s (it had run %.1f s); starting a new one%s", slot.index, process.pid, how,
                  lived, later)
        slot.process, slot.respawn_at = None, time.monotonic() + wait
        if process.pid is None or not process.exitcode:
            return []
        _kill_group(process)  # its parse pool, orphaned
        return [(process.pid, how)]

    def replace(self, config: Config) -> None:
        """Start workers for a new configuration; the old ones finish the folder in hand and exit."""
        for process in self.processes:
            process.terminate()
        self.retiring += self.processes
        self.config, self.slots = config, []
        self.start()

    def stop(self, drain_seconds: float) -> int:
        """SIGTERM every worker and wait up to the drain period; then each one left abandons its folder (SIGUSR1:
        rolled back, its parse pool closed, its semaphores released) and one still there after ABANDON_SECONDS
        is killed. Returns how many did not finish within the drain."""
        everyone = self.processes + self.retiring
        for process in everyone:
            if process.is_alive():
                process.terminate()
        _join_all(everyone, drain_seconds)
        late = [p for p in everyone if p.is_alive()]
        for process in late:
            log.warning("worker pid %s did not finish within %.0f s; stopped (its folder is rolled back)",
                        process.pid, drain_seconds)
            _signal(process, ABANDON_SIGNAL)
        _join_all(late, self.ABANDON_SECONDS)
        for process in [p for p in late if p.is_alive()]:
            log.warning("worker pid %s did not stop within %.0f s of being told to abandon its folder; killed",
                        process.pid, self.ABANDON_SECONDS)
            _kill_group(process)
            process.join()
        self.slots, self.retiring = [], []
        return len(late)


def default_heartbeat_limit() -> float:
    """How long a worker may go without a heartbeat: 10 times the service's watchdog period (WatchdogSec=60 in
    the unit: 10 min) but at least a minute, 10 min without a watchdog; far longer than any step of an import
    between two files. The environment variable HEARTBEAT_LIMIT_ENV (tests only) sets it in seconds."""
    forced = os.environ.get(HEARTBEAT_LIMIT_ENV)
    if forced:
        return float(forced)
    try:
        return max(60.0, 10 * int(os.environ.get("WATCHDOG_USEC", "")) / 1_000_000)
    except ValueError:
        return 600.0


def _join_all(processes: list[BaseProcess], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))


def _signal(process: BaseProcess, signum: int) -> None:
    if process.pid is not None:
        try:
            os.kill(process.pid, signum)
        except ProcessLookupError:  # ended meanwhile
            pass


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
