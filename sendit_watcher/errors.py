"""The error tree of sendit-watcher and the exit codes the command line maps it to."""

from __future__ import annotations

import os
import traceback

__all__ = [
    "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE", "EXIT_UNAVAILABLE", "EXIT_SOFTWARE", "EXIT_CONFIG", "EXIT_INTERRUPTED",
    "EXIT_CODES",
    "SenditError", "ConfigError", "DatabaseUnavailable", "WatchError", "ImportFailed", "one_line", "describe",
    "connection_trouble",
]

EXIT_OK = 0
EXIT_FAILURE = 1  # some folder failed to import
EXIT_USAGE = 64  # EX_USAGE: bad command line
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: the database cannot be reached
EXIT_SOFTWARE = 70  # EX_SOFTWARE: the service's main loop died (a bug); the service manager restarts it
EXIT_CONFIG = 78  # EX_CONFIG: the configuration is invalid; a restart cannot fix it
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C

# Every exit code and what it means: the one text of them, from which `--help` and sendit-watcher(8) are made.
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_FAILURE: "a folder failed to import (it is recorded as failed; see status), retry was given a batch that "
                  "is not failed, rejected a folder never imported, import was refused (a root lost on this host), or "
                  "adopt-root found no directory to adopt or refused a root that looks like a share not mounted",
    EXIT_USAGE: "bad command line (or SENDIT_WATCHER_USER names no user)",
    EXIT_UNAVAILABLE: "PostgreSQL cannot be reached",
    EXIT_SOFTWARE: "the service's main loop died (a bug; it is logged and systemd restarts the service)",
    EXIT_CONFIG: "invalid configuration: a restart cannot fix it, so systemd does not restart the service "
                 "(RestartPreventExitStatus=78)",
    EXIT_INTERRUPTED: "interrupted by Ctrl-C (SIGINT): a command stopped before it was done, or listen ended",
}


class SenditError(Exception):
    """Base class of every error sendit-watcher raises on purpose."""

    exit_code = EXIT_FAILURE


class ConfigError(SenditError):
    """Raised when the configuration file or an option is invalid; carries every problem found."""

    exit_code = EXIT_CONFIG

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class DatabaseUnavailable(SenditError):
    """Raised when PostgreSQL cannot be reached or refuses the connection."""

    exit_code = EXIT_UNAVAILABLE


class WatchError(SenditError):
    """Raised when a watch root cannot be watched (missing, unreadable, watch table full); ``reason`` says why
    in a few words (a lost root's reason), the message names the root and the fix."""

    exit_code = EXIT_CONFIG

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class ImportFailed(SenditError):
    """Raised when a folder cannot be imported as a whole (it vanished, it is not a directory)."""


def one_line(exc: BaseException, limit: int = 500) -> str:
    """An exception's text on one line (whitespace runs collapsed, at most ``limit`` characters); its class name
    when it has no text."""
    return " ".join(str(exc).split())[:limit] or type(exc).__name__


# SQLSTATEs that say nothing about the batch: the connection, the server or a transient conflict. Wait, retry.
_TRANSIENT_CLASSES = ("08", "53", "57P", "58")  # connection; resources; shutdown/cannot connect; system error
_TRANSIENT_STATES = frozenset({"40001", "40P01", "55P03", "57P01", "57P02", "57P03"})


def connection_trouble(exc: BaseException) -> bool:
    """True when a database error is the connection's or the server's (retry later, the batch stays queued),
    False when it is this batch's (record the failure, back off)."""
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate is None:
        import psycopg

        return isinstance(exc, psycopg.OperationalError)  # no answer from the server at all
    return sqlstate in _TRANSIENT_STATES or sqlstate.startswith(_TRANSIENT_CLASSES)


def describe(exc: BaseException) -> str:
    """The one text of an error that may leave the process (log, last_error, status, listen): never a value
    from a file. A database error gives its SQLSTATE and the names of the constraint, column or table, never
    PostgreSQL's message, DETAIL or CONTEXT; an OSError its strerror and path; our own errors their message;
    anything else its class and where it was raised."""
    if isinstance(exc, SenditError):
        return one_line(exc, 2000)
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate is not None:
        return _database_error(exc, sqlstate)
    if type(exc).__module__.startswith("psycopg"):  # raised by the client: libpq's words, no values
        return f"{type(exc).__name__}: {one_line(exc)}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    return f"{type(exc).__name__} at {_where(exc)}"


def _database_error(exc: BaseException, sqlstate: str) -> str:
    diag = getattr(exc, "diag", None)
    names = [f"{what} {getattr(diag, attribute)}" for what, attribute in
             (("constraint", "constraint_name"), ("table", "table_name"), ("column", "column_name"))
             if diag is not None and getattr(diag, attribute, None)]
    return f"database error {sqlstate} ({type(exc).__name__})" + (f" on {', '.join(names)}" if names else "")


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    if not frames:
        return "an unknown place"
    frame = frames[-1]
    return f"{os.path.basename(frame.filename)}:{frame.lineno} ({frame.name})"
