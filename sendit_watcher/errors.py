"""The error tree of sendit-watcher and the exit codes the command line maps it to."""

from __future__ import annotations

__all__ = [
    "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE", "EXIT_UNAVAILABLE", "EXIT_CONFIG",
    "SenditError", "ConfigError", "DatabaseUnavailable", "WatchError", "ImportFailed", "one_line",
]

EXIT_OK = 0
EXIT_FAILURE = 1  # some folder failed to import
EXIT_USAGE = 64  # EX_USAGE: bad command line
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: the database cannot be reached
EXIT_CONFIG = 78  # EX_CONFIG: the configuration is invalid; a restart cannot fix it


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
    """Raised when a watch root cannot be watched (missing, unreadable, watch table full)."""

    exit_code = EXIT_CONFIG


class ImportFailed(SenditError):
    """Raised when a folder cannot be imported as a whole (it vanished, it is not a directory)."""


def one_line(exc: BaseException, limit: int = 500) -> str:
    """An exception's text on one line (whitespace runs collapsed, at most ``limit`` characters); its class name
    when it has no text."""
    return " ".join(str(exc).split())[:limit] or type(exc).__name__
