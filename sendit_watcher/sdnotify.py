"""sd_notify, the service manager's datagram protocol (not PostgreSQL's NOTIFY): READY, STATUS, WATCHDOG,
STOPPING, RELOADING; a no-op without systemd."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import systemd.daemon as daemon

__all__ = ["SdNotifier"]

log = logging.getLogger(__name__)


class SdNotifier:
    """Tells systemd about the service; every call is a no-op when NOTIFY_SOCKET is unset."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self.watchdog_interval = _watchdog_interval()
        self._last_ping = 0.0
        self._status = ""
        self._failure: str | None = None

    def _send(self, state: str) -> None:
        """Send one message; a socket that refuses it (the manager restarting, a stale path) is logged once
        per kind of failure and never stops the service."""
        if not self.enabled:
            return
        try:
            daemon.notify(state)
        except OSError as exc:
            failure = type(exc).__name__
            if failure != self._failure:
                log.warning("sd_notify to %s failed (%s); the service carries on", os.environ.get("NOTIFY_SOCKET"),
                            exc.strerror or failure)
            self._failure = failure
        else:
            self._failure = None

    def ready(self, status: str) -> None:
        self._status = status
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        """Send STATUS= only when the line changed."""
        if status != self._status:
            self._status = status
            self._send(f"STATUS={status}")

    def reloading(self) -> None:
        self._send(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self, status: str) -> None:
        self._status = status
        self._send(f"STOPPING=1\nSTATUS={status}")

    def extend_timeout(self, seconds: float) -> None:
        """EXTEND_TIMEOUT_USEC: the start-up or stop timeout is extended to ``seconds`` from now."""
        self._send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    @contextmanager
    def extending(self, seconds: float = 60.0) -> Iterator[None]:
        """Keep the current start-up or stop timeout from expiring while the block runs (a long migration or
        drain): EXTEND_TIMEOUT_USEC now and every third of ``seconds``, and WATCHDOG=1 with it."""
        done = threading.Event()

        def keep_extending() -> None:
            while not done.is_set():
                self.extend_timeout(seconds)
                if self.watchdog_interval is not None:
                    self._send("WATCHDOG=1")
                done.wait(seconds / 3)

        pinger = threading.Thread(target=keep_extending, name="extend-timeout", daemon=True)
        if self.enabled:
            pinger.start()
        try:
            yield
        finally:
            done.set()
            if pinger.is_alive():
                pinger.join()

    def watchdog(self) -> None:
        """WATCHDOG=1 at most every half of WATCHDOG_USEC; call it from the main loop."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self._send("WATCHDOG=1")


def _watchdog_interval() -> float | None:
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None
