"""sd_notify, the service manager's datagram protocol (not PostgreSQL's NOTIFY): READY, STATUS, WATCHDOG,
STOPPING, RELOADING; a no-op without systemd."""

from __future__ import annotations

import os
import time

import systemd.daemon as daemon

__all__ = ["SdNotifier"]


class SdNotifier:
    """Tells systemd about the service; every call is a no-op when NOTIFY_SOCKET is unset."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self.watchdog_interval = _watchdog_interval()
        self._last_ping = 0.0
        self._status = ""

    def _send(self, state: str) -> None:
        if self.enabled:
            daemon.notify(state)

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
