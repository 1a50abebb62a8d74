"""Event processors: pyinotify.ProcessEvent subclasses, loaded by dotted path from ``[watch:NAME] processor``."""

from __future__ import annotations

import importlib
from typing import Any

import pyinotify

from sendit_watcher.errors import ConfigError

__all__ = ["load_processor"]


def load_processor(dotted: str) -> type[Any]:
    """The ProcessEvent subclass named by ``dotted``; ConfigError naming what is wrong otherwise."""
    module_name, _, class_name = dotted.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError([f"cannot import module {module_name!r}: {exc}"]) from None
    found = getattr(module, class_name, None)
    if not (isinstance(found, type) and issubclass(found, pyinotify.ProcessEvent)):
        raise ConfigError([f"{dotted!r} is not a pyinotify.ProcessEvent subclass"])
    return found
