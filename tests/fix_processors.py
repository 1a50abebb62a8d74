"""Third-party processors for tests, loaded by the service by dotted path (``processor_path`` gives it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyinotify
import pytest


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


_PROCESSORS = {processor.__name__: processor for processor in (Exploding, CreatesOnly)}


@pytest.fixture
def processor_path() -> Callable[[str], str]:
    """The dotted path of one of these processors by its class name, as a ``[watch:NAME] processor`` names it."""
    def path(name: str) -> str:
        assert name in _PROCESSORS, f"{name!r} is none of the test processors {sorted(_PROCESSORS)}"
        return f"{__name__}.{name}"
    return path
