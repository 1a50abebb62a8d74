"""The supervisor of the service's worker processes (worker.py): it starts them, replaces them on reload,
replaces one that died, and stops them with a bounded drain."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from multiprocessing.process import BaseProcess

from sendit_watcher.config import Config
from sendit_watcher.worker import worker_main

__all__ = ["Supervisor", "ended"]

log = logging.getLogger(__name__)


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
        for index in range(self.config.importing.worker_count):
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
