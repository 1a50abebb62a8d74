"""Folders the processors noticed, on their way to the queue: settling ones, finished ones, retries.

Only the main loop touches an Intake; processors report to it and the service drains it into the database.
It never touches the disk: the service looks at a settling folder off the main loop (its change stamp: every
entry's name, size, mtime and ctime) and reports the answer back (``due_to_check`` / ``checked``).

A folder settles when this process has seen nothing in it change for ``settle_seconds`` of its own monotonic
clock: no inotify event, and the same stamp at two looks that far apart. No timestamp on disk is compared with
the wall clock, so a ctime in the future (NFS clock skew, an NTP step back) never holds a folder up, and one in
the past never lets a folder still being written through.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sendit_watcher.config import WatcherConfig

__all__ = ["Folder", "Intake", "LOOK_DELAY"]

Folder = tuple[str, str]  # (watch name, folder name directly under the root)
LOOK_DELAY = 1.0  # after the last event, the first look is this long (at most settle_seconds / 4) later


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
    looks: dict[Folder, tuple[str, float]] = field(default_factory=dict)  # folder -> (stamp, seen unchanged since)
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
        ``scan_began`` found it changed since its last import (or found it young, and it has settled since
        without a change this service saw: ``young``)."""
        if scan_began is None or folder in self.settling:  # an event, or one since the scan: queue it
            self.scanned.pop(folder, None)
        elif folder not in self.ready:
            self.scanned[folder] = scan_began
        self.gone.pop(folder, None)
        self.renamed.discard(folder)
        self.settling.pop(folder, None)
        self.looks.pop(folder, None)
        self.ready.setdefault(folder, 0.0)

    def activity(self, folder: Folder) -> None:
        """Something changed in a folder that is still being written (or lingering after it settled, when a
        late file arrives): restart its quiet period. An event: what a catch-up scan saw of it is out of date."""
        self.scanned.pop(folder, None)
        if folder not in self.ready:
            self.lingering.pop(folder, None)
            now = self.clock()
            self.settling[folder] = now + min(LOOK_DELAY, self.settle_seconds / 4)  # a look once events pause
            if folder in self.looks:
                self.looks[folder] = (self.looks[folder][0], now)  # an event is a change, whatever the stamp says

    def young(self, folder: Folder, scan_began: datetime | None) -> None:
        """A catch-up scan that began at ``scan_began`` found the folder changed, but changed within the settle
        period (being written, or renamed in just now): it settles like a new folder. One this intake did not
        have in hand keeps the scan's time until an event or a look shows it change, so that, settled, it is
        queued as the scan found it: a batch that failed after the scan read its row stays failed (see
        batches.enqueue), as it does for a folder the scan found changed and settled."""
        in_hand = folder in self.settling or folder in self.ready
        self.activity(folder)
        if scan_began is not None and not in_hand:
            self.scanned[folder] = scan_began

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
        self.looks.pop(folder, None)

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
        """Settling folders due for a look: their change stamp is to be taken (by stat)."""
        now = self.clock()
        due = [f for f, when in self.settling.items() if when <= now and f not in self.checking]
        for folder in due:
            self.checking[folder] = self.settling[folder]
        return due

    def checked(self, folder: Folder, stamp: str | None) -> bool:
        """The folder's change stamp as a look found it (None: it is gone); True when the folder has settled:
        the same stamp as at a look ``settle_seconds`` ago, and no event since."""
        began = self.checking.pop(folder, None)
        if began is None or self.settling.get(folder) != began:
            return False  # forgotten, finished, or active again while it was being looked at
        if stamp is None:
            self.forget(folder)
            return False
        now = self.clock()
        seen, since = self.looks.get(folder, (None, now))
        if stamp != seen:
            since = now  # changed since the last look (or never looked at): the quiet period starts now
            if folder in self.looks:
                self.scanned.pop(folder, None)  # a change this service saw: not as a catch-up scan found it
        if now < since + self.settle_seconds:  # the sum the look was scheduled by, so no rounding tells them apart
            self.looks[folder] = (stamp, since)
            self.settling[folder] = since + self.settle_seconds
            return False
        del self.settling[folder]
        self.looks.pop(folder, None)
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
