"""Importing one batch end to end: claim it, import it in that transaction, record a failure on its own.

Shared by ``sendit-watcher import`` and the service's worker processes.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg

from sendit_watcher import batches
from sendit_watcher.batches import Batch, BatchStatus
from sendit_watcher.config import Config
from sendit_watcher.db import Connection
from sendit_watcher.errors import ImportFailed, connection_trouble, describe
from sendit_watcher.importer import Result, import_claimed
from sendit_watcher.logs import MESSAGE_BATCH_FAILED, batch_fields
from sendit_watcher.names import to_text
from sendit_watcher.parsers import InlineParser, Parser
from sendit_watcher.walk import fingerprint, open_folder, walk

__all__ = ["Failure", "Outcome", "import_next", "import_batch", "FolderPool"]

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


def import_next(conn: Connection, config: Config, parser: Parser) -> Outcome | None:
    """Claim the oldest free queued batch of a root this host has and import it; None when there is none."""
    roots = [watch.name for watch in config.watches]
    return _run(conn, config, parser, lambda: batches.claim(conn, roots), None, queued=True)


def import_batch(conn: Connection, config: Config, parser: Parser, batch_id: int,
                 progress: Progress | None = None) -> Outcome | None:
    """Claim one given batch (waiting for a worker that holds it) and import it, as it is on disk now (asked for
    by hand: even when it was queued as a removal)."""
    return _run(conn, config, parser, lambda: batches.claim_id(conn, batch_id), progress)


def _run(conn: Connection, config: Config, parser: Parser, claim: Callable[[], Batch | None],
         progress: Progress | None, *, queued: bool = False) -> Outcome | None:
    """Claim, then import; a batch taken from the queue (``queued``) as a removal only loses its rows: what is
    on disk under its name now, if anything, is a new folder, which the watcher queues once it is finished."""
    claimed: Batch | None = None
    try:
        with conn.transaction():
            claimed = claim()
            if claimed is None:
                return None
            watch = config.watch_named(claimed.root)
            folder = None if queued and claimed.removal else _folder(config, claimed)
            result = import_claimed(conn, claimed, folder, parser, config.watcher.host_name,
                                    full_header=config.importer.full_header, progress=progress,
                                    leave_out=watch.finished_marker if watch else "")
    except Exception as exc:  # noqa: BLE001 - classified: the connection's, or this batch's
        if claimed is None or (isinstance(exc, psycopg.Error) and connection_trouble(exc)):
            raise  # the claim is released with the transaction and the batch stays queued
        return _fail(conn, config, claimed, exc)
    _log_result(result)
    return result


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
        else:
            why = exc.strerror or "cannot be opened"
        raise ImportFailed(f"folder {to_text(folder)} {why}; nothing was read") from None
    return folder


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
    """The folder's fingerprint as it is after a failure (None when it cannot be walked): a catch-up scan
    queues the batch again only once this has changed."""
    try:
        return fingerprint(walk(str(batches.resolve(config, batch.root, batch.path))))
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

    def __init__(self, config: Config, processes: int) -> None:
        context = multiprocessing.get_context("forkserver")
        self._pool = context.Pool(processes, initializer=_pool_start, initargs=(config,))

    def imap(self, batch_ids: list[int]) -> Iterator[Outcome | None]:
        """Outcomes in completion order."""
        return self._pool.imap_unordered(_pool_import, batch_ids)

    def close(self) -> None:
        self._pool.close()
        self._pool.join()


_pool_state: dict[str, Any] = {}


def _pool_start(config: Config) -> None:
    from sendit_watcher.db import connect

    _pool_state["config"] = config
    _pool_state["conn"] = connect(config.database, application="sendit-watcher import")
    _pool_state["parser"] = InlineParser()


def _pool_import(batch_id: int) -> Outcome | None:
    return import_batch(_pool_state["conn"], _pool_state["config"], _pool_state["parser"], batch_id)
