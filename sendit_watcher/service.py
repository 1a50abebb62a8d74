"""The service lifecycle (``sendit-watcher run``): watches in place, workers started, READY, the main loop,
reload on SIGHUP, a bounded drain on SIGTERM. Signal handlers only enqueue; the loop acts and logs.

If PostgreSQL does not answer at start the service still goes READY once every watch is in place, says
"waiting for database: ..." in STATUS, keeps every noticed folder in memory and retries; when the database
answers it queues them and runs a catch-up scan, so nothing is lost even across a restart.
"""

from __future__ import annotations

import collections
import logging
import signal
import time
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from types import FrameType

import psycopg

from sendit_watcher import batches, roots
from sendit_watcher import config as configuration
from sendit_watcher.catchup import Scanner, ScanResult
from sendit_watcher.config import Config, redact_dsn
from sendit_watcher.db import Connection, connect
from sendit_watcher.errors import EXIT_OK, EXIT_SOFTWARE, ConfigError, DatabaseUnavailable, SenditError, describe
from sendit_watcher.intake import Folder, Intake
from sendit_watcher.logs import MESSAGE_ROOT_LOST
from sendit_watcher.migrate import migrate, pending
from sendit_watcher.names import to_text
from sendit_watcher.outage import Outage
from sendit_watcher.processors import check_processor
from sendit_watcher.roots import Verdict
from sendit_watcher.sdnotify import SdNotifier
from sendit_watcher.supervisor import Supervisor
from sendit_watcher.walk import change_stamp
from sendit_watcher.watcher import Watcher

__all__ = ["serve", "Service"]

log = logging.getLogger(__name__)

_TICK = 0.2  # longest sleep of the loop: signals, watchdog and timers are served at least this often
_STATUS_EVERY = 2.0
_FIRST_CHECK_SECONDS = 5.0  # how long READY waits for the first verdict on the roots


class SignalQueue:
    """Signal handlers that only record the signal; the main loop drains them."""

    def __init__(self) -> None:
        self.received: collections.deque[int] = collections.deque()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)

    def drain(self) -> list[int]:
        drained = list(self.received)
        self.received.clear()
        return drained


class ReloadRefused(Exception):
    """A reload that cannot be applied whole: the running configuration is kept."""


class Guard:
    """Runs one step of the main loop: an exception is logged (at most once a minute per step, with a count of
    the repeats) and the loop carries on."""

    EVERY = 60.0

    def __init__(self) -> None:
        self.errors = 0
        self._last: dict[str, tuple[float, int]] = {}

    def call(self, what: str, step: Callable[..., object], *args: object) -> None:
        try:
            step(*args)
        except Exception:  # noqa: BLE001 - the firewall of the main loop
            self.failed(what)

    def failed(self, what: str) -> None:
        """Count and log the exception being handled."""
        self.errors += 1
        logged, repeats = self._last.get(what, (-self.EVERY, 0))
        if time.monotonic() - logged < self.EVERY:
            self._last[what] = (logged, repeats + 1)
            return
        self._last[what] = (time.monotonic(), 0)
        again = f" (and {repeats} more times since the last report)" if repeats else ""
        log.error("%s failed%s; carrying on", what, again, exc_info=True)


class DatabaseLink:
    """The main loop's connection: opened lazily, dropped on failure, retried with back-off."""

    def __init__(self, config: Config, notify: SdNotifier) -> None:
        self.config = config
        self.notify = notify
        self.conn: Connection | None = None
        self.error: str | None = None
        self.outage = Outage(log)
        self.next_attempt = 0.0
        self.reconnected = False

    def reconfigure(self, config: Config, switched: Connection | None = None) -> None:
        """The new [database] settings. ``switched``: a connection to the new database (a reload checked that it
        answers and is migrated), which replaces the old one at once, so that nothing more is queued there."""
        if switched is not None:
            left = self._queued_here()
            self.close()
            self.conn, self.error, self.reconnected = switched, None, True  # a catch-up scan of the new one
            self.outage.back()
            log.warning("reload: the service now uses database %s, schema %s (workers, queue and catch-up)%s",
                        redact_dsn(config.database.dsn) or "of libpq's defaults", config.database.schema,
                        f"; {left} batch(es) still queued in the old one stay there, their folders are queued in the"
                        f" new one by the catch-up scan" if left else "")
        self.config = config

    def _queued_here(self) -> int:
        """Batches queued in the database this link is connected to (0 when it is not)."""
        if self.conn is None or self.conn.closed:
            return 0
        try:
            return batches.queue_counts(self.conn).queued
        except psycopg.Error:
            return 0

    def get(self) -> Connection | None:
        """The live connection, or None while the database is unreachable."""
        if self.conn is not None and not self.conn.closed:
            return self.conn
        if time.monotonic() < self.next_attempt:
            return None
        try:
            conn = connect(self.config.database, application="sendit-watcher watcher")
            if self.config.database.migrate_on_start:
                with self.notify.extending():  # at start or on a reconnect: systemd waits, the watchdog is fed
                    migrate(conn, self.config.database.schema)
        except (DatabaseUnavailable, psycopg.Error) as exc:
            self.failed(exc)
            return None
        self.outage.back()
        self.conn, self.error, self.reconnected = conn, None, True
        return conn

    def failed(self, exc: BaseException) -> None:
        self.error = describe(exc)
        self.outage.failed(self.error, self.config.database.retry_interval)
        self.next_attempt = time.monotonic() + self.config.database.retry_interval
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class RootChecks:
    """Each root's verdict (roots.check), taken off the main loop (a stat may block on a dead NFS server) on a
    connection of its own; without a database there is no verdict (nothing is removed without one either)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.conn: Connection | None = None
        self.switched = False  # a reload moved to another database: reconnect at the next check

    def reconfigure(self, config: Config, switched: bool) -> None:
        """The new settings from the next check on (which runs in the pool's thread: it closes the old
        connection itself when the database changed)."""
        self.config = config
        self.switched = self.switched or switched

    def run(self) -> tuple[float, dict[str, Verdict]]:
        """(when the checks began, the verdict on each configured root)."""
        began = time.monotonic()
        config = self.config
        if self.switched:
            self.switched = False
            self.close()
        try:
            if self.conn is None or self.conn.closed:
                self.conn = connect(config.database, application="sendit-watcher root check")
            return began, {w.name: roots.check(self.conn, config.watcher.host_name, w) for w in config.watches}
        except (DatabaseUnavailable, psycopg.Error) as exc:
            log.debug("root check without a database: %s", describe(exc))
            self.close()
            return began, {}

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Service:
    """One running watcher: its intake, watcher, workers, database link and timers."""

    def __init__(self, config: Config, notifier: SdNotifier | None = None) -> None:
        self.config = config
        self.notify = notifier or SdNotifier()
        self.intake = Intake(config.watcher.settle_seconds, linger_seconds=config.watcher.linger_seconds,
                             linger_folders=config.watcher.linger_folders)
        self.watcher = Watcher(config.watcher, self.intake)
        self.link = DatabaseLink(config, self.notify)
        self.workers = Supervisor(config)
        self.scanner = Scanner()
        self.guard = Guard()
        self.stat_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="settle-check")
        self.settle_checks: dict[Folder, Future[str | None]] = {}
        self.root_checks = RootChecks(config)
        self.root_check: Future[tuple[float, dict[str, Verdict]]] | None = None
        self.next_root_check = 0.0
        self.verdicts: dict[str, Verdict] = {}  # the latest verdict on each root
        self.last_scan = 0.0
        self.scan_failures = 0
        self.scan_not_before = 0.0  # back-off after a failed catch-up scan
        self.scans_absorbed = 0
        self.unseen_last = 0  # the folders the last catch-up found missing but never seen here
        self.last_status = 0.0
        self.stopping = False

    def start(self) -> None:
        """Watch every root, reach for the database once, start the workers, then READY=1."""
        if self.config.watcher.runs_watcher:
            for watch in self.config.watches:  # one that cannot be watched yet is lost, and picked up later
                problem = self.watcher.add_root(watch, missing_ok=True)
                if problem:
                    log.error("%s", problem)
        conn = self.link.get()  # the first connection runs the migrations, however long they take
        self.guard.call("checking the roots at start", self._first_root_check, conn)
        if self.config.watcher.runs_workers:
            self.workers.start()
        status = self.status_line()
        self.notify.ready(status)
        log.info("ready: %s", status)

    def _first_root_check(self, conn: Connection | None) -> None:
        """The first verdict on each root before READY (waited for up to _FIRST_CHECK_SECONDS: a dead NFS server's
        is left to the loop), so that READY and the log say a lost root. One lost already before this start (by
        the record) is not news to roots.check, which logs a loss once: it is said here, once, at start."""
        host = self.config.watcher.host_name
        try:
            before = {r.root: r for r in (roots.records(conn) if conn is not None else []) if r.host == host}
        except psycopg.Error as exc:
            self.link.failed(exc)
            before = {}
        self.next_root_check = time.monotonic() + roots.CHECK_EVERY
        self.root_check = check = self.stat_pool.submit(self.root_checks.run)
        futures.wait([check], timeout=_FIRST_CHECK_SECONDS)
        if not check.done():
            return
        self.root_check = None
        checked_at, verdicts = check.result()
        self._judged(checked_at, verdicts)
        for watch in self.config.watches:
            verdict, record = verdicts.get(watch.name), before.get(watch.name)
            if verdict is None or verdict.itself or record is None or record.lost_reason != verdict.reason:
                continue  # itself, not judged, or lost just now: roots.check said so
            since = f" since {record.lost_since:%Y-%m-%d %H:%M:%S %Z}" if record.lost_since else ""
            fix = verdict.fix or f"after a deliberate change: sendit-watcher adopt-root {watch.name}"
            log.error("watch root %s ([watch:%s]) on host %s is still lost: %s (lost%s); none of its rows is removed "
                      "and its batches wait until it is back (%s)", watch.path, watch.name, host, verdict.reason,
                      since, fix, extra={"MESSAGE_ID": MESSAGE_ROOT_LOST})

    def run(self) -> int:
        """The main loop until SIGTERM/SIGINT; a loop that dies anyway stops the service with EXIT_SOFTWARE, so
        systemd restarts it, rather than leaving it half alive."""
        signals = SignalQueue()
        self.start()
        try:
            while not self.stopping:
                self.guard.call("reading inotify events", self.watcher.poll, self._timeout())
                for signum in signals.drain():
                    self.guard.call("handling a signal", self._on_signal, signum)
                if not self.stopping:
                    self.turn()
        except BaseException as exc:  # noqa: BLE001 - the loop itself failed: end the process, never hang
            log.critical("the main loop died (%s); stopping so that the service manager restarts it",
                         type(exc).__name__, exc_info=True)
            try:
                self.stop()
            except BaseException:  # noqa: BLE001 - whatever happens, no worker may keep the process alive
                log.exception("stopping in order failed; killing the workers")
                self.workers.stop(0.0)
            return EXIT_SOFTWARE
        return self.stop()

    def turn(self) -> None:
        """One pass of timed work between event batches; each step behind the guard, so the worst a step can
        do is log and be retried at the next turn."""
        self.guard.call("checking settling folders", self._settle)
        self.guard.call("queueing finished folders", self._flush)
        self.guard.call("the catch-up scan", self._catch_up)
        self.guard.call("watching lost roots again", self._rewatch)
        self.guard.call("supervising the workers", self._supervise)
        self.notify.watchdog()
        if time.monotonic() - self.last_status >= _STATUS_EVERY:
            self.last_status = time.monotonic()
            self.guard.call("sending STATUS", lambda: self.notify.status(self.status_line()))

    def _supervise(self) -> None:
        """Replace dead workers, and mark the import each one had started as died (batches.record_death), so a
        folder that kills its workers is failed after DEATHS_LIMIT deaths; a stop never marks one."""
        died = self.workers.supervise()
        conn = self.link.get() if died else None
        if conn is None:
            return
        for pid, how in died:
            try:
                batches.record_death(conn, self.config.watcher.host_name, pid, how)
            except psycopg.Error as exc:
                self.link.failed(exc)
                return

    def _settle(self) -> None:
        """Start a look (a stat walk, off the main loop) at each folder due for one; act on settled ones."""
        for folder in self.intake.due_to_check():
            path = self.watcher.path_of(folder)
            if path is None:
                self.intake.forget(folder)
            else:
                self.settle_checks[folder] = self.stat_pool.submit(change_stamp, path)
        for folder, check in list(self.settle_checks.items()):
            if not check.done():
                continue
            del self.settle_checks[folder]
            try:
                stamp = check.result()
            except Exception:  # noqa: BLE001 - counted as a change now (a stamp no look gives): looked at again
                self.guard.failed(f"checking {to_text(folder[1])}")
                stamp = f"failed {time.monotonic_ns()}"
            if self.intake.checked(folder, stamp):
                self.intake.finished(folder, self.intake.scan_time(folder))  # a young one a scan found: its time
                self._stop_watching(self.intake.linger(folder))  # late files keep coming to a lingering one
        self._stop_watching(self.intake.linger_over())

    def _stop_watching(self, folders: list[Folder]) -> None:
        for folder in folders:
            path = self.watcher.path_of(folder)
            if path is not None:
                self.watcher.unwatch(path)

    def _rewatch(self) -> None:
        """Check every roots.CHECK_EVERY seconds that each root is itself; watch again a lost root found itself."""
        if self.root_check is not None and self.root_check.done():
            check, self.root_check = self.root_check, None
            self._judged(*check.result())
        if self.root_check is None and time.monotonic() >= self.next_root_check:
            self.next_root_check = time.monotonic() + roots.CHECK_EVERY
            self.root_check = self.stat_pool.submit(self.root_checks.run)
        if self.watcher.lost_roots and self.watcher.rewatch_lost_roots():
            self.intake.overflow()  # what happened while it was gone is found by a catch-up scan

    def _judged(self, checked_at: float, verdicts: dict[str, Verdict]) -> None:
        self.verdicts.update(verdicts)
        if self.config.watcher.runs_watcher:
            self.watcher.judged(verdicts, checked_at)

    def _timeout(self) -> float:
        deadline = self.intake.next_deadline()
        wait = _TICK if deadline is None else deadline - time.monotonic()
        return min(_TICK, max(0.0, wait))

    def _flush(self) -> None:
        """Queue every finished folder, and every vanished one that was recorded (so that a worker removes its
        rows); on a database error keep them and back off."""
        host = self.config.watcher.host_name
        for folder in self.intake.due_gone():  # held back: a folder renamed back by then is the same folder
            hold = self.config.watcher.settle_seconds if self.intake.hold_removal(folder) else 0.0
            self._queue(folder, partial(batches.enqueue_known, hold_seconds=hold, host=host),
                        self.intake.gone_recorded, self.intake.gone_later)
        for folder in self.intake.due_for_enqueue():
            enqueue = partial(batches.enqueue, scan_began=self.intake.scan_time(folder), host=host)
            self._queue(folder, enqueue, self.intake.enqueued, self.intake.retry_later)

    def _queue(self, folder: Folder, enqueue: Callable[[Connection, str, str], int | None],
               done: Callable[[Folder], None], later: Callable[[Folder], None]) -> None:
        """One folder's batch row through ``enqueue``; without a database, on an error, or while a worker holds
        the row (``enqueue`` says None), the folder is kept and tried again later."""
        conn = self.link.get()
        if conn is None:
            later(folder)
            return
        try:
            batch_id = enqueue(conn, folder[0], to_text(folder[1]))
        except psycopg.Error as exc:
            self.link.failed(exc)
            batch_id = None
        except Exception:  # noqa: BLE001 - kept and retried with back-off; never lost, never fatal
            self.guard.failed(f"queueing {folder[0]}:{to_text(folder[1])}")
            batch_id = None
        if batch_id is None:
            later(folder)
        else:
            log.debug("queued %s:%s as batch %d", folder[0], to_text(folder[1]), batch_id)
            done(folder)

    def _catch_up(self) -> None:
        result = self.scanner.collect()
        if result is not None:
            self._absorb(result)
        interval = self.config.watcher.rescan_interval
        due = self.intake.rescan_requested or self.link.reconnected or (
            interval > 0 and time.monotonic() - self.last_scan >= interval)
        due = due and time.monotonic() >= self.scan_not_before
        if due and self.config.watcher.runs_watcher and not self.scanner.running and self.link.get() is not None:
            self.link.reconnected = False
            skip = self.intake.scan_started()
            self.last_scan = time.monotonic()
            watches = {name: root.watch for name, root in self.watcher.roots.items()  # never a lost one: its
                       if name not in self.watcher.lost_roots}  # mount point would look like a root emptied
            self.scanner.start(self.config.database, watches, self.config.watcher.host_name,
                               self.config.watcher.is_ignored, self.config.watcher.settle_seconds, skip)

    def _absorb(self, result: ScanResult) -> None:
        if result.error is not None:
            self.scan_failures += 1
            wait = min(300.0, 2.0 ** self.scan_failures)
            self.scan_not_before = time.monotonic() + wait
            log.error("catch-up scan failed: %s; retrying in %.0f s", result.error, wait)
            self.intake.overflow()
            return
        self.scan_failures = 0
        self.scans_absorbed += 1
        if result.lost:  # not itself when the scan came to it: not scanned, nothing of it gone
            self._judged(time.monotonic(), result.lost)
        for folder in result.changed:
            self.intake.finished(folder, result.scan_began(folder))
        for folder in result.gone:
            self.intake.vanished(folder)
        for folder in result.young:
            self.intake.young(folder, result.scan_began(folder))
        for folder in result.young + result.waiting:  # still being written: watched inside, like a new one
            path = self.watcher.path_of(folder)
            if path is not None:
                self.watcher.watch_inside(path)
        news = (result.changed or result.young or result.gone or self.scans_absorbed == 1  # the one at start: its cost
                or result.unseen != self.unseen_last)
        self.unseen_last = result.unseen
        unseen = (f"; {result.unseen} missing here that this host never saw (left to the hosts that saw them)"
                  if result.unseen else "")
        log.log(logging.INFO if news else logging.DEBUG,  # a later scan that found nothing is no news
                "catch-up scan: %d folders in %.2f s; %d to import, %d still being written, %d gone%s",
                result.folders, result.seconds, len(result.changed), len(result.young), len(result.gone), unseen)

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self.reload()
        else:
            log.info("%s received: stopping", signal.Signals(signum).name)
            self.stopping = True

    def reload(self) -> None:
        """Re-read the configuration file and apply all of it to every part (watches, intake, the main loop's
        database link, workers, catch-up), or none of it: a file with errors, a change of role, or a new
        database that does not answer or is not migrated keeps the running configuration, with a log line."""
        self.notify.reloading()
        try:
            new, switched = self._checked_reload()
        except ReloadRefused as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            self.notify.ready(self.status_line())
            return
        try:
            self._apply(new, switched)
        finally:  # whatever happened, systemd hears that the reload is over
            self.notify.ready(self.status_line())
        log.info("reloaded %s: %s", new.source, self.status_line())

    def _checked_reload(self) -> tuple[Config, Connection | None]:
        """The new configuration, and a connection to its database when that changed; ReloadRefused when any
        of it cannot be applied."""
        if self.config.source is None:
            return self.config, None
        try:
            new = configuration.load(str(self.config.source))
        except ConfigError as exc:
            raise ReloadRefused("; ".join(exc.problems)) from None
        problems = [f"[watch:{w.name}] processor: {p}" for w in new.watches for p in check_processor(w, new.watcher)]
        if problems:
            raise ReloadRefused("; ".join(problems))
        if new.watcher.role != self.config.watcher.role:  # the workers and the watches are started by role
            raise ReloadRefused(f"role {self.config.watcher.role} -> {new.watcher.role} needs a restart "
                                f"(systemctl restart sendit-watcher)")
        return new, self._new_database(new)

    def _new_database(self, new: Config) -> Connection | None:
        """A connection to the reloaded file's database when it is another one (dsn or schema), once it answers
        and is migrated (migrated here when migrate_on_start is on); None when the database is the same."""
        old, wanted = self.config.database, new.database
        if (wanted.dsn, wanted.schema) == (old.dsn, old.schema):
            return None
        where = f"database {redact_dsn(wanted.dsn) or 'of libpq defaults'}, schema {wanted.schema}"
        try:
            conn = connect(wanted, application="sendit-watcher watcher")
        except DatabaseUnavailable as exc:
            raise ReloadRefused(f"the new {where} does not answer: {exc}") from None
        try:
            if wanted.migrate_on_start:
                log.info("reload: migrating the new %s before using it", where)
                with self.notify.extending():
                    migrate(conn, wanted.schema)
            else:
                missing = pending(conn, wanted.schema)
                if missing:
                    raise ReloadRefused(
                        f"the new {where} lacks {len(missing)} schema migration(s) (from "
                        f"{missing[0].version:04d}_{missing[0].name}) and migrate_on_start is off: run "
                        f"`sendit-watcher migrate` with the new file first")
        except psycopg.Error as exc:
            conn.close()
            raise ReloadRefused(f"the new {where} failed: {describe(exc)}") from None
        except ReloadRefused:
            conn.close()
            raise
        return conn

    def _apply(self, new: Config, switched: Connection | None) -> None:
        old = {w.name: w for w in self.config.watches}
        wanted = {w.name: w for w in new.watches}
        self.config = new
        self.intake.reconfigure(new.watcher.settle_seconds, new.watcher.linger_seconds, new.watcher.linger_folders)
        self.watcher.reconfigure(new.watcher)
        self.link.reconfigure(new, switched)
        self.root_checks.reconfigure(new, switched is not None)
        if new.watcher.runs_workers:
            self.workers.replace(new)  # workers resolve root names, and connect, with the new file
        if not new.watcher.runs_watcher:
            return
        for name in [n for n in old if old[n] != wanted.get(n)]:
            self.watcher.remove_root(name)
            self.intake.forget_root(name)
        problems = {}
        for name in [n for n in wanted if old.get(n) != wanted[n]]:
            try:
                problems[name] = self.watcher.add_root(wanted[name], missing_ok=True)
            except SenditError as exc:
                problems[name] = str(exc)
        problems.update(self.watcher.unwatchable())  # a reload cannot give it access (a group joined: a restart)
        for problem in filter(None, problems.values()):
            log.error("reload: %s", problem)
        self.intake.overflow()

    def stop(self) -> int:
        """STOPPING=1, then a bounded drain: a folder in hand commits or rolls back whole."""
        self.notify.stopping(f"stopping: letting in-flight folders finish (up to "
                             f"{self.config.watcher.drain_seconds:.0f} s)")
        self.guard.call("queueing finished folders", self._flush)
        with self.notify.extending():  # systemd waits for the drain, however long drain_seconds is
            killed = self.workers.stop(self.config.watcher.drain_seconds)
        self.stat_pool.shutdown(wait=False, cancel_futures=True)
        self.watcher.close()
        self.link.close()
        if self.root_check is None or self.root_check.done():  # else its thread still uses the connection
            self.root_checks.close()
        log.info("stopped%s", f"; {killed} worker(s) stopped after the drain period, their folders rolled back"
                 if killed else "")
        return EXIT_OK

    def status_line(self) -> str:
        """The one-line truth for STATUS=."""
        roots = ", ".join(str(r.watch.path) for r in self.watcher.roots.values()) or "nothing"
        parts = [f"watching {roots}" if self.config.watcher.runs_watcher else
                 f"worker only ({self.config.importing.worker_count} on {self.config.watcher.host_name})"]
        lost = self.lost_roots()
        if lost:
            parts.append("LOST ROOT " + ", ".join(f"{name} ({why})" for name, why in sorted(lost.items()))
                         + " (waiting for it; nothing of it is removed)")
        if self.intake.pending:
            parts.append(f"{self.intake.pending:,} settling")
        conn = self.link.get()
        if conn is None:
            return f"waiting for database: {self.link.error}; " + "; ".join(parts)
        try:
            counts = batches.queue_counts(conn)
        except psycopg.Error as exc:
            self.link.failed(exc)
            return f"waiting for database: {self.link.error}; " + "; ".join(parts)
        parts += [f"{counts.queued:,} queued", f"{counts.finished:,} folders imported"]
        if counts.failed:
            parts.append(f"{counts.failed:,} failed")
        if counts.seconds_since_last is not None:
            parts.append(f"last {_ago(counts.seconds_since_last)}")
        return "; ".join(parts)


    def lost_roots(self) -> dict[str, str]:
        """Each lost root of this host and why: lost to the watcher (an event), or by the latest verdict."""
        configured = {watch.name for watch in self.config.watches}
        lost = {name: why for name, why in self.watcher.lost_roots.items() if name in configured}
        lost.update((name, v.reason or "lost") for name, v in self.verdicts.items()
                    if not v.itself and name in configured)
        return lost


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{max(0, seconds):.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def serve(config: Config, *, demo: bool = False) -> int:
    """Run the service until SIGTERM/SIGINT; returns the exit code."""
    if not config.watches:
        where = config.source or configuration.DEFAULT_CONFIG_PATH
        raise ConfigError([f"{where}: no [watch:NAME] section; add one with path = /the/incoming/directory"])
    service = Service(config)
    if demo:
        from sendit_watcher.demo import start_demo

        start_demo(config.watches[0].path)
    return service.run()
