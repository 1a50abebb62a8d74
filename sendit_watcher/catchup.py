"""Catch-up: reconcile each root with the database by stat alone (names, sizes, mtimes), never by reading DICOM.

Runs in a thread of its own so a large tree never stalls the event loop; it only reads. The main loop queues
what it finds through the intake, like any other finished folder.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sendit_watcher import batches, roots
from sendit_watcher.batches import BatchStatus, Known
from sendit_watcher.config import DatabaseConfig, RootConfig
from sendit_watcher.db import Connection, connect
from sendit_watcher.errors import describe
from sendit_watcher.intake import Folder
from sendit_watcher.names import to_disk, to_text
from sendit_watcher.roots import Verdict
from sendit_watcher.walk import fingerprint, is_regular_file, legacy_fingerprint, newest_change, walk

__all__ = ["ScanResult", "scan_roots", "Scanner"]

log = logging.getLogger(__name__)


@dataclass
class ScanResult:
    """What a catch-up scan found: folders to queue now, folders still being written, and its cost."""

    changed: list[Folder] = field(default_factory=list)
    young: list[Folder] = field(default_factory=list)
    waiting: list[Folder] = field(default_factory=list)  # no finished_marker yet
    gone: list[Folder] = field(default_factory=list)  # recorded with rows, seen here before, no longer on disk
    matched: list[str] = field(default_factory=list)  # listed as recorded (same files, sizes, times): paths
    unseen: int = 0  # recorded with rows, missing here, but this host never saw them: left to the hosts that did
    lost: dict[str, Verdict] = field(default_factory=dict)  # roots not themselves: not scanned, nothing gone
    folders: int = 0
    seconds: float = 0.0
    error: str | None = None
    # Per root, the database's time just before the scan read its batch rows; and the changed folders whose
    # batch the scan saw failed. A changed folder whose batch failed after that time, unseen, is not queued
    # again by the scan (it read the folder before the failure): see batches.enqueue.
    rows_read_at: dict[str, datetime] = field(default_factory=dict)
    seen_failed: set[Folder] = field(default_factory=set)

    def scan_began(self, folder: Folder) -> datetime | None:
        """What batches.enqueue needs to know of the scan that found ``folder`` changed."""
        return None if folder in self.seen_failed else self.rows_read_at.get(folder[0])


def scan_roots(database: DatabaseConfig, watches: dict[str, RootConfig], host: str,
               is_ignored: Callable[[str], bool], settle_seconds: float, skip: set[Folder]) -> ScanResult:
    """Compare every finished folder under each root with its batch row's fingerprint. A root is scanned only
    when it is itself on this host (roots.check) right before it is listed, and its folders missing from the
    listing are reported gone only when it is still itself after (not unmounted during the scan). Only the rows
    of the folders listed, and of those that may be gone, are read: memory and time follow the folders on disk,
    not the history of folders deleted long ago. Folders ``is_ignored`` names (temporary ones,
    lost+found) are left alone."""
    started = time.monotonic()
    result = ScanResult()
    with connect(database, application="sendit-watcher catch-up") as conn:
        for name, watch in watches.items():
            verdict = roots.check(conn, host, watch)
            if not verdict.itself:
                result.lost[name] = verdict
                continue
            listed_at = batches.database_time(conn)  # a folder queued after it may be missing from the listing
            entries = _list_root(watch)
            if entries is None:
                continue
            result.rows_read_at[name] = batches.database_time(conn)
            known = batches.known_folders(conn, name, sorted({to_text(entry) for entry in entries}), listed_at,
                                          host)
            found = ScanResult()
            _scan_root(watch, entries, known, is_ignored, settle_seconds, skip, found, shared=verdict.shared)
            if not _proven(conn, host, watch, verdict, found):
                found.gone, found.unseen = [], 0  # its absences mean nothing yet
            if not verdict.shared and any(known[path].by_another for path in found.matched):
                roots.share(conn, host, name)  # a folder exactly as another host imported it: the same share
                found = _rescan_shared(watch, entries, known, is_ignored, settle_seconds, skip, found)
            batches.see(conn, name, [path for path in found.matched if not known[path].seen], host)
            if found.gone and not (verdict := roots.check(conn, host, watch)).itself:
                result.lost[name] = verdict
                continue
            _merge(found, result)
    result.seconds = time.monotonic() - started
    return result


def _proven(conn: Connection, host: str, watch: RootConfig, verdict: Verdict, found: ScanResult) -> bool:
    """Whether a folder missing from the root is gone: only once the root has shown this host a folder the
    database knows, as it was recorded (now, or before: roots.prove); a name alone proves nothing (a folder of
    that name on a host whose share is not mounted). A host that first saw its root before anything was imported
    there (its share not mounted yet) would otherwise call gone every folder the other hosts import."""
    if verdict.proven:
        return True
    if found.matched:
        roots.prove(conn, host, watch.name)
        return True
    log.debug("catch-up of [watch:%s]: nothing it lists is known yet, so nothing missing from it is gone",
              watch.name)
    return False


def _rescan_shared(watch: RootConfig, entries: list[str], known: dict[str, Known],
                   is_ignored: Callable[[str], bool], settle_seconds: float, skip: set[Folder],
                   found: ScanResult) -> ScanResult:
    """The decisions on what is missing, again, now that the root has shown it is the share."""
    again = dataclasses.replace(found, gone=[], unseen=0)
    _missing_folders(watch.name, entries, known, again, shared=True)
    return again


def _merge(found: ScanResult, into: ScanResult) -> None:
    into.changed += found.changed
    into.young += found.young
    into.waiting += found.waiting
    into.gone += found.gone
    into.unseen += found.unseen
    into.folders += found.folders
    into.seen_failed |= found.seen_failed


def _list_root(watch: RootConfig) -> list[str] | None:
    """The sub-folders of a root, sorted by name; None (logged) when it cannot be listed."""
    try:
        return sorted(e.name for e in os.scandir(watch.path) if e.is_dir(follow_symlinks=False))
    except OSError as exc:
        log.error("catch-up cannot list watch root %s: %s", watch.path, exc.strerror or exc)
        return None


def _scan_root(watch: RootConfig, entries: list[str], known: dict[str, Known],
               is_ignored: Callable[[str], bool], settle_seconds: float, skip: set[Folder],
               result: ScanResult, *, shared: bool = True) -> None:
    name, root = watch.name, watch.path
    _missing_folders(name, entries, known, result, shared=shared)
    for folder_name in entries:
        folder = (name, folder_name)
        if is_ignored(folder_name) or folder in skip:
            continue
        result.folders += 1
        if watch.finished_marker and not is_regular_file(str(root / folder_name / watch.finished_marker)):
            result.waiting.append(folder)
            continue
        try:
            _scan_folder(str(root / folder_name), watch.finished_marker, folder, known.get(to_text(folder_name)),
                         settle_seconds if not watch.finished_marker else 0.0, result, shared)
        except Exception as exc:  # noqa: BLE001 - one folder never stops the scan of the others
            log.error("catch-up could not examine %s: %s; it is queued to be imported", to_text(str(root /
                      folder_name)), describe(exc))
            result.changed.append(folder)


def _missing_folders(name: str, entries: list[str], known: dict[str, Known], result: ScanResult, *,
                     shared: bool) -> None:
    """The recorded folders missing from the listing: gone where their absence counts, else counted unseen."""
    listed = {to_text(folder_name) for folder_name in entries}
    for path, row in known.items():
        if path not in listed and _missing(row):
            if row.absence_counts(shared):
                result.gone.append((name, to_disk(path)))
            else:
                result.unseen += 1


def _missing(row: Known) -> bool:
    """A recorded folder missing from a root that is itself is gone (if its absence counts: Known.absence_counts)
    when it had files at its last import, or when it is queued to be imported (workers never empty a folder they
    cannot see: its removal is queued here)."""
    if row.status is BatchStatus.QUEUED:
        return not row.removal
    return not (row.stamp or "0:").startswith("0:")


def _scan_folder(path: str, marker: str, folder: Folder, row: Known | None, settle_seconds: float,
                 result: ScanResult, shared: bool = True) -> None:
    if row is None or row.status in (BatchStatus.QUEUED, BatchStatus.IMPORTING):
        if _needs_import(row):
            _changed(path, folder, row, settle_seconds, result)
        return
    try:
        entries = list(walk(path, leave_out=marker))
    except OSError:
        return  # vanished since the listing
    exact = row.stamp == fingerprint(entries)
    if exact or row.stamp == legacy_fingerprint(entries):  # legacy: imported by 1.0/1.1
        if exact and not (row.stamp or "0:").startswith("0:"):  # its files exactly as recorded (ctimes too): the
            result.matched.append(to_text(folder[1]))          # root shows this host that folder
        return
    if row.seen_elsewhere and not shared:  # another host's folder, and this root is not known to be theirs: what
        return                             # is here under its name may be a namesake; its hosts decide
    _changed(path, folder, row, settle_seconds, result)


def _changed(path: str, folder: Folder, row: Known | None, settle_seconds: float, result: ScanResult) -> None:
    # Young: changed within settle_seconds by this host's clock, or in the future (clock skew); it then settles
    # by what the service sees change (intake), never by its timestamps, so skew never stalls it.
    newest = newest_change(path)
    young = newest is not None and time.time() - newest < settle_seconds
    (result.young if young else result.changed).append(folder)
    if row is not None and row.status is BatchStatus.FAILED:
        result.seen_failed.add(folder)


def _needs_import(row: Known | None) -> bool:
    """A folder not recorded, or queued as the removal of one that was gone (this one is to be imported, once
    settled); not one queued or being imported."""
    return row is None or (row.status is BatchStatus.QUEUED and row.removal)


class Scanner:
    """Runs one catch-up scan at a time in a background thread; the main loop collects the result."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._result: ScanResult | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, database: DatabaseConfig, watches: dict[str, RootConfig], host: str,
              is_ignored: Callable[[str], bool], settle_seconds: float, skip: set[Folder]) -> None:
        def work() -> None:
            try:
                self._result = scan_roots(database, watches, host, is_ignored, settle_seconds, skip)
            except Exception as exc:  # noqa: BLE001 - reported to the main loop, which retries later
                self._result = ScanResult(error=describe(exc))

        self._result = None
        self._thread = threading.Thread(target=work, name="catch-up", daemon=True)
        self._thread.start()

    def collect(self) -> ScanResult | None:
        """The finished scan's result, once."""
        if self._thread is None or self._thread.is_alive():
            return None
        self._thread = None
        result, self._result = self._result, None
        return result
