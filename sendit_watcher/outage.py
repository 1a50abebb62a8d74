"""A database outage told once, then again only at growing intervals, and its end once: a database that stays
away for an hour makes a dozen lines per process, not one at every retry (every retry_interval seconds)."""

from __future__ import annotations

import logging
import time

from sendit_watcher.logs import MESSAGE_DATABASE_UNAVAILABLE

__all__ = ["Outage"]


class Outage:
    """The log of one process's outages: the first failure at WARNING with the catalog's MESSAGE_ID (journalctl -x
    explains it), a reminder after FIRST_REPEAT seconds, then after twice as long each time up to MOST_REPEAT,
    and one "database is back" line when a connection succeeds again."""

    FIRST_REPEAT = 5.0
    MOST_REPEAT = 300.0

    def __init__(self, log: logging.Logger, who: str = "") -> None:
        self.log = log
        self.who = f"{who}: " if who else ""
        self.since: float | None = None  # when the outage began (monotonic), None while the database answers
        self.failures = 0
        self._gap = self.FIRST_REPEAT
        self._next = 0.0

    def failed(self, reason: str, retry_seconds: float) -> None:
        """One failed attempt; logged when it begins an outage or a reminder is due."""
        now = time.monotonic()
        self.failures += 1
        if self.since is None:
            self.since, self.failures, self._gap = now, 1, self.FIRST_REPEAT
            self._next = now + self._gap
            self.log.warning("%sdatabase unavailable: %s (retrying every %g s; said again only at growing intervals)",
                             self.who, reason, retry_seconds, extra={"MESSAGE_ID": MESSAGE_DATABASE_UNAVAILABLE})
        elif now >= self._next:
            self._gap = min(self._gap * 2, self.MOST_REPEAT)
            self._next = now + self._gap
            self.log.warning("%sdatabase still unavailable after %.0f s (%d attempts): %s", self.who,
                             now - self.since, self.failures, reason)

    def back(self) -> None:
        """A connection succeeded: the end of an outage is told once."""
        if self.since is not None:
            self.log.warning("%sdatabase is back after %.0f s (%d failed attempts)", self.who,
                             time.monotonic() - self.since, self.failures)
        self.since = None
