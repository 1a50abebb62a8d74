"""The inotify side: watch each root (and folders still settling inside them), read events, dispatch them
to the processors behind a firewall, report overflows to the intake, and keep track of lost roots (lost by an
inotify event, or by a verdict of roots.py; watched again only after a verdict that it is itself).

Inside a settling folder every directory is watched by the descriptor it was opened with (each step below the
root opened with ``O_NOFOLLOW``), never by a path the kernel would resolve: a symbolic link is never watched nor
entered, so no watch is ever outside a root, even for a moment. Sub-folders created or moved in later are
watched the same way (not pyinotify's auto_add, which follows links), then listed, so that folders made before
their parent's watch existed are watched too."""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyinotify

from sendit_watcher.access import access_fix, readable, whom
from sendit_watcher.config import RootConfig, WatcherConfig
from sendit_watcher.errors import WatchError
from sendit_watcher.intake import Intake
from sendit_watcher.processors import ROOT_LOSS, WatchContext, build_processor
from sendit_watcher.roots import CHECK_EVERY, Verdict
from sendit_watcher.walk import open_directory_beneath, walk_directories

__all__ = ["Watcher", "INSIDE_EVENTS", "INSIDE_WATCH_LIMIT"]

log = logging.getLogger(__name__)

# What a folder that is still being written reports; any of these restarts its quiet period.
INSIDE_EVENTS = (pyinotify.IN_CREATE | pyinotify.IN_MODIFY | pyinotify.IN_CLOSE_WRITE | pyinotify.IN_MOVED_TO
                 | pyinotify.IN_MOVED_FROM | pyinotify.IN_DELETE | pyinotify.IN_ATTRIB)
INSIDE_WATCH_LIMIT = 1000  # directories watched inside one settling folder; the rest settles by stat alone
_INSIDE_MASK = INSIDE_EVENTS | pyinotify.IN_ONLYDIR
_NEW_DIRECTORY = pyinotify.IN_CREATE | pyinotify.IN_MOVED_TO
_HOW_LOST = {pyinotify.IN_MOVE_SELF: "moved away or renamed", pyinotify.IN_DELETE_SELF: "deleted",
             pyinotify.IN_UNMOUNT: "unmounted"}


class _WatchPathChanged(logging.Filter):
    """Drops pyinotify's own ERROR on a watched directory that moved ("The pathname '...-unknown-path' of this
    watch ... has probably changed", with its advice on where to put watches): the watcher says what it means
    for the service in its own line (a root moved away, or a settling folder's sub-folder moved out)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "has probably changed" not in str(record.msg)


logging.getLogger("pyinotify").addFilter(_WatchPathChanged())


class Firewall:
    """Stands between the notifier and one root's processor: detects the loss of the root (whatever the
    processor asked for), passes on the events the processor wants, and logs and counts any exception it
    raises, which never stops the notifier."""

    def __init__(self, processor: Any, name: str, wanted: int, on_root_lost: Callable[[str, Any], None],
                 on_inside_directory: Callable[[Any], None] = lambda event: None) -> None:
        self.processor = processor
        self.name = name
        self.wanted = wanted
        self.root_wd = -1
        self.on_root_lost = on_root_lost
        self.on_inside_directory = on_inside_directory
        self.errors = 0

    def __call__(self, event: Any) -> None:
        try:
            at_root = event.wd == self.root_wd
            if at_root and event.mask & ROOT_LOSS:
                self.on_root_lost(self.name, event)
            if not at_root and event.dir:
                self.on_inside_directory(event)
            if event.mask & self.wanted or not at_root:  # inside watches were asked for on its behalf
                self.processor(event)
        except Exception:  # noqa: BLE001 - the one firewall per event
            self.errors += 1
            log.exception("processor of [watch:%s] failed on %s for %s; carrying on",
                          self.name, getattr(event, "maskname", "?"), getattr(event, "pathname", "?"))


class _OverflowHandler(pyinotify.ProcessEvent):  # type: ignore[misc]
    """Receives events without a watch: IN_Q_OVERFLOW above all."""

    def my_init(self, intake: Intake | None = None, **_: Any) -> None:
        self.intake = intake

    def process_IN_Q_OVERFLOW(self, event: Any) -> None:
        log.warning("inotify queue overflowed: events were lost; reconciling every root with the database")
        assert self.intake is not None
        self.intake.overflow()

    def process_default(self, event: Any) -> None:
        log.debug("event without a watch: %s", event)


@dataclass
class _Root:
    watch: RootConfig
    context: WatchContext
    firewall: Firewall
    mask: int
    # The directory watched (device, inode): a verdict that the root is another one now (a file system mounted on
    # it, a bind mount of the same file system too, a remount) watches it again.
    directory: tuple[int, int] | None = None

    @property
    def wd(self) -> int:
        return self.firewall.root_wd


class Watcher:
    """Owns the WatchManager and Notifier; every change to the watch table goes through its methods."""

    def __init__(self, settings: WatcherConfig, intake: Intake) -> None:
        self.settings = settings
        self.intake = intake
        self.manager = pyinotify.WatchManager()
        self.notifier = pyinotify.Notifier(self.manager, default_proc_fun=_OverflowHandler(intake=intake))
        self.roots: dict[str, _Root] = {}
        self.lost_roots: dict[str, str] = {}  # name -> why
        self._lost_at: dict[str, float] = {}  # when it was lost (monotonic)
        self._itself_at: dict[str, float] = {}  # when the latest check that found it itself began
        self.inside: dict[str, set[int]] = {}  # settling folder's path -> the watches inside it
        self._unwatchable: dict[str, str] = {}  # lost root -> why watching it again failed, as last logged

    def reconfigure(self, settings: WatcherConfig) -> None:
        """New [watcher] settings for every root, watched already or not."""
        self.settings = settings
        for root in self.roots.values():
            root.context.settings = settings

    def add_root(self, watch: RootConfig, *, missing_ok: bool = False) -> str | None:
        """Start watching a root; WatchError says why it cannot be watched. With ``missing_ok``, a root that
        cannot be watched now (it does not exist yet: a mount at boot; it is closed to this process: an unmounted
        mount point, a group not given yet) is lost, and watched once a check finds it itself: the reason is
        returned (None: watched), for the caller to log. A full inotify watch table raises WatchError anyway."""
        context = WatchContext(watch, self.settings, self.intake, self.watch_inside, self.unwatch)
        processor = build_processor(context)
        wanted = watch.events | getattr(processor, "required_events", 0)
        firewall = Firewall(processor, watch.name, wanted, self._root_lost, self._inside_directory)
        root = _Root(watch, context, firewall, wanted | ROOT_LOSS)
        try:
            _check_directory(watch)
        except WatchError as exc:
            if not missing_ok:
                raise
            self.roots[watch.name] = root
            self._lose(watch.name, "missing (it does not exist yet)" if _missing(watch.path) else
                       f"cannot be watched: {exc.reason}")
            self._unwatchable[watch.name] = str(exc)
            if _missing(watch.path):
                return (f"watch root {watch.path} ([watch:{watch.name}]) does not exist (yet); watching it once it "
                        f"appears")
            return f"{exc}; until then it is a lost root"
        self._attach(root)  # a full inotify table is no lost root: WatchError, exit 78 at start
        self.roots[watch.name] = root
        log.info("watching %s as [watch:%s] with %s", watch.path, watch.name, watch.processor)
        return None

    def unwatchable(self) -> dict[str, str]:
        """Why each lost root that exists cannot be watched now (closed to this process, say), by name; for a
        reload to say what it cannot change (a group joined since the start needs a restart)."""
        found = {}
        for name in sorted(self.lost_roots):
            root = self.roots.get(name)
            if root is None or _missing(root.watch.path):
                continue
            try:
                _check_directory(root.watch)
            except WatchError as exc:
                found[name] = str(exc)
        return found

    def _root_lost(self, name: str, event: Any) -> None:
        how = next((how for flag, how in _HOW_LOST.items() if event.mask & flag), "lost")
        log.error("watch root %s ([watch:%s]) is gone: %s (%s); waiting for it to come back at its path",
                  self.roots[name].watch.path, name, how, event.maskname)
        self._lose(name, f"gone ({event.maskname})")

    def _lose(self, name: str, reason: str, at: float | None = None) -> None:
        self.lost_roots[name] = reason
        self._lost_at[name] = time.monotonic() if at is None else at

    def judged(self, verdicts: dict[str, Verdict], checked_at: float) -> None:
        """Verdicts of roots.check on the roots (checks that began at ``checked_at``): one that is not itself is
        lost and no longer watched (its empty mount point must not look like a root emptied); one that is itself
        may be watched again, and is when it is another directory than the one watched (mounted over)."""
        for name, verdict in verdicts.items():
            root = self.roots.get(name)
            if root is None:
                continue
            if not verdict.itself:
                if name not in self.lost_roots:
                    log.debug("watch root %s ([watch:%s]) is not itself (%s); no longer watched until it is "
                              "(roots.check said so once)", root.watch.path, name, verdict.reason)
                    self._detach(root)
                    self._lose(name, verdict.reason or "lost")
                else:
                    self.lost_roots[name] = verdict.reason or self.lost_roots[name]
                continue
            self._itself_at[name] = max(checked_at, self._itself_at.get(name, checked_at))
            attached = name not in self.lost_roots and root.wd >= 0
            now = (verdict.now.device, verdict.now.inode) if verdict.now is not None else None
            if attached and now is not None and root.directory not in (None, now):
                log.warning("watch root %s ([watch:%s]) is another directory now (a file system mounted on it, or "
                            "remounted); watching it again", root.watch.path, name)
                self._lose(name, "remounted", at=checked_at - 1.0)

    def _detach(self, root: _Root) -> None:
        if root.wd >= 0 and self.manager.get_path(root.wd) is not None:
            self.manager.rm_watch(root.wd, quiet=True)
        root.firewall.root_wd = -1

    def _attach(self, root: _Root) -> None:
        path = str(root.watch.path)
        _check_directory(root.watch)
        info = os.stat(path)
        try:
            wds = self.manager.add_watch(path, root.mask, proc_fun=root.firewall, quiet=False)
        except pyinotify.WatchManagerError as exc:
            raise WatchError(_watch_failure(root.watch, exc), _first_error(exc)) from None
        root.firewall.root_wd = wds[path]
        root.directory = (info.st_dev, info.st_ino)

    def remove_root(self, name: str) -> None:
        root = self.roots.pop(name)
        for state in (self.lost_roots, self._lost_at, self._itself_at, self._unwatchable):
            state.pop(name, None)
        if root.wd >= 0 and self.manager.get_path(root.wd) is not None:
            self.manager.rm_watch(root.wd, quiet=True)
        for path in [w.path for w in self.manager.watches.values() if _is_inside(w.path, root.watch.path)]:
            self.unwatch(path)
        log.info("stopped watching %s ([watch:%s])", root.watch.path, name)

    def watch_inside(self, path: str) -> None:
        """Watch a settling folder, the sub-folders it already holds and every sub-folder created or moved into
        it later (up to INSIDE_WATCH_LIMIT), until it is settled."""
        root = self._root_of(path)
        if root is not None:
            self._watch_tree(root, path)

    def _inside_directory(self, event: Any) -> None:
        """A directory appeared in, or left, a watched sub-folder: watch its tree, or stop watching it (a watch
        follows its directory wherever it is moved, out of the root too)."""
        root = self._root_of(event.pathname)
        if event.mask & pyinotify.IN_MOVED_FROM:
            self.unwatch(event.pathname)
        elif event.mask & _NEW_DIRECTORY and root is not None:
            self._watch_tree(root, event.pathname)

    def _watch_tree(self, root: _Root, path: str) -> None:
        """Watch the directory at ``path`` and every directory below it, each by its descriptor."""
        relative = os.path.relpath(path, root.watch.path)
        folder = os.path.join(root.watch.path, relative.split(os.sep, 1)[0])
        try:
            top = open_directory_beneath(str(root.watch.path), relative)
        except (OSError, UnicodeError) as exc:  # gone again, or a symbolic link now: nothing to watch
            log.debug("not watching %s: %s", path, _first_error(exc))
            return
        try:
            if self._watch_directory(root, folder, path, top):
                for below, fd in walk_directories(top):
                    if not self._watch_directory(root, folder, os.path.join(path, below), fd):
                        break
        except (pyinotify.WatchManagerError, OSError, UnicodeError) as exc:
            # The folder still settles by stat; only the early wake-ups are lost.
            log.warning("cannot watch inside %s (%s); it settles by stat alone", path, _first_error(exc))
        finally:
            os.close(top)

    def _watch_directory(self, root: _Root, folder: str, path: str, fd: int) -> bool:
        """Watch the directory open as ``fd`` (the kernel resolves /proc/self/fd/N to exactly that directory),
        named ``path`` in the events; False once ``folder`` holds INSIDE_WATCH_LIMIT watches."""
        watched = self.inside.setdefault(folder, set())
        if len(watched) >= INSIDE_WATCH_LIMIT:
            log.warning("%s holds more than %d folders; the rest settles by stat alone", folder, INSIDE_WATCH_LIMIT)
            return False
        by_descriptor = f"/proc/self/fd/{fd}"
        wd = self.manager.add_watch(by_descriptor, _INSIDE_MASK, proc_fun=root.firewall, quiet=False)[by_descriptor]
        self.manager.watches[wd].path = path  # what pyinotify names its events by
        watched.add(wd)
        return True

    def unwatch(self, path: str) -> None:
        """Stop watching a folder and its subtree (EINVAL from watches the kernel already dropped is fine).

        The descriptors are listed first: pyinotify's own recursive removal edits its watch table while it
        iterates over it, which raises as soon as a folder has sub-folders."""
        inside = path + os.sep
        wds = [wd for wd, watch in self.manager.watches.items() if watch.path == path or watch.path.startswith(inside)]
        if wds:
            self.manager.rm_watch(wds, quiet=True)
        for folder in [f for f in self.inside if f == path or f.startswith(inside)]:
            del self.inside[folder]
        for watched in self.inside.values():
            watched.difference_update(wds)

    def path_of(self, folder: tuple[str, str]) -> str | None:
        """The folder's path on disk; None when its root is no longer watched."""
        root = self.roots.get(folder[0])
        return None if root is None else os.path.join(root.watch.path, folder[1])

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for events and dispatch them."""
        if not self.notifier.check_events(max(0, int(timeout * 1000))):
            return
        try:
            self.notifier.read_events()
        except Exception:  # noqa: BLE001 - e.g. a name that is not UTF-8; events of that read are lost
            log.exception("could not decode inotify events; reconciling every root with the database")
            self.intake.overflow()
        try:
            self.notifier.process_events()
        except Exception:  # noqa: BLE001 - pyinotify's own bookkeeping failed on one event
            log.exception("pyinotify failed to process an event; carrying on")

    def rewatch_lost_roots(self) -> list[str]:
        """Watch again every lost root that a check begun after its loss found itself; returns their names."""
        back = []
        for name in sorted(self.lost_roots):
            root = self.roots.get(name)
            if root is None:
                del self.lost_roots[name]
                continue
            if self._itself_at.get(name, -1.0) <= self._lost_at.get(name, 0.0):
                continue
            self._detach(root)
            try:
                self._attach(root)
            except WatchError as exc:  # itself, yet not watchable (the inotify table full): said once
                if self._unwatchable.get(name) != str(exc):
                    log.error("%s; trying again every %.0f s", exc, CHECK_EVERY)
                    self._unwatchable[name] = str(exc)
                continue
            self._unwatchable.pop(name, None)
            del self.lost_roots[name]
            log.debug("watch root %s ([watch:%s]) watched again (roots.check said it is back)", root.watch.path, name)
            back.append(name)
        return back

    def close(self) -> None:
        self.notifier.stop()

    def _root_of(self, path: str) -> _Root | None:
        return next((r for r in self.roots.values() if _is_inside(path, r.watch.path)), None)


def _is_inside(path: str, root: Any) -> bool:
    return path.startswith(str(root) + os.sep)


def _missing(path: Any) -> bool:
    """Nothing at ``path`` (not: a path this process may not look at, which is no reason to wait for it)."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


def _check_directory(watch: RootConfig) -> None:
    where = f"[watch:{watch.name}] path {watch.path}"
    then = "it is watched within seconds"
    try:
        mode = os.stat(watch.path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise WatchError(f"{where} does not exist; create it or fix the path in the configuration",
                         "it does not exist") from None
    except PermissionError:
        raise WatchError(f"{where} cannot be reached: a directory above it is closed to this process "
                         f"({whom()}); {access_fix(watch.path, then)}",
                         f"a directory above it is closed to {whom()}") from None
    if not stat.S_ISDIR(mode):
        raise WatchError(f"{where} is not a directory", "not a directory")
    if not readable(watch.path):
        raise WatchError(f"{where} is not readable by this process ({whom()}); {access_fix(watch.path, then)}",
                         f"not readable by {whom()}")


def _first_error(exc: Any) -> str:
    """The first line of an error's text, uncut (its class name when it has none). Not errors.one_line, which
    stops at 500 characters and collapses whitespace: pyinotify's text is "add_watch: cannot watch PATH WD=-1,
    Errno=...", and the errno that _watch_failure's hints look for comes after PATH, however long it is."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _watch_failure(watch: RootConfig, exc: Any) -> str:
    text = _first_error(exc)
    hint = ""
    if "No space left" in text or "ENOSPC" in text:
        hint = "; the inotify watch table is full: raise fs.inotify.max_user_watches (sysctl)"
    elif "Permission denied" in text:
        hint = f"; {access_fix(watch.path, 'it is watched within seconds')}"
    return f"cannot watch [watch:{watch.name}] path {watch.path}: {text}{hint}"
