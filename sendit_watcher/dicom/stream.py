"""One open file read forward in bounded chunks, for the lean reader (``lean``): memory per value, not per file.

Positions are the file's own offsets. ``data`` is a window of the file's bytes starting at ``base``: moved forward
as the reader goes, it holds about one chunk, never what lies before the reader's position. A value the reader
does not keep is passed over (its position moves on; nothing is read), a value it keeps and that is longer than a
chunk is read on its own, once (``pread``: it never enters the window), and a value whose fate depends on its
contents can be measured chunk by chunk (``exceeds``) before it is read. Every read is counted in
``COUNTS["bytes_read"]``, so that tests can prove what was not read. ``Memory`` serves bytes already in memory (a
deflated dataset, inflated whole) the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["COUNTS", "Memory", "Stream"]

COUNTS = {"bytes_read": 0}  # bytes this process has read through a Stream


class Stream:
    """The regular file of ``size`` bytes open as ``fd`` (not changed while it is read), read ``chunk`` bytes at a
    time."""

    def __init__(self, fd: int, size: int, chunk: int) -> None:
        self.fd = fd
        self.chunk = max(chunk, 16)
        self.size = size  # where the file ends; lowered if it turns out shorter
        self.base = 0
        self.data = b""

    def cover(self, start: int, stop: int) -> bool:
        """Make ``data`` hold the bytes from ``start`` to ``stop``, reading at least a chunk and dropping what lies
        before ``start`` (the reader never goes back to it); False when the file ends before ``stop``."""
        end = self.base + len(self.data)
        if self.base <= start and stop <= end:
            return True
        if stop > self.size:
            return False
        kept = self.data[start - self.base:] if self.base <= start < end else b""
        at = start + len(kept)
        more = self._read(at, min(max(stop, start + self.chunk), self.size) - at)
        self.data, self.base = kept + more, start
        if at + len(more) < stop:  # shorter than fstat said: it shrank while it was read
            self.size = at + len(more)
            return False
        return True

    def value(self, start: int, length: int) -> bytes | None:
        """The ``length`` bytes at ``start``: from the window, read into it when shorter than a chunk, else read on
        their own, once, leaving the window as it is. None when the file ends before them."""
        stop = start + length
        if length < self.chunk or (self.base <= start and stop <= self.base + len(self.data)):
            if not self.cover(start, stop):
                return None
            return self.data[start - self.base:stop - self.base]
        if stop > self.size:
            return None
        value = self._read(start, length)
        return value if len(value) == length else None

    def exceeds(self, start: int, length: int, measure: Callable[[bytes], int], limit: int) -> bool | None:
        """Whether ``measure`` summed over the ``length`` bytes at ``start`` is more than ``limit``, read a chunk at a
        time and stopping as soon as it is (nothing is kept); None when the file ends before them."""
        if start + length > self.size:
            return None
        total, at, stop = 0, start, start + length
        while at < stop:
            piece = self._read(at, min(self.chunk, stop - at))
            if not piece:
                return None
            total += measure(piece)
            if total > limit:
                return True
            at += len(piece)
        return False

    def _read(self, at: int, length: int) -> bytes:
        data = os.pread(self.fd, length, at) if length > 0 else b""
        COUNTS["bytes_read"] += len(data)
        return data


class Memory(Stream):
    """Bytes already in memory (a deflated dataset inflated whole), read as a Stream: ``data`` are the file
    positions from ``base`` on, all of them in the window."""

    def __init__(self, data: bytes, base: int, chunk: int) -> None:
        super().__init__(-1, base + len(data), chunk)
        self.data, self.base = data, base

    def _read(self, at: int, length: int) -> bytes:
        start = at - self.base
        return self.data[start:start + max(length, 0)]
