"""Importing one batch end to end: claim it, import it in that transaction, record a failure on its own.

Shared by ``sendit-watcher import`` and the service's worker processes.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, NoReturn

import psycopg

from sendit_watcher import batches, roots
from sendit_watcher.access import whom
from sendit_watcher.batches import Batch, BatchStatus
from sendit_watcher.config import Config
from sendit_watcher.db import Connection
from sendit_watcher.errors import ImportFailed, connection_trouble, describe
from sendit_watcher.importer import Result, import_claimed
from sendit_watcher.logs import MESSAGE_BATCH_FAILED, batch_fields
from sendit_watcher.names import to_text
from sendit_watcher.parsers import InlineParser, Parser
from sendit_watcher.roots import RootGuard, Verdict
from sendit_watcher.walk import as_recorded, fingerprint, open_folder, walk

__all__ = ["Failure", "Outcome", "NotHere", "import_next", "import_batch", "FolderPool"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failure:
    """A batch whose import was rolled back and recorded as failed."""

    batch_id: int
    root: str
    path: str
    error: str
    status: BatchStatus = BatchStatus.FAILED


Outcome = Result | Failure
Progress = Callable[[int, int], None]


def import_next(conn: Connection, config: Config, parser: Parser, guard: RootGuard | None = None,
                not_here: NotHere | None = None, progress: Progress | None = None) -> Outcome | None:
    """Claim the oldest free queued batch of a root this host has, and that is itself here (``guard``), and import
    it; None when there is none.

    The attempt is recorded first, committed (batches.start_attempt), so that a worker killed while importing
    (the OOM killer) leaves a trace its supervisor marks; a batch that has killed DEATHS_LIMIT workers is failed
    here instead, and the folders after it are imported. A batch whose folder this host cannot see is released
    and passed over (``not_here``: kept by the caller from one call to the next, a worker's for its life).
    ``progress`` hears of every file stored (a worker's heartbeat)."""
    not_here = not_here if not_here is not None else NotHere()
    roots = guard.usable(conn) if guard is not None else [watch.name for watch in config.watches]
    if not roots:
        return None
    host, pid = config.watcher.host_name, os.getpid()
    while True:
        failure: Failure | None = None
        with conn.transaction():
            candidate = batches.next_queued(conn, roots, not_here.batches(host), host)
            if candidate is None:
                return None
            died = batches.deaths(conn, candidate.id)
            if len(died) >= batches.DEATHS_LIMIT:
                failure = _fail(conn, config, candidate, ImportFailed(_died_reason(died)))
            else:
                batches.start_attempt(conn, candidate.id, host, pid)
        if failure is not None:
            return failure
        outcome = _run(conn, config, parser, partial(batches.claim_queued, conn, candidate.id), progress, guard,
                       queued=True, not_here=not_here)
        if outcome is not None:
            return outcome
        batches.end_attempt(conn, candidate.id, host, pid)  # another worker took it meanwhile: the next one


def _died_reason(died: list[str]) -> str:
    return (f"the worker importing this folder died {len(died)} times without finishing it (the last {died[-1]});"
            " failed so that the folders after it are imported; `sendit-watcher retry` tries again")


def import_batch(conn: Connection, config: Config, parser: Parser, batch_id: int,
                 progress: Progress | None = None, *, force: bool = False) -> Outcome | None:
    """Claim one given batch (waiting for a worker that holds it) and import it, as it is on disk now (asked for
    by hand: even when it was queued as a removal); ``force`` reads every file again."""
    return _run(conn, config, parser, lambda: batches.claim_id(conn, batch_id), progress, force=force)


class Abandoned(KeyboardInterrupt):
    """Raised in a worker by SIGUSR1 (the drain ran out): the folder in hand is rolled back, never recorded as
    failed (a BaseException: the import's ``except Exception`` lets it through). A KeyboardInterrupt, so that
    psycopg treats it as it treats Ctrl-C: a query it lands in (waiting for a lock) is cancelled in the server
    and its connection left usable; any other exception leaves the query running, and the rollback that follows
    fails ("another command is already in progress")."""


class _Abandoning:
    requested = False


def abandon() -> NoReturn:
    """Give up the folder in hand now. The signal may land inside a query: psycopg cancels it and raises this
    Abandoned again; or inside a COPY, which psycopg ends with an error, and what reaches the import is then the
    server's QueryCanceled, an Exception; the flag says it is ours, not the batch's."""
    _Abandoning.requested = True
    raise Abandoned


class NotHere:
    """Batches queued for import whose folder this host cannot see (while its root is itself here): another host
    queued them, or their folder was deleted and its removal is on its way. This host leaves them alone for a
    while (each is logged once): it never empties a folder it merely cannot see."""

    SECONDS = 30.0

    def __init__(self) -> None:
        self._until: dict[tuple[str, int], float] = {}  # (host, batch id): until when

    def add(self, host: str, batch: Batch) -> bool:
        """Leave the batch alone on ``host`` for SECONDS; whether it is new (to be logged)."""
        new = (host, batch.id) not in self._until
        self._until[host, batch.id] = time.monotonic() + self.SECONDS
        return new

    def batches(self, host: str) -> list[int]:
        now = time.monotonic()
        self._until = {key: until for key, until in self._until.items() if until > now}
        return [batch_id for (on, batch_id) in self._until if on == host]


class _NotVisible(Exception):
    """A batch taken from the queue to be imported, whose folder this host cannot see: released untouched."""

    def __init__(self, batch: Batch) -> None:
        super().__init__(batch.path)
        self.batch = batch


class _Unproven(Exception):
    """A batch whose folder other hosts saw (seen_on), on a host whose root has not shown it is their share (no
    folder there as they imported it): what this host has under that name may be a namesake; released untouched,
    left to the hosts that saw it (read by hand: refused)."""

    def __init__(self, batch: Batch) -> None:
        super().__init__(batch.path)
        self.batch = batch


class _Vanished(Exception):
    """The folder an import read was gone (or another directory) when the import was about to commit: it is
    rolled back, so that nothing is announced of a folder that is no longer there."""

    def __init__(self, batch: Batch) -> None:
        super().__init__(batch.path)
        self.batch = batch


def _directory_at(folder: str | None) -> tuple[int, int] | None:
    """(device, inode) of the directory at ``folder`` (not followed), None when there is none."""
    try:
        info = os.lstat(folder) if folder is not None else None
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if info is not None and stat.S_ISDIR(info.st_mode) else None


def _vanished(conn: Connection, config: Config, batch: Batch) -> Failure:
    """The import was rolled back: the batch's rows are as its last import left them, nothing is announced. A
    queued batch is not taken again for settle_seconds: by then the removal queued by the host that saw the
    folder go is due (a removal is held back that long), or the folder is back and is read."""
    batches.hold(conn, batch.id, config.watcher.settle_seconds)
    log.info("batch %d (%s:%s) rolled back: its folder was gone before it committed (deleted or moved away while it "
             "was imported); its rows are as they were and nothing is announced; its removal follows", batch.id,
             batch.root, batch.path)
    return Failure(batch.id, batch.root, batch.path, "not imported: its folder was deleted or moved away while it "
                   "was imported; rolled back", status=BatchStatus.QUEUED)


class _RootLost(Exception):
    """A claimed batch's folder is missing (or cannot be opened) and its root is not itself on this host: the
    batch is released untouched (rolled back, still queued), never emptied."""

    def __init__(self, batch: Batch, verdict: Verdict) -> None:
        super().__init__(verdict.reason)
        self.batch, self.verdict = batch, verdict


def _run(conn: Connection, config: Config, parser: Parser, claim: Callable[[], Batch | None],
         progress: Progress | None, guard: RootGuard | None = None, *, queued: bool = False,
         not_here: NotHere | None = None, force: bool = False) -> Outcome | None:
    """Claim, then import; a batch taken from the queue (``queued``) as a removal only loses its rows: what is
    on disk under its name now, if anything, is a new folder, which the watcher queues once it is finished."""
    claimed: Batch | None = None
    try:
        with conn.transaction():
            claimed = claim()
            if claimed is None:
                return None
            watch = config.watch_named(claimed.root)
            leave_out = watch.finished_marker if watch else ""
            folder = _folder_to_read(conn, config, claimed, queued, leave_out)
            seen = _directory_at(folder)
            result = import_claimed(conn, claimed, folder, parser, config.watcher.host_name,
                                    full_header=config.importing.full_header, progress=progress,
                                    leave_out=leave_out, force=force)
            if folder is not None and (seen is None or _directory_at(folder) != seen):  # just before commit
                raise _Vanished(claimed)  # (under the mirror lock, when it wrote rows)
    except _Vanished as vanished:
        return _vanished(conn, config, vanished.batch)
    except _RootLost as lost:
        return _released(conn, config, lost, guard)
    except _NotVisible as unseen:
        assert not_here is not None  # only a batch taken from the queue is _NotVisible
        _not_visible(not_here, config.watcher.host_name, unseen.batch)
        return None  # released: the caller passes it over and takes the next one
    except _Unproven as foreign:
        return _unproven(config, foreign.batch, not_here)
    except Exception as exc:  # noqa: BLE001 - classified: the connection's, or this batch's
        if _Abandoning.requested:
            raise Abandoned from exc  # rolled back with the transaction: still queued, nothing recorded
        if claimed is None or (isinstance(exc, psycopg.Error) and connection_trouble(exc)):
            raise  # the claim is released with the transaction and the batch stays queued
        outcome: Outcome = _fail(conn, config, claimed, exc)
    else:
        _log_result(result)
        outcome = result
        if result.files and claimed.root != batches.OUTSIDE_ROOTS:  # its root showed this host one of its folders
            roots.prove(conn, config.watcher.host_name, claimed.root)
    batches.fold_tally(conn)  # the counts this batch changed, folded where they are made: reading them stays cheap
    return outcome


def _folder_to_read(conn: Connection, config: Config, batch: Batch, queued: bool, leave_out: str) -> str | None:
    """The folder the import reads, None for none (its rows go). A batch taken from the queue as a removal reads
    nothing, unless its folder is back exactly as its last import saw it (renamed away and back, across a
    restart too): then it is that folder, unchanged, and keeps its rows. A batch taken from the queue to be
    imported whose folder this host cannot see is not emptied (_NotVisible): the removal of a deleted folder is
    queued by the host that saw it go, never inferred from absence."""
    if queued and batch.removal:
        try:
            folder = _folder_here(conn, config, batch)
        except ImportFailed:  # a link or a file of its name now: not the folder, which is gone
            return None
        return folder if folder is not None and _as_last_seen(folder, batch, leave_out) else None
    if batch.root != batches.OUTSIDE_ROOTS:
        if not queued:
            _unless_root_lost(conn, config, batch)  # by hand too: never read into a root that is not itself here
        if _foreign(conn, config.watcher.host_name, batch):
            raise _Unproven(batch)
    folder = _folder_here(conn, config, batch)
    if queued and folder is None and batch.root != batches.OUTSIDE_ROOTS:
        raise _NotVisible(batch)
    return folder


def _foreign(conn: Connection, host: str, batch: Batch) -> bool:
    """Whether the batch holds rows of a folder other hosts saw and this host's root has not shown it is theirs:
    what this host has under that name may be a namesake, which must not replace (or, missing, remove) them. A
    folder never imported yet has no rows to lose: any host that sees it may read it (a failover)."""
    has_rows = batch.fingerprint is not None and not batch.fingerprint.startswith("0:")
    return has_rows and host not in batch.seen_on and not roots.is_shared(conn, host, batch.root)


def _as_last_seen(folder: str, batch: Batch, leave_out: str) -> bool:
    return as_recorded(folder, batch.fingerprint, leave_out)  # a 1.0/1.1 fingerprint too


def _not_visible(not_here: NotHere, host: str, batch: Batch) -> None:
    """The batch was rolled back (still queued, its rows untouched) and is left alone here for a while."""
    if not_here.add(host, batch):
        log.warning("batch %d (%s:%s) released untouched: its folder is not here on this host (another host queued "
                    "it, or it was deleted and its removal is on its way); left to the hosts that see it",
                    batch.id, batch.root, batch.path)


def _unproven(config: Config, batch: Batch, not_here: NotHere | None) -> Failure | None:
    """The batch was rolled back (its rows untouched): taken from the queue, it is left alone here for a while
    (None: the caller takes the next one); read by hand, the refusal."""
    host = config.watcher.host_name
    why = (f"other hosts saw the folder of that name ({', '.join(batch.seen_on)}) and watch root [watch:{batch.root}] "
           f"has not shown host {host} that it is their share (none of their folders here as they imported it)")
    if not_here is None:
        return Failure(batch.id, batch.root, batch.path, f"not imported: {why}; mount the share here, or run "
                       f"`sendit-watcher adopt-root {batch.root}` after a deliberate change")
    if not_here.add(host, batch):
        log.warning("batch %d (%s:%s) released untouched: %s; left to the hosts that saw it", batch.id, batch.root,
                    batch.path, why)
    return None


def _folder_here(conn: Connection, config: Config, batch: Batch) -> str | None:
    """``_folder``, but a folder that is missing or cannot be opened is first blamed on its root: when the root
    is not itself on this host (unmounted, another file system), _RootLost. Folders of OUTSIDE_ROOTS (ad-hoc
    imports, relative to /) have no root to lose."""
    try:
        folder = _folder(config, batch)
    except ImportFailed:
        _unless_root_lost(conn, config, batch)
        raise
    if folder is None:
        _unless_root_lost(conn, config, batch)
    return folder


def _unless_root_lost(conn: Connection, config: Config, batch: Batch) -> None:
    watch = config.watch_named(batch.root) if batch.root != batches.OUTSIDE_ROOTS else None
    if watch is not None:
        verdict = roots.assess(conn, config.watcher.host_name, watch)
        if not verdict.itself:
            raise _RootLost(batch, verdict)


def _released(conn: Connection, config: Config, lost: _RootLost, guard: RootGuard | None) -> Failure:
    """The batch was rolled back (still queued, its rows untouched); the root's lost state is recorded (and
    logged once), and this worker claims nothing of that root until it is back."""
    watch = config.watch_named(lost.batch.root)
    assert watch is not None
    verdict = guard.lost(conn, watch) if guard is not None else roots.check(conn, config.watcher.host_name, watch)
    reason = verdict.reason or lost.verdict.reason or "lost"
    log.warning("batch %d (%s:%s) released untouched: its root is not itself on this host (%s); its rows are "
                "kept", lost.batch.id, lost.batch.root, lost.batch.path, reason)
    return Failure(lost.batch.id, lost.batch.root, lost.batch.path,
                   f"not imported: watch root [watch:{watch.name}] is lost on host {config.watcher.host_name} "
                   f"({reason}); the batch is left as it was", status=BatchStatus.QUEUED)


def _folder(config: Config, batch: Batch) -> str | None:
    """The batch's folder on this host, None when it no longer exists; ImportFailed when it cannot be read."""
    try:
        folder = str(batches.resolve(config, batch.root, batch.path))
    except KeyError as exc:
        raise ImportFailed(str(exc.args[0])) from None
    try:
        os.close(open_folder(folder))
    except FileNotFoundError:
        return None  # gone: its rows go too
    except OSError as exc:
        if os.path.islink(folder):  # O_NOFOLLOW|O_DIRECTORY says ENOTDIR or ELOOP for a link
            why = "is a symbolic link now (never followed)"
        elif exc.errno == errno.ENOTDIR:
            return None  # a file of that name now: the folder is gone, and its rows go too
        elif exc.errno in (errno.EACCES, errno.EPERM):
            raise ImportFailed(_closed_folder(folder, batch, exc)) from None
        else:
            why = exc.strerror or "cannot be opened"
        raise ImportFailed(f"folder {to_text(folder)} {why}; nothing was read") from None
    return folder


def _closed_folder(folder: str, batch: Batch, exc: OSError) -> str:
    """Why a folder its producer closed to the service (a umask of 0077 makes it 0700) failed, and the fix."""
    return (f"folder {to_text(folder)} is not readable by this service ({whom()}: {exc.strerror}); nothing was "
            f"read. Its producer closed it (a umask of 0077?): give that user read and search access to it (chmod "
            f"-R g+rX where its group is the service's, or an ACL), then `sendit-watcher retry {batch.id}` (a "
            f"catch-up scan queues it again too); for later folders, a producer umask of 0027 or a default ACL on "
            f"the root")


def _fail(conn: Connection, config: Config, batch: Batch, exc: Exception) -> Failure:
    error = describe(exc)
    if not batches.record_failure(conn, batch, config.watcher.host_name, error, _fingerprint_now(config, batch)):
        log.info("batch %d (%s:%s) failed here (%s), but another worker has finished it since", batch.id,
                 batch.root, batch.path, error)
        return Failure(batch.id, batch.root, batch.path, error)
    log.error("batch %d (%s:%s) failed: %s", batch.id, batch.root, batch.path, error,
              extra={**batch_fields(batch_id=batch.id, folder=batch.path, status=BatchStatus.FAILED),
                     "MESSAGE_ID": MESSAGE_BATCH_FAILED})
    return Failure(batch.id, batch.root, batch.path, error)


def _fingerprint_now(config: Config, batch: Batch) -> str | None:
    """The folder's fingerprint as it is after a failure (None when it cannot be walked), its finished_marker
    left out as an import and a catch-up scan leave it out: a catch-up scan queues the batch again only once
    this has changed."""
    watch = config.watch_named(batch.root)
    try:
        return fingerprint(walk(str(batches.resolve(config, batch.root, batch.path)),
                                watch.finished_marker if watch else ""))
    except (KeyError, OSError):
        return None


def _log_result(result: Result) -> None:
    fields = batch_fields(batch_id=result.batch_id, folder=result.path, files=result.files,
                          instances=result.instances, rejected=result.rejected, seconds=round(result.seconds, 3),
                          status=result.status)
    if result.unchanged:
        log.debug("batch %d (%s:%s) unchanged since its last import", result.batch_id, result.root, result.path,
                  extra=fields)
        return
    log.info("batch %d (%s:%s) %s: %d files, %d instances (%d new), %d rejected, %d removed, %.2f s, %.0f files/s",
             result.batch_id, result.root, result.path, result.status, result.files, result.instances,
             result.new_instances, result.rejected, result.removed, result.seconds, result.files_per_second,
             extra=fields)


class FolderPool:
    """Imports many batches at once: each of ``processes`` processes imports one whole folder at a time with
    its own connection, so parsing in one overlaps database work in another."""

    def __init__(self, config: Config, processes: int, *, force: bool = False) -> None:
        context = multiprocessing.get_context("forkserver")
        self._pool = context.Pool(processes, initializer=_pool_start, initargs=(config, force))

    def imap(self, batch_ids: list[int]) -> Iterator[Outcome | None]:
        """Outcomes in completion order."""
        return self._pool.imap_unordered(_pool_import, batch_ids)

    def close(self) -> None:
        self._pool.close()
        self._pool.join()


_pool_state: dict[str, Any] = {}


def _pool_start(config: Config, force: bool) -> None:
    from sendit_watcher.db import connect

    _pool_state["config"] = config
    _pool_state["force"] = force
    _pool_state["conn"] = connect(config.database, application="sendit-watcher import")
    _pool_state["parser"] = InlineParser()


def _pool_import(batch_id: int) -> Outcome | None:
    return import_batch(_pool_state["conn"], _pool_state["config"], _pool_state["parser"], batch_id,
                        force=_pool_state["force"])
