"""A third-party processor for tests: loaded by dotted path, it fails on every event."""

from __future__ import annotations

from typing import Any

import pyinotify


class Exploding(pyinotify.ProcessEvent):  # type: ignore[misc]
    """Raises on every event, to prove one processor's failure never stops the notifier."""

    required_events = pyinotify.IN_CREATE

    def my_init(self, **_: Any) -> None:
        pass

    def process_default(self, event: Any) -> None:
        raise RuntimeError(f"exploding on {event.maskname}")


class CreatesOnly(pyinotify.ProcessEvent):  # type: ignore[misc]
    """Asks for IN_CREATE only and records nothing: the watcher must still notice when its root is lost."""

    required_events = pyinotify.IN_CREATE

    def my_init(self, **_: Any) -> None:
        pass

    def process_default(self, event: Any) -> None:
        pass
