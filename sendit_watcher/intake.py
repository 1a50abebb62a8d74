"""Folders the processors noticed, on their way to the queue: settling ones, finished ones, retries.

Only the main loop touches an Intake; processors report to it and the service drains it into the database.
It never touches the disk: the service checks a settling folder's newest change off the main loop and reports
the answer back (``due_to_check`` / ``checked``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sendit_watcher.config import WatcherConfig

__all__ = ["Folder", "Intake"]

Folder = tuple[str, str]  # (watch name, folder name directly under the root)


@dataclass
class Intake:
    """The pending set: settling folders with their due times, finished folders waiting to be queued."""

    settle_seconds: float
    clock: Callable[[], float] = time.monotonic
    linger_seconds: float = 0.0
    linger_folders: int = WatcherConfig.linger_folders  # the [watcher] option's default
    settling: dict[Folder, float] = field(default_factory=dict)
    ready: dict[Folder, float] = field(default_factory=dict)  # folder -> time of the next enqueue attempt
    failures: dict[Folder, int] = field(default_factory=dict)
    checking: dict[Folder, float] = field(default_factory=dict)  # folder -> its due time when the check began
    lingering: dict[Folder, float] = field(default_factory=dict)  # settled and imported, still watched: until
    gone: dict[Folder, float] = field(default_factory=dict)  # moved away or deleted: its rows go too (next try)
    renamed: set[Folder] = field(default_factory=set)  # gone ones that are in the root under another final name
    # Ready folders that only a catch-up scan found (no event since), with the database time it read their batch
    # rows: a batch that failed after that, unseen by the scan, is left failed (see batches.enqueue).
    scanned: dict[Folder, datetime] = field(default_factory=dict)
    rescan_requested: bool = True  # a catch-up scan is due at start

    def reconfigure(self, settle_seconds: float, linger_seconds: float = 0.0,
                    linger_folders: int = WatcherConfig.linger_folders) -> None:
        """New settle and linger periods, for folders that settle from now on."""
        self.settle_seconds = settle_seconds
        self.linger_seconds, self.linger_folders = linger_seconds, linger_folders

    def finished(self, folder: Folder, scan_began: datetime | None = None) -> None:
        """The folder is complete now (renamed to its final name), or a catch-up scan that began at
        ``scan_began`` found it changed since its last import."""
        if scan_began is None or folder in self.settling:  # an event, or one since the scan: queue it
            self.scanned.pop(folder, None)
        elif folder not in self.ready:
            self.scanned[folder] = scan_began
        self.gone.pop(folder, None)
        self.renamed.discard(folder)
        self.settling.pop(folder, None)
        self.ready.setdefault(folder, 0.0)

    def activity(self, folder: Folder) -> None:
        """Something changed in a folder that is still being written (or lingering after it settled, when a
        late file arrives): restart its quiet period. An event: what a catch-up scan saw of it is out of date."""
        self.scanned.pop(folder, None)
        if folder not in self.ready:
            self.lingering.pop(folder, None)
            self.settling[folder] = self.clock() + self.settle_seconds

    def linger(self, folder: Folder) -> list[Folder]:
        """A folder settled: keep it watched for late files for ``linger_seconds``. Returns the folders to stop
        watching now: this one when lingering is off, the oldest ones beyond ``linger_folders``."""
        if self.linger_seconds <= 0 or self.linger_folders <= 0:
            return [folder]
        self.lingering[folder] = self.clock() + self.linger_seconds
        excess = len(self.lingering) - self.linger_folders
        oldest = sorted(self.lingering, key=self.lingering.__getitem__)[:max(0, excess)]
        for done in oldest:
            del self.lingering[done]
        return oldest

    def linger_over(self) -> list[Folder]:
        """Lingering folders whose period is over (and forgotten here): stop watching them."""
        now = self.clock()
        over = [folder for folder, until in self.lingering.items() if until <= now]
        for folder in over:
            del self.lingering[folder]
        return over

    def forget(self, folder: Folder) -> None:
        """The folder was moved away or deleted before it was queued."""
        self.settling.pop(folder, None)
        self.ready.pop(folder, None)
        self.failures.pop(folder, None)
        self.checking.pop(folder, None)
        self.lingering.pop(folder, None)
        self.scanned.pop(folder, None)

    def vanished(self, folder: Folder) -> None:
        """The folder was moved away or deleted: whatever was imported of it is to be removed."""
        self.forget(folder)
        self.gone[folder] = self.clock()
        self.renamed.discard(folder)

    def moved_within(self, folder: Folder) -> None:
        """The gone folder is in the root under another final name: it is not coming back, so the removal of its
        rows is not held back (the other folder's files would be duplicates of them until then)."""
        if folder in self.gone:
            self.renamed.add(folder)

    def hold_removal(self, folder: Folder) -> bool:
        """Whether the removal of a gone folder's rows waits for the settle period (it may be renamed back)."""
        return folder not in self.renamed

    def due_gone(self) -> list[Folder]:
        now = self.clock()
        return [folder for folder, when in self.gone.items() if when <= now]

    def gone_recorded(self, folder: Folder) -> None:
        self.gone.pop(folder, None)
        self.renamed.discard(folder)

    def gone_later(self, folder: Folder, seconds: float = 1.0) -> None:
        self.gone[folder] = self.clock() + seconds

    def forget_root(self, name: str) -> None:
        """The root is no longer watched: drop every folder of it."""
        for folder in [f for f in (*self.settling, *self.ready, *self.checking, *self.lingering) if f[0] == name]:
            self.forget(folder)
        for folder in [f for f in self.gone if f[0] == name]:
            del self.gone[folder]
            self.renamed.discard(folder)

    def overflow(self) -> None:
        """Events were lost: the next loop turn reconciles every root with the database."""
        self.rescan_requested = True

    def scan_started(self) -> set[Folder]:
        """A catch-up scan begins: the request for one is met; returns the folders it must leave alone (those
        settling or waiting to be queued: this intake has them in hand)."""
        self.rescan_requested = False
        return set(self.settling) | set(self.ready)

    def scan_time(self, folder: Folder) -> datetime | None:
        """When the catch-up scan that alone found ``folder`` read the batch rows (None: an event saw it)."""
        return self.scanned.get(folder)

    def due_to_check(self) -> list[Folder]:
        """Settling folders whose quiet period is over: their newest change is to be checked (by stat)."""
        now = self.clock()
        due = [f for f, when in self.settling.items() if when <= now and f not in self.checking]
        for folder in due:
            self.checking[folder] = self.settling[folder]
        return due

    def checked(self, folder: Folder, newest: float | None, wall_clock: float) -> bool:
        """The newest ctime found under a folder (None: it is gone); True when the folder has settled."""
        began = self.checking.pop(folder, None)
        if began is None or self.settling.get(folder) != began:
            return False  # forgotten, finished, or active again while it was being checked
        if newest is None:
            self.forget(folder)
            return False
        quiet_for = wall_clock - newest
        if quiet_for < self.settle_seconds:
            self.settling[folder] = self.clock() + self.settle_seconds - quiet_for
            return False
        del self.settling[folder]
        return True

    def due_for_enqueue(self) -> list[Folder]:
        now = self.clock()
        return [folder for folder, when in self.ready.items() if when <= now]

    def enqueued(self, folder: Folder) -> None:
        self.ready.pop(folder, None)
        self.failures.pop(folder, None)
        self.scanned.pop(folder, None)

    def retry_later(self, folder: Folder, cap: float = 30.0) -> None:
        """Back off (0.5 s doubling, capped) before the next attempt to queue this folder."""
        failures = self.failures.get(folder, 0) + 1
        self.failures[folder] = failures
        self.ready[folder] = self.clock() + min(cap, 0.5 * 2 ** (failures - 1))

    def next_deadline(self) -> float | None:
        """When the loop next has timed work to do here, if ever."""
        times = [due for f, due in self.settling.items() if f not in self.checking] + list(self.ready.values())
        times += list(self.gone.values())
        return min(times) if times else None

    @property
    def pending(self) -> int:
        return len(self.settling) + len(self.ready)
