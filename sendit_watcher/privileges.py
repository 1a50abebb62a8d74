"""Commands typed by root run as the service's user, so that they reach the database as the service does.

The packaged default connects through the Unix socket with peer authentication as ``sendit-watcher``; typed by
root, ``status`` would ask for a role ``root``. So every command but ``run`` (which systemd starts as its
``User=``) switches a root process to the service's user before it connects, when that user exists.
``--as-root`` keeps root; ``SENDIT_WATCHER_USER`` names another user, and empty keeps root too.
"""

from __future__ import annotations

import os
import pwd
import sys
from collections.abc import Callable

from sendit_watcher.errors import EXIT_SOFTWARE, EXIT_USAGE, SenditError

__all__ = ["SERVICE_USER", "USER_VARIABLE", "UnknownUser", "service_user", "become", "output_as"]

SERVICE_USER = "sendit-watcher"
USER_VARIABLE = "SENDIT_WATCHER_USER"


class UnknownUser(SenditError):
    """SENDIT_WATCHER_USER names a user this host does not have."""

    exit_code = EXIT_USAGE


def service_user(command: str, as_root: bool) -> pwd.struct_passwd | None:
    """The user a root process running ``command`` becomes, or None when it stays who it is: not root, ``run``,
    ``--as-root``, SENDIT_WATCHER_USER empty, or the package's user missing (a checkout on a developer's host)."""
    if os.geteuid() != 0 or command == "run" or as_root:
        return None
    named = os.environ.get(USER_VARIABLE)
    name = SERVICE_USER if named is None else named
    if not name:
        return None
    try:
        return pwd.getpwnam(name)
    except KeyError:
        if named is None:
            return None
        raise UnknownUser(f"{USER_VARIABLE}={name}: no such user; name an existing user, or set it empty (or "
                          "use --as-root) to stay root") from None


def become(user: pwd.struct_passwd) -> None:
    """Become ``user`` for good (groups, gid, uid), with its HOME, USER and LOGNAME, as runuser would."""
    os.setgroups(os.getgrouplist(user.pw_name, user.pw_gid))
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    os.environ.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)


def output_as(user: pwd.struct_passwd, work: Callable[[], str]) -> tuple[int, str]:
    """Run ``work`` in a child process that becomes ``user``, for a root process that must stay root (to write
    where only root may): (0, its text), or (exit code, "") when it raised a SenditError, which it printed."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its exit status and its text are all the parent sees of it
        os.close(reader)
        code = 0
        try:
            become(user)
            output = work().encode()
            with os.fdopen(writer, "wb") as out:
                out.write(output)
        except SenditError as exc:
            print(f"sendit-watcher: {exc}", file=sys.stderr, flush=True)
            code = exc.exit_code
        except BaseException:  # noqa: BLE001 - a bug: say it as the parent would, never return into its code
            import traceback

            traceback.print_exc()
            code = EXIT_SOFTWARE
        os._exit(code)
    os.close(writer)
    with os.fdopen(reader, "rb") as out:
        text = out.read().decode()
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return (0, text) if code == 0 else (code if code > 0 else EXIT_SOFTWARE, "")
