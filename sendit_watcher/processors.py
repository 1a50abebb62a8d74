"""Event processors: pyinotify.ProcessEvent subclasses, loaded by dotted path from ``[watch:NAME] processor``.

A processor decides; it never imports. Each is built with ``context=WatchContext``, through pyinotify's
``my_init(**kwargs)``, and reports folders to ``context.intake``. Third-party processors receive the same
context and may use it or ignore it. A processor receives the events it asks for (its watch's ``events`` and
its class's ``required_events``); the loss of the root is detected by the watcher for every processor.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyinotify

from sendit_watcher.config import RootConfig, WatcherConfig
from sendit_watcher.errors import ConfigError
from sendit_watcher.intake import Intake
from sendit_watcher.walk import is_regular_file

__all__ = ["WatchContext", "DicomFolderImporter", "AllEventsSignaler", "load_processor", "build_processor",
           "ROOT_LOSS"]

log = logging.getLogger(__name__)

ROOT_LOSS = pyinotify.IN_DELETE_SELF | pyinotify.IN_MOVE_SELF | pyinotify.IN_UNMOUNT | pyinotify.IN_IGNORED


@dataclass
class WatchContext:
    """What a processor may know and do: its watch, the watcher settings, the intake, and inside-watching."""

    watch: RootConfig
    settings: WatcherConfig
    intake: Intake
    watch_inside: Callable[[str], None]
    unwatch_inside: Callable[[str], None] = lambda path: None

    def folder_of(self, path: str) -> str | None:
        """The folder directly under the root that ``path`` lies in (None for the root itself)."""
        relative = os.path.relpath(path, self.watch.path)
        if relative == "." or relative.startswith(".."):
            return None
        return relative.split(os.sep, 1)[0]


class _ContextProcessor(pyinotify.ProcessEvent):  # type: ignore[misc]
    """A ProcessEvent built with a WatchContext (the watcher's firewall detects the loss of the root)."""

    context: WatchContext

    def my_init(self, context: WatchContext | None = None, **_: Any) -> None:
        assert context is not None, "processors are built with context=WatchContext"
        self.context = context


class DicomFolderImporter(_ContextProcessor):
    """The finished-folder rule: a rename to a final name is finished now; a folder created under its
    final name is finished once it has been quiet for the settle period; temporary names never are."""

    required_events = pyinotify.IN_CREATE | pyinotify.IN_MOVED_TO | pyinotify.IN_MOVED_FROM | pyinotify.IN_DELETE

    def process_default(self, event: Any) -> None:
        if event.path == str(self.context.watch.path):
            self._at_root(event)
        else:
            self._inside(event)

    def _at_root(self, event: Any) -> None:
        name, intake = event.name, self.context.intake
        if not name:
            return
        folder = (self.context.watch.name, name)
        if event.mask & pyinotify.IN_MOVED_TO and event.dir and not self.context.settings.is_temporary(name):
            self._moved_within(event)
        if event.mask & (pyinotify.IN_MOVED_FROM | pyinotify.IN_DELETE):
            if event.dir and not self.context.settings.is_ignored(name):
                intake.vanished(folder)  # its rows, if it was imported, go too
            else:
                intake.forget(folder)
            if event.dir:  # moved out of the root, its watches would follow it: outside the root, for ever
                self.context.unwatch_inside(event.pathname)
        elif not event.dir:
            log.debug("ignoring %s: files directly in a watch root are not batches", event.pathname)
        elif self.context.settings.is_temporary(name):
            log.debug("not yet: %s has a temporary name", event.pathname)
        elif self.context.settings.is_ignored(name):
            log.debug("ignoring %s: a file system's lost+found is not a batch", event.pathname)
        elif self.context.watch.finished_marker:
            self._waiting_for_marker(folder, event.pathname)
        elif event.mask & pyinotify.IN_MOVED_TO:
            log.debug("finished by rename: %s", event.pathname)
            intake.finished(folder)
        elif event.mask & pyinotify.IN_CREATE:
            log.debug("created under its final name, settling: %s", event.pathname)
            intake.activity(folder)
            self.context.watch_inside(event.pathname)

    def _moved_within(self, event: Any) -> None:
        """A folder renamed to this final name from another one in the root (``mv A A2``): A is not coming back,
        and its rows are not to be held back while A2's files would be their duplicates."""
        source = getattr(event, "src_pathname", None) or ""
        if source and os.path.dirname(source) == str(self.context.watch.path):
            self.context.intake.moved_within((self.context.watch.name, os.path.basename(source)))

    def _waiting_for_marker(self, folder: tuple[str, str], path: str) -> None:
        self.context.watch_inside(path)  # first: a marker written from now on is an event, before is seen below
        if is_regular_file(os.path.join(path, self.context.watch.finished_marker)):
            log.debug("finished by its marker: %s", path)
            self.context.intake.finished(folder)
            self.context.unwatch_inside(path)
        else:
            log.debug("waiting for %s in %s", self.context.watch.finished_marker, path)

    def _inside(self, event: Any) -> None:
        name = self.context.folder_of(event.path)
        if name is None or self.context.settings.is_ignored(name):
            return
        folder = (self.context.watch.name, name)
        marker = self.context.watch.finished_marker
        if not marker:
            self.context.intake.activity(folder)
        elif (event.name == marker and event.path == os.path.join(self.context.watch.path, name)
              and is_regular_file(event.pathname)):
            log.debug("finished by its marker: %s", event.path)
            self.context.intake.finished(folder)
            self.context.unwatch_inside(event.path)


class AllEventsSignaler(_ContextProcessor):
    """Logs every event at debug level with its mask name and path (sendit's AllEventsSignaler)."""

    def process_default(self, event: Any) -> None:
        log.debug("%s %s", event.maskname, event.pathname)


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


def build_processor(context: WatchContext) -> Any:
    """The watch's processor, built with ``context=``; ConfigError naming the watch when it cannot be."""
    processor_class = load_processor(context.watch.processor)
    try:
        return processor_class(context=context)
    except Exception as exc:  # noqa: BLE001 - third-party code: any failure is a configuration problem
        raise ConfigError([f"{context.watch.processor!r} cannot be built with context=WatchContext "
                           f"({type(exc).__name__}: {exc}); a processor takes its arguments in my_init(**kwargs)"
                           ]) from None


def check_processor(watch: RootConfig, settings: WatcherConfig) -> list[str]:
    """Why the watch's processor cannot be loaded and built, if it cannot (a dry run with a throwaway intake)."""
    try:
        build_processor(WatchContext(watch, settings, Intake(settings.settle_seconds), lambda path: None))
    except ConfigError as exc:
        return exc.problems
    return []
