"""Walking a folder's subtree by stat alone: the files to read, the entries to reject, the fingerprint."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

__all__ = ["FileEntry", "Rejection", "walk", "fingerprint", "display_path"]


@dataclass(frozen=True)
class FileEntry:
    """A regular file found in a folder; ``path`` is relative to the folder."""

    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Rejection:
    """An entry that is not an importable DICOM instance, and why."""

    path: str
    reason: str
    detail: str
    size: int | None = None
    mtime_ns: int | None = None


def display_path(raw: str) -> str:
    """A path safe to store as text: undecodable bytes shown as \\xNN escapes."""
    return raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_decodable(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_KINDS = {
    stat.S_IFIFO: "FIFO",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
}


def walk(folder: str) -> Iterator[FileEntry | Rejection]:
    """Every non-directory entry under ``folder``, sorted, never following symbolic links."""
    yield from _walk(folder, "")


def _walk(top: str, prefix: str) -> Iterator[FileEntry | Rejection]:
    try:
        with os.scandir(top) as scan:
            entries = sorted(scan, key=lambda e: e.name)
    except OSError as exc:
        if prefix:
            yield Rejection(display_path(prefix.rstrip("/")), "unreadable-directory", exc.strerror or str(exc))
            return
        raise
    for entry in entries:
        yield from _classify(entry, prefix + entry.name)


def _classify(entry: os.DirEntry[str], rel: str) -> Iterator[FileEntry | Rejection]:
    try:
        info = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return  # gone between readdir and stat: nothing to record
    except OSError as exc:
        yield Rejection(display_path(rel), "unreadable", exc.strerror or str(exc))
        return
    if not _is_decodable(rel):
        yield Rejection(display_path(rel), "undecodable-name", "file name is not valid UTF-8",
                        info.st_size, info.st_mtime_ns)
    elif stat.S_ISDIR(info.st_mode):
        yield from _walk(entry.path, rel + "/")
    elif stat.S_ISLNK(info.st_mode):
        yield Rejection(rel, "symlink", "symbolic links are not followed", info.st_size, info.st_mtime_ns)
    elif stat.S_ISREG(info.st_mode):
        yield FileEntry(rel, info.st_size, info.st_mtime_ns)
    else:
        kind = _KINDS.get(stat.S_IFMT(info.st_mode), "special file")
        yield Rejection(rel, "not-a-regular-file", f"{kind}, not a regular file", None, info.st_mtime_ns)


def fingerprint(entries: Iterable[FileEntry | Rejection]) -> str:
    """A digest of every entry's name, size and mtime: equal fingerprints mean an unchanged folder."""
    digest = hashlib.blake2b(digest_size=16)
    count = 0
    for entry in entries:
        digest.update(f"{entry.path}\0{entry.size}\0{entry.mtime_ns}\n".encode("utf-8", "surrogateescape"))
        count += 1
    return f"{count}:{digest.hexdigest()}"
