"""Folders the processors noticed, on their way to the queue: settling ones, finished ones, retries.

Only the main loop touches an Intake; processors report to it and the service drains it into the database.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

__all__ = ["Folder", "Intake", "newest_change"]

Folder = tuple[str, str]  # (watch name, folder name directly under the root)


def newest_change(path: str) -> float | None:
    """The newest ctime (seconds) of anything under ``path``, by stat alone; None when it is gone."""
    try:
        newest = os.stat(path, follow_symlinks=False).st_ctime
    except OSError:
        return None
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                newest = max(newest, os.stat(os.path.join(top, name), follow_symlinks=False).st_ctime)
            except OSError:
                continue
    return newest


@dataclass
class Intake:
    """The pending set: settling folders with their due times, finished folders waiting to be queued."""

    settle_seconds: float
    clock: Callable[[], float] = time.monotonic
    settling: dict[Folder, float] = field(default_factory=dict)
    ready: dict[Folder, float] = field(default_factory=dict)  # folder -> time of the next enqueue attempt
    failures: dict[Folder, int] = field(default_factory=dict)
    rescan_requested: bool = True  # a catch-up scan is due at start

    def reconfigure(self, settle_seconds: float) -> None:
        """A new settle period, for folders that settle from now on."""
        self.settle_seconds = settle_seconds

    def finished(self, folder: Folder) -> None:
        """The folder is complete now (renamed to its final name)."""
        self.settling.pop(folder, None)
        self.ready.setdefault(folder, 0.0)

    def activity(self, folder: Folder) -> None:
        """Something changed in a folder that is still being written: restart its quiet period."""
        if folder not in self.ready:
            self.settling[folder] = self.clock() + self.settle_seconds

    def forget(self, folder: Folder) -> None:
        """The folder was moved away or deleted before it was queued."""
        self.settling.pop(folder, None)
        self.ready.pop(folder, None)
        self.failures.pop(folder, None)

    def overflow(self) -> None:
        """Events were lost: the next loop turn reconciles every root with the database."""
        self.rescan_requested = True

    def settled(self, path_of: Callable[[Folder], str]) -> Iterator[Folder]:
        """Settling folders whose quiet period is over and whose files confirm it (newest ctime)."""
        now = self.clock()
        for folder, due in list(self.settling.items()):
            if due > now:
                continue
            newest = newest_change(path_of(folder))
            if newest is None:
                self.forget(folder)
                continue
            quiet_for = time.time() - newest
            if quiet_for < self.settle_seconds:
                self.settling[folder] = now + self.settle_seconds - quiet_for
                continue
            del self.settling[folder]
            yield folder

    def due_for_enqueue(self) -> list[Folder]:
        now = self.clock()
        return [folder for folder, when in self.ready.items() if when <= now]

    def enqueued(self, folder: Folder) -> None:
        self.ready.pop(folder, None)
        self.failures.pop(folder, None)

    def retry_later(self, folder: Folder, cap: float = 30.0) -> None:
        """Back off (0.5 s doubling, capped) before the next attempt to queue this folder."""
        failures = self.failures.get(folder, 0) + 1
        self.failures[folder] = failures
        self.ready[folder] = self.clock() + min(cap, 0.5 * 2 ** (failures - 1))

    def next_deadline(self) -> float | None:
        """When the loop next has timed work to do here, if ever."""
        times = list(self.settling.values()) + list(self.ready.values())
        return min(times) if times else None

    @property
    def pending(self) -> int:
        return len(self.settling) + len(self.ready)
