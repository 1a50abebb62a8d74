"""Walking a folder's subtree by directory file descriptors, by stat alone: the files to read, the entries to
reject, the fingerprint, the newest change.

Every directory is opened relative to its parent with ``O_NOFOLLOW``, so a symbolic link (even one swapped in
during the walk) is never followed and nothing outside the folder is ever listed. The walk is iterative: a tree
of any depth costs one open directory per level, down to ``MAX_DEPTH`` levels; deeper ones are recorded as
rejections. Paths are relative to the folder, in stored form (see ``names``).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sendit_watcher.names import to_disk, to_text
from sendit_watcher.outcomes import RejectReason

__all__ = ["FileEntry", "Rejection", "walk", "walk_stats", "walk_directories", "fingerprint", "legacy_fingerprint",
           "change_stamp", "newest_change", "open_folder", "open_beneath", "open_directory_beneath", "is_regular_file",
           "MAX_DEPTH"]

MAX_DEPTH = 512  # levels of sub-folders walked below a folder; deeper ones become 'too-deep' rejections
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class FileEntry:
    """A regular file found in a folder; ``path`` is relative to the folder, in stored form."""

    path: str
    size: int
    mtime_ns: int
    ctime_ns: int = 0


@dataclass(frozen=True)
class Rejection:
    """An entry that is not an importable DICOM instance, and why."""

    path: str
    reason: RejectReason
    detail: str
    size: int | None = None
    mtime_ns: int | None = None


_KINDS = {
    stat.S_IFIFO: "FIFO",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
}


def is_regular_file(path: str) -> bool:
    """True when ``path`` is a regular file itself (not a link to one, not a directory)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def open_folder(folder: str) -> int:
    """A descriptor of ``folder`` itself, refusing a symbolic link in its last component (OSError)."""
    return os.open(folder, _DIRECTORY_FLAGS)


def open_beneath(folder: str, path: str) -> int:
    """Open the file at stored ``path`` below ``folder`` for reading, following no symbolic link on the way."""
    parts = to_disk(path).split("/")
    fd = open_folder(folder)
    try:
        for part in parts[:-1]:
            child = os.open(part, _DIRECTORY_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        return os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)


@dataclass
class _Level:
    fd: int
    prefix: str  # disk form, ending in '/' below the top
    names: Iterator[str]


def walk_stats(folder: str) -> Iterator[tuple[str, os.stat_result | Rejection]]:
    """(disk path relative to ``folder``, its lstat) for every entry below it, directories included, sorted by
    name, depth first; a Rejection instead where an entry cannot be examined. OSError when ``folder`` itself
    cannot be opened."""
    top = open_folder(folder)
    try:
        for path, found, _ in _walk_open(top):
            yield path, found
    finally:
        os.close(top)


def walk_directories(top: int) -> Iterator[tuple[str, int]]:
    """(disk path relative to the directory open as ``top``, a descriptor of it) for every directory below it,
    sorted, depth first, never through a symbolic link; each descriptor is valid until the next step only.
    Directories that cannot be opened or listed are left out."""
    for path, found, fd in _walk_open(top):
        if fd is not None and not isinstance(found, Rejection):
            yield path, fd


def _walk_open(top: int) -> Iterator[tuple[str, os.stat_result | Rejection, int | None]]:
    """Below the open directory ``top`` (left open): each entry's path, its lstat or Rejection, and the
    descriptor of a sub-folder just opened (None for anything else)."""
    levels = [_Level(top, "", iter(sorted(os.listdir(top))))]
    try:
        while levels:
            level = levels[-1]
            name = next(level.names, None)
            if name is None:
                done = levels.pop()
                if levels:
                    os.close(done.fd)
                continue
            found = _examine(level, name, len(levels))
            if found is None:
                continue
            if isinstance(found, _Level):
                levels.append(found)
                yield level.prefix + name, os.fstat(found.fd), found.fd
            else:
                yield level.prefix + name, found, None
    finally:
        for level in levels[1:]:
            os.close(level.fd)


def _examine(level: _Level, name: str, depth: int) -> os.stat_result | Rejection | _Level | None:
    """An entry's lstat, a Rejection, the opened level of a sub-folder, or None when it vanished."""
    path = level.prefix + name
    try:
        info = os.stat(name, dir_fd=level.fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return Rejection(to_text(path), RejectReason.UNREADABLE, exc.strerror or str(exc))
    if not stat.S_ISDIR(info.st_mode):
        return info
    if depth >= MAX_DEPTH:
        return Rejection(to_text(path), RejectReason.TOO_DEEP, f"nested more than {MAX_DEPTH} folders deep; not walked")
    try:
        fd = os.open(name, _DIRECTORY_FLAGS, dir_fd=level.fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return _unopenable(level.fd, name, path, exc)
    try:
        names = sorted(os.listdir(fd))
    except OSError as exc:
        os.close(fd)
        return Rejection(to_text(path), RejectReason.UNREADABLE_DIRECTORY, exc.strerror or str(exc))
    return _Level(fd, path + "/", iter(names))


def _unopenable(parent: int, name: str, path: str, exc: OSError) -> Rejection:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped since the stat: for a link or for a file
        try:
            swapped = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except OSError:
            swapped = None
        if swapped is not None and stat.S_ISLNK(swapped.st_mode):
            return Rejection(to_text(path), RejectReason.SYMLINK,
                             "replaced by a symbolic link while walking; not followed")
        return Rejection(to_text(path), RejectReason.VANISHED,
                         "replaced while walking; examined again at the next import")
    return Rejection(to_text(path), RejectReason.UNREADABLE_DIRECTORY, exc.strerror or str(exc))


def walk(folder: str, leave_out: str = "") -> Iterator[FileEntry | Rejection]:
    """Every non-directory entry under ``folder``, sorted, never following symbolic links; ``leave_out`` names
    a file directly in the folder that is not part of it (the finished marker)."""
    for path, found in walk_stats(folder):
        if leave_out and path == leave_out:
            continue
        if isinstance(found, Rejection):
            yield found
        elif not stat.S_ISDIR(found.st_mode):
            yield _classify(to_text(path), found)


def _classify(path: str, info: os.stat_result) -> FileEntry | Rejection:
    if stat.S_ISREG(info.st_mode):
        return FileEntry(path, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    if stat.S_ISLNK(info.st_mode):
        return Rejection(path, RejectReason.SYMLINK, "symbolic links are not followed", info.st_size, info.st_mtime_ns)
    kind = _KINDS.get(stat.S_IFMT(info.st_mode), "special file")
    return Rejection(path, RejectReason.NOT_A_REGULAR_FILE, f"{kind}, not a regular file", None, info.st_mtime_ns)


def newest_change(folder: str) -> float | None:
    """The newest ctime (seconds) of the folder or anything under it, by stat alone; None when it is gone."""
    try:
        newest = os.stat(folder, follow_symlinks=False).st_ctime
        for _, found in walk_stats(folder):
            if not isinstance(found, Rejection):
                newest = max(newest, found.st_ctime)
    except OSError:
        return None
    return newest


def change_stamp(folder: str) -> str | None:
    """A digest of the folder's and every entry's (below it, by stat alone) name, type, inode, size, mtime and
    ctime: equal stamps at two looks mean nothing in it changed between them, whatever its clocks say (a ctime in
    the future, or stepped back). None when the folder is gone."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        digest.update(_stat_line("", os.stat(folder, follow_symlinks=False)))
        for path, found in walk_stats(folder):
            if isinstance(found, Rejection):
                digest.update(f"{path}\0{found.reason}\n".encode(errors="surrogateescape"))
            else:
                digest.update(_stat_line(path, found))
    except OSError:
        return None
    return digest.hexdigest()


def _stat_line(path: str, info: os.stat_result) -> bytes:
    return (f"{path}\0{info.st_mode}\0{info.st_ino}\0{info.st_size}\0{info.st_mtime_ns}\0{info.st_ctime_ns}\n"
            .encode(errors="surrogateescape"))


def fingerprint(entries: Iterable[FileEntry | Rejection]) -> str:
    """A digest of every entry's name, size, mtime and ctime (a chmod or chown counts): equal fingerprints mean
    an unchanged folder."""
    digest = hashlib.blake2b(digest_size=16)
    count = 0
    for entry in entries:
        ctime = entry.ctime_ns if isinstance(entry, FileEntry) else entry.reason
        digest.update(f"{entry.path}\0{entry.size}\0{entry.mtime_ns}\0{ctime}\n".encode())
        count += 1
    return f"{count}:{digest.hexdigest()}"


def legacy_fingerprint(entries: Iterable[FileEntry | Rejection]) -> str:
    """The fingerprint as versions 1.0.0 and 1.1.0 recorded it (name, size and mtime: no ctime), so that a
    folder they imported and nobody changed since is not read again after an upgrade."""
    digest = hashlib.blake2b(digest_size=16)
    count = 0
    for entry in entries:
        digest.update(f"{entry.path}\0{entry.size}\0{entry.mtime_ns}\n".encode("utf-8", "surrogateescape"))
        count += 1
    return f"{count}:{digest.hexdigest()}"


def as_recorded(folder: str, stamp: str | None, leave_out: str = "", *, legacy: bool = True) -> bool:
    """Whether ``folder`` holds files, exactly as the fingerprint ``stamp`` recorded them (or, with ``legacy``,
    as 1.0/1.1 did: without ctimes, which a copy with `cp -a` also matches)."""
    if stamp is None or stamp.startswith("0:"):
        return False
    try:
        entries = list(walk(folder, leave_out))
    except OSError:
        return False
    return stamp == fingerprint(entries) or (legacy and stamp == legacy_fingerprint(entries))


def open_directory_beneath(top: str, relative: str) -> int:
    """A descriptor of the directory at disk path ``relative`` below ``top``, following no symbolic link below
    ``top`` (``top`` itself, a configured watch root, may be reached through one): OSError (ELOOP, ENOTDIR,
    ENOENT) when any step is not a directory now."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in relative.split(os.sep):
            if part in ("", "."):
                continue
            if part == "..":
                raise OSError(errno.EINVAL, f"{relative!r} leaves {top}")
            child = os.open(part, _DIRECTORY_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd
