"""Parsing a folder's files into instances and rejections: in the calling process, or on every core.

A parser takes the files the walk found and yields, in any order, one Instance or Rejection per file.
"""

from __future__ import annotations

import collections
import itertools
import logging
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Protocol

from sendit_watcher.dicom.headers import Instance, quiet_pydicom, read_instance
from sendit_watcher.errors import ImportFailed
from sendit_watcher.walk import FileEntry, Rejection

__all__ = ["Parser", "InlineParser", "PoolParser", "AdaptiveParser"]

log = logging.getLogger(__name__)


class Parser(Protocol):
    """Turns a folder's files into instances and rejections, in any order."""

    def parse(self, folder: str, entries: list[FileEntry], full_header: bool) -> Iterator[Instance | Rejection]:
        ...


class InlineParser:
    """Parses in the calling process."""

    def __init__(self) -> None:
        quiet_pydicom()

    def parse(self, folder: str, entries: list[FileEntry], full_header: bool) -> Iterator[Instance | Rejection]:
        return _parse_here(folder, entries, full_header)

    def close(self) -> None:
        pass


class PoolParser:
    """Parses in a pool of processes; small folders stay in the calling process. At most ``window`` chunks (of
    CHUNK files or CHUNK_BYTES) are in flight, so memory stays bounded however slowly the results are consumed.
    A pool process that dies (the OOM killer) fails that folder's import with ImportFailed, never hangs it (as
    multiprocessing.Pool would, waiting for ever for a result its dead process will never send); the pool is
    then ``broken`` and a new one is needed."""

    CHUNK = 16
    CHUNK_BYTES = 4 << 20  # a chunk of large files holds fewer of them: memory follows bytes, not file counts

    def __init__(self, processes: int) -> None:
        quiet_pydicom()
        self.window = processes + 1
        self.broken = False
        self._pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("forkserver"),
                                         initializer=quiet_pydicom)

    def parse(self, folder: str, entries: list[FileEntry], full_header: bool) -> Iterator[Instance | Rejection]:
        if len(entries) < 2 * self.CHUNK:
            return _parse_here(folder, entries, full_header)
        return self._in_pool(folder, entries, full_header)

    def _in_pool(self, folder: str, entries: list[FileEntry], full_header: bool) -> Iterator[Instance | Rejection]:
        read = partial(_read_chunk, folder, full_header=full_header)
        chunks = _chunks(entries, self.CHUNK, self.CHUNK_BYTES)
        try:
            in_flight = collections.deque(self._pool.submit(read, chunk)
                                          for chunk in itertools.islice(chunks, self.window))
            while in_flight:
                results = in_flight.popleft().result()
                for chunk in itertools.islice(chunks, 1):
                    in_flight.append(self._pool.submit(read, chunk))
                yield from results
        except BrokenProcessPool:
            self.broken = True
            raise ImportFailed("a process parsing this folder's files died (killed by the OOM killer?); nothing of"
                               " it was stored") from None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class AdaptiveParser:
    """Parses in the calling process, and a folder of ``threshold`` files or more with a pool of ``processes``
    (created on first need), so a large study is parsed on every core while bursts of small folders keep
    one process per worker."""

    def __init__(self, processes: int, threshold: int = 500) -> None:
        quiet_pydicom()
        self.processes = processes
        self.threshold = threshold
        self._pool: PoolParser | None = None

    def parse(self, folder: str, entries: list[FileEntry], full_header: bool) -> Iterator[Instance | Rejection]:
        if len(entries) < self.threshold or self.processes < 2:
            return _parse_here(folder, entries, full_header)
        if self._pool is not None and self._pool.broken:  # a process of it died: a new pool for this folder
            self._pool.close()
            self._pool = None
        if self._pool is None:
            self._pool = PoolParser(self.processes)
        log.debug("parsing %d files of %s with %d processes", len(entries), folder, self.processes)
        return self._pool.parse(folder, entries, full_header)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()


def _chunks(entries: list[FileEntry], most: int, size: int) -> Iterator[list[FileEntry]]:
    """Consecutive runs of at most ``most`` files and, past the first file, at most ``size`` bytes."""
    chunk: list[FileEntry] = []
    total = 0
    for entry in entries:
        if chunk and (len(chunk) >= most or total + entry.size > size):
            yield chunk
            chunk, total = [], 0
        chunk.append(entry)
        total += entry.size
    if chunk:
        yield chunk


def _read_chunk(folder: str, chunk: list[FileEntry], full_header: bool) -> list[Instance | Rejection]:
    return [read_instance(folder, entry, full_header) for entry in chunk]


def _parse_here(folder: str, entries: list[FileEntry], full_header: bool) -> Iterator[Instance | Rejection]:
    for entry in entries:
        yield read_instance(folder, entry, full_header)
