"""Whether this process may read a directory, and what an operator does when it may not.

A running process keeps the supplementary groups it started with: a group its user joined since
(``adduser sendit-watcher GROUP``) gives it nothing until a restart, whatever a reload re-reads."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

__all__ = ["readable", "groups_joined_since_start", "whom", "access_fix"]

RESTART = "systemctl restart sendit-watcher"


def readable(path: Path | str) -> bool:
    """This process may list ``path`` and open what is in it (read and search access)."""
    return os.access(path, os.R_OK | os.X_OK)


def groups_joined_since_start(path: Path | str) -> list[str]:
    """The groups this process's user is in by the group database but this process is not (joined since it
    started: a reload cannot give it them, a restart does) that may open ``path``: the group of it or of a
    directory above it, or any of them where that cannot be told (a directory that cannot be examined, a group
    not mapped into the service's user namespace: PrivateUsers= shows it as the overflow group)."""
    try:
        user = pwd.getpwuid(os.geteuid())
        gained = set(os.getgrouplist(user.pw_name, user.pw_gid)) - set(os.getgroups()) - {os.getegid()}
    except (KeyError, OSError):  # a uid without a passwd entry: no group list to compare with
        return []
    owners = _owning_groups(Path(path))
    if owners is not None and not owners & gained:
        return []
    return sorted(_group_name(gid) for gid in (gained if owners is None else owners & gained))


def _owning_groups(path: Path) -> set[int] | None:
    """The groups of ``path`` and of the directories above it; None when one of them cannot be told."""
    groups = set()
    for directory in (path, *path.parents):
        try:
            gid = os.stat(directory).st_gid
        except OSError:
            return None
        if gid == _OVERFLOW_GID:
            return None
        groups.add(gid)
    return groups


def _overflow_gid() -> int:
    try:
        return int(Path("/proc/sys/kernel/overflowgid").read_text())
    except (OSError, ValueError):
        return 65534


_OVERFLOW_GID = _overflow_gid()


def whom() -> str:
    """This process's user as an operator names it: "user sendit-watcher, uid 998"."""
    try:
        return f"user {pwd.getpwuid(os.geteuid()).pw_name}, uid {os.geteuid()}"
    except KeyError:
        return f"uid {os.geteuid()}"


def access_fix(path: Path | str, then: str) -> str:
    """What to do about ``path``, a directory closed to this process: restart it when its user joined a group
    that may open it since it started, else give the user access; ``then`` says what happens once it has."""
    gained = groups_joined_since_start(path)
    if gained:
        try:
            user = pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:
            user = str(os.geteuid())
        return (f"user {user} is in group(s) {', '.join(gained)} now, but a running process keeps the groups it "
                f"started with (a reload cannot change them): restart the service ({RESTART}) to take the new "
                f"group membership")
    return (f"give {whom()} read and search access to it (and search access to the directories above), by its "
            f"group or an ACL; {then}")


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
