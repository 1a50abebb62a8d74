"""Whether a watch root is still the file system it was: absence is not deletion.

A root's identity is recorded per host at first sight (table ``root_identity``): its device and inode, whether
it is a mount point, and the file system it is on (type, source and fsid, from /proc/self/mountinfo and
statvfs). Every step that would remove rows or record a folder ``empty`` because it is absent first asks
``check`` (or ``assess``, inside a transaction) for a verdict: the root is itself, or lost with a reason. A
lost root is recorded with its reason and the time it was lost, logged once when it is lost and once when it is
back, and ``adopt`` accepts a root's identity as it is now after a deliberate change.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import stat
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from psycopg.rows import class_row

from sendit_watcher.access import access_fix, readable, whom
from sendit_watcher.batches import BatchStatus
from sendit_watcher.config import Config, RootConfig
from sendit_watcher.db import Connection
from sendit_watcher.errors import SenditError
from sendit_watcher.logs import MESSAGE_ROOT_LOST
from sendit_watcher.names import to_disk
from sendit_watcher.walk import as_recorded

__all__ = ["Identity", "Verdict", "LostRoot", "RootRecord", "AdoptionRefused", "RootGuard", "identity_now", "judge",
           "assess", "check", "adopt", "is_shared", "share", "prove", "records", "MOUNTINFO", "CHECK_EVERY"]

log = logging.getLogger(__name__)

MOUNTINFO = "/proc/self/mountinfo"
CHECK_EVERY = 5.0  # seconds between checks that a root is itself, in the service and in each worker


@dataclass(frozen=True)
class Identity:
    """What makes a root itself: its directory (device, inode), whether it is a mount point, and the file system
    it is on (type and source as mounted, statvfs's fsid: 0 where the file system gives none)."""

    device: int
    inode: int
    mount_point: bool
    fs_type: str
    fs_source: str
    fs_id: int

    def same_file_system(self, other: Identity) -> bool:
        """The fsid decides where both have one (stable across device renames and remounts of a disk); else the
        type and the source as mounted (an NFS export's server:/path)."""
        if self.fs_id and other.fs_id:
            return self.fs_id == other.fs_id
        return (self.fs_type, self.fs_source) == (other.fs_type, other.fs_source)

    def label(self) -> str:
        """Its file system as an operator tells it apart: type, source and, where it has one, fsid (two tmpfs
        mounts of one source differ by their fsid only)."""
        return f"{self.fs_type} {self.fs_source}" + (f", fsid {self.fs_id:x}" if self.fs_id else "")

    def describe(self) -> str:
        return f"{self.fs_type or '?'} {self.fs_source or '?'}, inode {self.inode}"


@dataclass(frozen=True)
class Verdict:
    """A root is itself, or lost with a reason. ``now`` is its identity as just seen (None: missing); ``record``
    the identity to store (first sight, or a change that is accepted), with ``note`` saying what changed."""

    root: str
    itself: bool
    reason: str | None = None
    now: Identity | None = None
    record: Identity | None = None
    note: str | None = None
    proven: bool = False  # itself, and it has shown this host a folder the database knows: absence means something
    shared: bool = False  # itself, and it has shown this host a folder exactly as another host imported it
    fix: str | None = None  # what the operator does about a lost root, when it is not `adopt-root` after a change


def judge(root: str, recorded: Identity | None, now: Identity | None, unseen: int = 0, *,
          proven: bool = False, changed: bool = False) -> Verdict:
    """The verdict on a root from its recorded identity and the one seen now. ``unseen``: at first sight, the
    database's most recently imported folders of the root, none of which is here now (0 otherwise); ``proven``:
    the recorded directory has shown this host folders the database knows; ``changed``: some of those ``unseen``
    folders are here by name, but none with its files as imported."""
    def lost(reason: str) -> Verdict:
        return Verdict(root, False, reason, now)

    if now is None:
        return lost("missing (it does not exist or is not a directory)")
    if recorded is None:
        if unseen and changed:
            return lost(f"of the {unseen} folders of it imported last, those here are not as they were imported "
                        "(changed since, or copies on this host: is the share mounted?); itself once one is as "
                        "imported (the hosts that saw them read changed folders again)")
        if unseen:
            return lost(f"none of the {unseen} folders of it imported last is here; is its file system mounted?")
        return Verdict(root, True, now=now, record=now, note="recorded at first sight")
    if recorded.mount_point and not now.mount_point:
        return lost("not mounted (it was a mount point at first sight)")
    if not recorded.mount_point and now.mount_point:
        if proven:  # the folders it showed are hidden under the mount, not deleted
            return lost("a file system was mounted on it since first sight, over the folders it held")
        # its share mounted at last (the plain directory never showed a folder): another inode, of course
        return Verdict(root, True, now=now, record=now, note="a file system was mounted on it since first sight")
    if recorded.inode != now.inode:
        return lost("another directory or file system than at first sight")
    if not recorded.same_file_system(now):
        return lost(f"another file system ({now.label()}) than at first sight ({recorded.label()})")
    if recorded != now:
        return Verdict(root, True, now=now, record=now, note="its device number changed (a remount)")
    return Verdict(root, True, now=now)


def identity_now(path: Path) -> Identity | None:
    """The identity of the directory at ``path`` (a symbolic link followed, as the watch follows it); None when
    there is none. Other OSErrors (a dead NFS server's EIO or ESTALE) are raised."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISDIR(info.st_mode):
        return None
    real = os.fsencode(os.path.realpath(path))
    point, fs_type, source = _mount_of(real, info.st_dev)
    return Identity(info.st_dev, info.st_ino, point == real, fs_type, source, os.statvfs(path).f_fsid)


_ESCAPE = re.compile(rb"\\([0-7]{3})")


def _mount_of(path: bytes, device: int) -> tuple[bytes, str, str]:
    """(mount point, type, source) of the mount ``path`` is on: the last (topmost) mount whose mount point is
    ``path`` or its nearest ancestor. Without a readable mountinfo: a mount point is where the device changes."""
    try:
        with open(MOUNTINFO, "rb") as lines:
            mounts = [_parse_mount(line) for line in lines]
    except OSError:
        parent = os.stat(os.path.dirname(path) or b"/").st_dev
        return (path if parent != device else b""), "", ""
    best: tuple[bytes, str, str] = (b"/", "", "")
    for point, fs_type, source in mounts:
        inside = path == point or path.startswith(point.rstrip(b"/") + b"/")
        if inside and len(point) >= len(best[0]):
            best = (point, fs_type, source)
    return best


def _parse_mount(line: bytes) -> tuple[bytes, str, str]:
    """One line of mountinfo: ``ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER``."""
    before, _, after = line.rstrip(b"\n").partition(b" - ")
    point = _ESCAPE.sub(lambda m: bytes([int(m[1], 8)]), before.split(b" ")[4])
    fs_type, source = (after.split(b" ") + [b"", b""])[:2]
    return point, fs_type.decode(errors="replace"), _ESCAPE.sub(lambda m: bytes([int(m[1], 8)]), source).decode(
        errors="replace")


def _is_directory(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


# --- the record, per root and host ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RootRecord:
    """A root_identity row: the identity recorded (None: lost at first sight) and the lost state."""

    root: str
    host: str
    device: Decimal | None
    inode: Decimal | None
    mount_point: bool | None
    fs_type: str | None
    fs_source: str | None
    fs_id: Decimal | None
    recorded_at: datetime | None
    lost_reason: str | None
    lost_since: datetime | None
    proven: bool = False  # it has shown this host a folder the database knows (migration 0012)
    shared: bool = False  # ... exactly as another host imported it: it is their share (migration 0013)

    @property
    def identity(self) -> Identity | None:
        if self.device is None or self.inode is None or self.mount_point is None:
            return None
        return Identity(int(self.device), int(self.inode), self.mount_point, self.fs_type or "",
                        self.fs_source or "", int(self.fs_id or 0))


LostRoot = RootRecord  # a record with a lost_reason, as `status` and `metrics` show it

_RECORD = """
SELECT root, host, device, inode, mount_point, fs_type, fs_source, fs_id, recorded_at, lost_reason, lost_since,
       proven, shared
FROM root_identity WHERE root = %(root)s AND host = %(host)s
"""
_RECORD_LOCKED = """
SELECT root, host, device, inode, mount_point, fs_type, fs_source, fs_id, recorded_at, lost_reason, lost_since,
       proven, shared
FROM root_identity WHERE root = %(root)s AND host = %(host)s FOR UPDATE
"""
_RECORDS = """
SELECT root, host, device, inode, mount_point, fs_type, fs_source, fs_id, recorded_at, lost_reason, lost_since,
       proven, shared
FROM root_identity ORDER BY root, host
"""


def _record_of(conn: Connection, root: str, host: str, *, lock: bool = False) -> RootRecord | None:
    keys = {"root": root, "host": host}
    with conn.cursor(row_factory=class_row(RootRecord)) as cursor:
        if lock:
            return cursor.execute(_RECORD_LOCKED, keys).fetchone()
        return cursor.execute(_RECORD, keys).fetchone()


def records(conn: Connection) -> list[RootRecord]:
    """Every root's record on every host (``status``, ``metrics``)."""
    with conn.cursor(row_factory=class_row(RootRecord)) as cursor:
        found = cursor.execute(_RECORDS).fetchall()
    conn.rollback()
    return found


def _last_imported(conn: Connection, root: str, most: int = 20, *, by_another: str | None = None
                   ) -> list[tuple[str, str]]:
    """(path, fingerprint) of the root's folders imported last (with files; ``by_another``: by a host other than
    that one): a root seen for the first time on a host must show one of them as it was imported, or it is not
    the root the other hosts see (an unmounted share's mount point, where a folder of the same name proves
    nothing)."""
    rows = conn.execute("SELECT path, fingerprint FROM batch WHERE root = %s AND status = %s AND files > 0"
                        " AND (%s::text IS NULL OR host <> %s::text) ORDER BY finished_at DESC NULLS LAST LIMIT %s",
                        (root, BatchStatus.DONE, by_another, by_another, most)).fetchall()
    return [(str(path), str(stamp)) for path, stamp in rows]


def _shows_one(watch: RootConfig, sample: list[tuple[str, str]], *, by_name: bool = False) -> bool:
    """Whether the root holds one of the ``sample`` folders with its files as recorded (names, sizes, times: a
    share shows every host the same), or ``by_name``, one of those names. Only folders of those names are
    walked, until one matches."""
    for path, stamp in sample:
        folder = watch.path / to_disk(path)
        if _is_directory(folder) and (by_name or as_recorded(str(folder), stamp, watch.finished_marker,
                                                             legacy=False)):
            return True
    return False


def _recorded_elsewhere(conn: Connection, root: str, host: str) -> bool:
    """Whether another host has recorded the root's identity."""
    return conn.execute("SELECT EXISTS (SELECT 1 FROM root_identity WHERE root = %s AND host <> %s"
                        " AND device IS NOT NULL)", (root, host)).fetchone() == (True,)


def assess(conn: Connection, host: str, watch: RootConfig) -> Verdict:
    """The verdict on a root now, read only (usable inside the transaction that claimed a batch)."""
    record = _record_of(conn, watch.name, host)
    recorded = record.identity if record else None
    try:
        now = identity_now(watch.path)
    except OSError as exc:
        return Verdict(watch.name, False, f"cannot be examined ({exc.strerror or type(exc).__name__})")
    if now is not None and not readable(watch.path):  # an unmounted 0700 mount point, a group not given yet
        return Verdict(watch.name, False, f"not readable by {whom()}", now,
                       fix=access_fix(watch.path, "it is watched again within seconds, and caught up"))
    # Proven before, and still the same directory (a mount placed on it since hides what proved it).
    shown = (record is not None and record.proven and recorded is not None and now is not None
             and (recorded.inode, recorded.mount_point) == (now.inode, now.mount_point))
    unseen, names_here = 0, False
    if now is not None and not shown:
        sample = _last_imported(conn, watch.name)
        shown = _shows_one(watch, sample)  # by content: what proves the root
        if recorded is None and not shown:
            names_here = _shows_one(watch, sample, by_name=True)
            # A name is enough to be itself where no host has recorded the root yet (the first host of a site,
            # the first start after an upgrade: its folders may have changed since), not to prove it.
            name_enough = names_here and not _recorded_elsewhere(conn, watch.name, host)
            unseen = 0 if name_enough else len(sample)
    verdict = judge(watch.name, recorded, now, unseen, proven=record is not None and record.proven,
                    changed=names_here)
    return dataclasses.replace(verdict, proven=verdict.itself and shown,
                               shared=verdict.itself and _shows_theirs(conn, host, watch, record, now))


def _shows_theirs(conn: Connection, host: str, watch: RootConfig, record: RootRecord | None,
                  now: Identity | None) -> bool:
    """Whether the root has shown this host (before, and it is still that directory; or now) one of the folders
    another host imported last, exactly as that host imported it."""
    recorded = record.identity if record else None
    if (record is not None and record.shared and recorded is not None and now is not None
            and (recorded.inode, recorded.mount_point) == (now.inode, now.mount_point)):
        return True
    if not _recorded_elsewhere(conn, watch.name, host):  # no other host: nothing of theirs to show (and no sort
        return False                                     # of the batch table at every check of a lone host)
    return _shows_one(watch, _last_imported(conn, watch.name, by_another=host))


def check(conn: Connection, host: str, watch: RootConfig) -> Verdict:
    """The verdict on a root now, recorded in a transaction of its own: an identity seen first or accepted is
    stored, the lost state set or cleared; the change from itself to lost, and back, is logged once."""
    with conn.transaction():
        verdict = assess(conn, host, watch)
        before = _record_of(conn, watch.name, host, lock=True)  # locks nothing at first sight: hence RETURNING
        was_lost = before is not None and before.lost_reason is not None
        if verdict.itself:
            if not _store(conn, host, watch.name, verdict):  # recorded meanwhile by another process: said there
                verdict = dataclasses.replace(verdict, note=None)
            if verdict.proven and not (before is not None and before.proven):
                prove(conn, host, watch.name)
            if verdict.shared and not (before is not None and before.shared):
                share(conn, host, watch.name)
            news = was_lost
        else:  # news when this process set (or changed) the reason, not one that found it set
            news = conn.execute(
                "INSERT INTO root_identity (root, host, lost_reason, lost_since) VALUES (%s, %s, %s, now())"
                " ON CONFLICT (root, host) DO UPDATE SET lost_reason = EXCLUDED.lost_reason,"
                " lost_since = coalesce(root_identity.lost_since, now())"
                " WHERE root_identity.lost_reason IS DISTINCT FROM EXCLUDED.lost_reason RETURNING 1",
                (watch.name, host, verdict.reason)).fetchone() is not None
    _log_change(watch, host, verdict, news)
    return verdict


def _store(conn: Connection, host: str, root: str, verdict: Verdict) -> bool:
    """An accepted identity (when it changed) and the lost state cleared; False when the record already held
    that identity (another process of the host stored it first)."""
    if verdict.record is None:
        conn.execute("UPDATE root_identity SET lost_reason = NULL, lost_since = NULL WHERE root = %s AND host = %s"
                     " AND lost_reason IS NOT NULL", (root, host))
        return True
    return _write_identity(conn, host, root, verdict.record)


def _write_identity(conn: Connection, host: str, root: str, identity: Identity, *, force: bool = False) -> bool:
    """Record ``identity`` (and clear the lost state); False when the record held it already, unless ``force``
    (recorded_at is then set anew)."""
    written = conn.execute(
        "INSERT INTO root_identity (root, host, device, inode, mount_point, fs_type, fs_source, fs_id, recorded_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now()) ON CONFLICT (root, host) DO UPDATE SET"
        " device = EXCLUDED.device, inode = EXCLUDED.inode, mount_point = EXCLUDED.mount_point,"
        " fs_type = EXCLUDED.fs_type, fs_source = EXCLUDED.fs_source, fs_id = EXCLUDED.fs_id,"
        " recorded_at = now(), lost_reason = NULL, lost_since = NULL, proven = root_identity.proven"
        " AND root_identity.inode = EXCLUDED.inode AND root_identity.mount_point = EXCLUDED.mount_point,"
        " shared = root_identity.shared"
        " AND root_identity.inode = EXCLUDED.inode AND root_identity.mount_point = EXCLUDED.mount_point"
        " WHERE %s OR root_identity.lost_reason IS NOT NULL OR (root_identity.device, root_identity.inode,"
        " root_identity.mount_point, root_identity.fs_type, root_identity.fs_source, root_identity.fs_id)"
        " IS DISTINCT FROM (EXCLUDED.device, EXCLUDED.inode, EXCLUDED.mount_point, EXCLUDED.fs_type,"
        " EXCLUDED.fs_source, EXCLUDED.fs_id) RETURNING 1",
        (root, host, Decimal(identity.device), Decimal(identity.inode), identity.mount_point, identity.fs_type,
         identity.fs_source, Decimal(identity.fs_id), force)).fetchone()
    return written is not None


def is_shared(conn: Connection, host: str, root: str) -> bool:
    """Whether the root has shown this host that it is the share the other hosts see (``share``)."""
    return conn.execute("SELECT shared FROM root_identity WHERE root = %s AND host = %s",
                        (root, host)).fetchone() == (True,)


def share(conn: Connection, host: str, root: str) -> None:
    """The root has shown this host a folder exactly as another host imported it: it is their share. Only then
    does this host read a folder other hosts saw, or act on the absence of one it never saw."""
    with conn.transaction():
        conn.execute("UPDATE root_identity SET shared = true, proven = true WHERE root = %s AND host = %s"
                     " AND NOT shared AND device IS NOT NULL", (root, host))


def prove(conn: Connection, host: str, root: str) -> None:
    """The root has shown this host a folder the database knows: from now on a folder missing from it is gone.
    In the caller's transaction, or one of its own."""
    with conn.transaction():
        conn.execute("UPDATE root_identity SET proven = true WHERE root = %s AND host = %s AND NOT proven"
                     " AND device IS NOT NULL", (root, host))


def _log_change(watch: RootConfig, host: str, verdict: Verdict, news: bool) -> None:
    """The change from itself to lost (or from one reason to another), and back, once each (``news``: this
    process recorded the change)."""
    where = f"watch root {watch.path} ([watch:{watch.name}]) on host {host}"
    if not verdict.itself and news:
        fix = verdict.fix or f"after a deliberate change: sendit-watcher adopt-root {watch.name}"
        log.error("%s is lost: %s; none of its rows is removed and its batches wait until it is back (%s)", where,
                  verdict.reason, fix, extra={"MESSAGE_ID": MESSAGE_ROOT_LOST})
    elif verdict.itself and news:
        log.warning("%s is back (itself again); catching up", where, extra={"MESSAGE_ID": MESSAGE_ROOT_LOST})
    if verdict.itself and verdict.note and verdict.now is not None:
        level = logging.WARNING if verdict.note.startswith("a file system was mounted") else logging.INFO
        log.log(level, "%s: %s (%s)", where, verdict.note, verdict.now.describe())


class RootNotFound(SenditError):
    """``adopt-root`` of a root that has no directory to adopt."""


class AdoptionRefused(SenditError):
    """``adopt-root`` of a root that looks like an unmounted share: adopting it would remove rows."""


def adopt(conn: Connection, host: str, watch: RootConfig, *, force: bool = False) -> Identity:
    """Accept the root's identity as it is now on this host (after a deliberate change: a new share, a root
    moved); its lost state is cleared. RootNotFound when there is no directory there; AdoptionRefused, unless
    ``force``, when it looks like a share not mounted (a mount point at first sight, not one now; or none of the
    folders imported last here): the folders this host saw would all lose their rows."""
    now = identity_now(watch.path)
    if now is None:
        raise RootNotFound(f"[watch:{watch.name}] path {watch.path} does not exist or is not a directory on host "
                           f"{host}; mount it or create it, then adopt it")
    if not force:
        _refuse_if_unmounted(conn, host, watch, now)
    with conn.transaction():
        _write_identity(conn, host, watch.name, now, force=True)
        prove(conn, host, watch.name)  # the operator vouches for it
        share(conn, host, watch.name)
    log.info("watch root %s ([watch:%s]) on host %s adopted as it is now (%s)", watch.path, watch.name, host,
             now.describe())
    return now


def _refuse_if_unmounted(conn: Connection, host: str, watch: RootConfig, now: Identity) -> None:
    record = _record_of(conn, watch.name, host)
    sample = _last_imported(conn, watch.name)
    conn.rollback()
    why = None
    if record is not None and record.mount_point and not now.mount_point:
        why = "it was a mount point at first sight and is not one now"
    elif sample and not _shows_one(watch, sample, by_name=True):
        why = f"none of the {len(sample)} folders of it imported last is here"
    if why:
        raise AdoptionRefused(
            f"[watch:{watch.name}] path {watch.path} on host {host}: {why}. Adopted, every folder this host saw that "
            f"is missing from it would lose its rows. Is its file system mounted? If those folders really are "
            f"gone: sendit-watcher adopt-root --force {watch.name}")


class RootGuard:
    """A worker's view of which of its host's roots are themselves: each root checked again at most every
    ``every`` seconds, or at once when ``lost`` says so; a worker claims batches of those roots only."""

    EVERY = CHECK_EVERY

    def __init__(self, config: Config, every: float = EVERY) -> None:
        self.config = config
        self.every = every
        self._checked: dict[str, tuple[float, bool]] = {}

    def usable(self, conn: Connection) -> list[str]:
        """The names of this host's roots that are themselves now."""
        names = []
        for watch in self.config.watches:
            at, itself = self._checked.get(watch.name, (-self.every, False))
            if time.monotonic() - at >= self.every:
                itself = check(conn, self.config.watcher.host_name, watch).itself
                self._checked[watch.name] = (time.monotonic(), itself)
            if itself:
                names.append(watch.name)
        return names

    def lost(self, conn: Connection, watch: RootConfig) -> Verdict:
        """A folder of ``watch`` is missing and its root was not itself: check it now, recorded and logged."""
        verdict = check(conn, self.config.watcher.host_name, watch)
        self._checked[watch.name] = (time.monotonic(), verdict.itself)
        return verdict
