"""Logging set-up: journald with structured fields under systemd, plain stderr lines otherwise."""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["setup", "under_journal", "batch_fields", "IDENTIFIER", "MESSAGE_BATCH_FAILED",
           "MESSAGE_DATABASE_UNAVAILABLE", "MESSAGE_ROOT_LOST"]

IDENTIFIER = "sendit-watcher"
# MESSAGE_ID journal fields, explained by the journald catalog the package installs (journalctl -x).
MESSAGE_BATCH_FAILED = "5e4d1800a1b24c0e9c3f6b2d8e7a0001"
MESSAGE_DATABASE_UNAVAILABLE = "5e4d1800a1b24c0e9c3f6b2d8e7a0002"
MESSAGE_ROOT_LOST = "5e4d1800a1b24c0e9c3f6b2d8e7a0003"
_LIBRARIES = ("pydicom", "psycopg", "pyinotify")


def under_journal() -> bool:
    """True when stderr is connected to journald (systemd sets JOURNAL_STREAM to its device:inode)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if stream:
        try:
            info = os.fstat(sys.stderr.fileno())
        except (OSError, ValueError, AttributeError):
            return False
        return stream == f"{info.st_dev}:{info.st_ino}"
    return bool(os.environ.get("INVOCATION_ID")) and os.path.exists("/run/systemd/journal/socket")


def setup(level: str = "INFO") -> None:
    """Route every log record to journald or stderr; library loggers stay at WARNING."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_handler())
    root.setLevel(level.upper())
    for name in _LIBRARIES:
        library = logging.getLogger(name)
        library.handlers.clear()  # pyinotify installs a console handler of its own
        library.propagate = True
        library.setLevel(max(logging.WARNING, root.level))


def _handler() -> logging.Handler:
    if under_journal():
        from systemd.journal import JournalHandler

        handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER=IDENTIFIER)
        handler.setFormatter(logging.Formatter("%(message)s"))
        return handler
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter("%(levelname)s %(name)s: %(message)s"))
    return handler


class OneLineFormatter(logging.Formatter):
    """One record, one line of its own (a traceback follows it): a name holding a newline or a carriage return
    cannot forge a log line."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return super().formatMessage(record).replace("\r", "\\r").replace("\n", "\\n")


def batch_fields(**fields: object) -> dict[str, object]:
    """Journal fields for a batch line: batch_fields(batch_id=3) -> {'SENDIT_BATCH_ID': 3}."""
    return {f"SENDIT_{key.upper()}": value for key, value in fields.items()}
