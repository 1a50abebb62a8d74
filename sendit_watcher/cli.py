"""The ``sendit-watcher`` command line: parses arguments and wires the modules together, nothing more."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from types import FrameType
from typing import NoReturn

import psycopg

from sendit_watcher import __version__, batches, handoff, metrics, privileges, report, roots, status
from sendit_watcher import config as configuration
from sendit_watcher.batch_import import Failure, FolderPool, Outcome, import_batch
from sendit_watcher.config import Config
from sendit_watcher.db import Connection, connect
from sendit_watcher.errors import (
    EXIT_CODES,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOFTWARE,
    EXIT_USAGE,
    ConfigError,
    DatabaseUnavailable,
    SenditError,
    describe,
)
from sendit_watcher.logs import setup as setup_logging
from sendit_watcher.migrate import migrate, pending
from sendit_watcher.parsers import PoolParser

__all__ = ["main", "build_parser"]

log = logging.getLogger(__name__)

def _epilog() -> str:
    """The exit codes (errors.EXIT_CODES) and where the configuration is, below every command's --help."""
    codes = "\n".join(textwrap.fill(text, 100, initial_indent=f"  {code:<4}", subsequent_indent=" " * 6)
                      for code, text in EXIT_CODES.items())
    return (f"exit codes:\n{codes}\n\nconfiguration: --config PATH, else ${configuration.CONFIG_ENV}, else "
            f"{configuration.DEFAULT_CONFIG_PATH}.\ntyped by root, every command but run runs as user sendit-watcher "
            f"(${privileges.USER_VARIABLE}; empty, or --as-root: root).\nSee sendit-watcher(8) for every option.")


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line exits 64 (EX_USAGE) as documented, not 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = _Parser(
        prog="sendit-watcher", epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Watch incoming directories and import finished DICOM folders into PostgreSQL.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", metavar="PATH",
                        help=f"configuration file (INI); default ${configuration.CONFIG_ENV}, else "
                             f"{configuration.DEFAULT_CONFIG_PATH}")
    parser.add_argument("--dsn", help="PostgreSQL conninfo or URI; overrides [database] dsn")
    parser.add_argument("--log-level", choices=configuration.LOG_LEVELS,
                        help="log level; default [watcher] log_level for run, warning for other commands")
    parser.add_argument("--as-root", action="store_true",
                        help="typed by root, stay root (by default a command but run switches to the service's user "
                             "sendit-watcher, or $SENDIT_WATCHER_USER, to reach the database as the service does)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add(commands, "run", "run the watcher service in the foreground (what systemd starts)", _add_run_options)
    _add(commands, "import", "import folders now, each as one batch", _add_import_options)
    _add(commands, "status", "show recent batches and totals", _add_status_options)
    _add(commands, "rejected", "list rejected files with their reasons, of one folder or of all",
         _add_rejected_options)
    _add(commands, "listen", "print each finished batch as a JSON line, in commit order, as it happens",
         _add_listen_options)
    _add(commands, "retry", "queue failed batches again (every failed batch when no id is given)",
         _add_retry_options)
    _add(commands, "metrics", "print Prometheus text-format metrics", _add_metrics_options)
    _add(commands, "adopt-root", "accept a watch root as it is now on this host, after a deliberate change "
         "(a new share, a root moved)", _add_adopt_options)
    _add(commands, "migrate", "create or upgrade the database schema", None)
    _add(commands, "check-config", "validate the configuration and print it (passwords hidden)",
         _add_check_options)
    return parser


def _add(commands: argparse._SubParsersAction[_Parser], name: str, help_text: str,
         options: Callable[[argparse.ArgumentParser], None] | None) -> None:
    sub = commands.add_parser(name, help=help_text, description=help_text, epilog=_epilog(),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    if options is not None:
        options(sub)


def _add_run_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--demo", action="store_true",
                     help="also drop sample DICOM folders into the first watch root through .tmp renames")


def _add_import_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("folders", nargs="+", metavar="FOLDER", type=Path, help="folder to import with its subtree")
    sub.add_argument("--json", action="store_true", help="print one JSON object per folder instead of a summary")
    sub.add_argument("--processes", type=int, metavar="N", help="parse with N processes ([import] parse_processes)")
    sub.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    sub.add_argument("--force", action="store_true",
                     help="read every file again, also those recorded unchanged since the last import")


def _add_listen_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--since", type=int, metavar="SEQ",
                     help="first replay every batch finished after SEQ (the 'seq' of the last line you handled); "
                          "default: only batches finishing from now on")
    sub.add_argument("--count", type=int, metavar="N", help="exit after N lines")


def _add_retry_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("batch_ids", nargs="*", type=int, metavar="BATCH",
                     help="id of a failed batch; none: every failed batch")


def _add_metrics_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--textfile", type=Path, metavar="PATH",
                     help="write to PATH atomically (node_exporter textfile collector) instead of stdout")


def _add_check_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--reload", action="store_true",
                     help="the check `systemctl reload` runs before it signals the service (ExecReload): a missing "
                          "root is only a warning (the service reports it lost until it appears), and the database "
                          "must answer and be migrated, or be migrated by the service (migrate_on_start)")


def _add_adopt_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("root", metavar="NAME", help="the watch root's name (its [watch:NAME] section)")
    sub.add_argument("--force", action="store_true",
                     help="adopt it even where it looks like a share not mounted (a mount point at first sight, not "
                          "one now; or none of the folders imported last here): their rows go")


def _add_status_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sub.add_argument("--limit", type=int, default=20, metavar="N", help="show the N most recent batches (20)")
    sub.add_argument("--failed", action="store_true", help="show every failed batch and its error, not the recent ones")


def _add_rejected_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("folder", nargs="?", metavar="FOLDER",
                     help="a folder (its path, or ROOT:FOLDER as status shows it); default: every folder")
    sub.add_argument("--json", action="store_true", help="print JSON instead of a table")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    code = EXIT_SOFTWARE
    try:
        code = _main(args)
    finally:  # a metrics textfile not filled by this run (a broken file, a database not read, a bug) says up 0
        if code != EXIT_OK and args.command == "metrics" and args.textfile is not None:
            metrics.write_textfile(args.textfile, metrics.render_down())  # no stale count passes for a current one
    return code


def _main(args: argparse.Namespace) -> int:
    try:
        config = configuration.load(args.config, dsn=args.dsn)
        setup_logging(args.log_level or (config.watcher.log_level if args.command == "run" else "warning"))
        _switch_user(args)
        code = int(_COMMANDS[args.command](config, args))
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except BrokenPipeError:  # `status | head`: the reader has what it wanted; the rest goes nowhere, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # as Python's signal docs recommend
        return EXIT_OK
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"sendit-watcher: {problem}", file=sys.stderr)
        return exc.exit_code
    except SenditError as exc:
        print(f"sendit-watcher: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _switch_user(args: argparse.Namespace) -> None:
    """Typed by root, become the service's user (privileges.py), after the configuration was read as root. A
    ``metrics --textfile`` stays root to write the file and reads the database in a child that switches
    (``args.switch_to``)."""
    user = privileges.service_user(args.command, args.as_root)
    args.switch_to = None
    if user is not None and args.command == "metrics" and args.textfile is not None:
        args.switch_to = user
    elif user is not None:
        privileges.become(user)


def _check_config(config: Config, args: argparse.Namespace) -> int:
    reload = bool(getattr(args, "reload", False))
    problems = [f"{w.source or config.source}: {p}" for w in config.watches
                for p in _watch_problems(w, config.watcher, reload)]
    if problems:
        raise ConfigError(problems)
    if reload:  # ExecReload: one journal line, not the whole file at every reload
        _check_reload_database(config)
        print(f"sendit-watcher: {config.source or 'the defaults'} is valid ({len(config.watches)} watch root(s)); "
              f"the service applies it")
        return EXIT_OK
    print("\n".join(configuration.effective_ini(config)))
    return EXIT_OK


def _watch_problems(watch: configuration.RootConfig, settings: configuration.WatcherConfig,
                    reload: bool = False) -> list[str]:
    from sendit_watcher.processors import check_processor

    where = f"[watch:{watch.name}]"
    problems = []
    if not watch.path.is_dir():
        missing = f"{where} path: {watch.path} is not an existing directory"
        if not reload:
            problems.append(f"{missing}; create it or fix the path")
        else:  # the service reports it lost until it appears (a share not mounted now)
            print(f"sendit-watcher: warning: {missing}; the service reports it lost until it appears",
                  file=sys.stderr)
    problems.extend(f"{where} processor: {p}" for p in check_processor(watch, settings))
    return problems


def _check_reload_database(config: Config) -> None:
    """The database a reload would move to answers (DatabaseUnavailable, exit 69, otherwise) and is migrated, or
    will be by the service (ConfigError, exit 78, otherwise): `systemctl reload` then fails before the service
    is signalled, and the service keeps its running configuration. Under systemd, ExecReload gets no credentials
    (systemd/systemd#35227): a password that only the pgpass credential gives cannot be checked here, so that is
    a warning, and the service checks the database itself (a reload that cannot move applies nothing)."""
    try:
        with connect(config.database, application="sendit-watcher reload check") as conn:
            missing = pending(conn, config.database.schema)
    except DatabaseUnavailable as exc:
        if not (os.environ.get("INVOCATION_ID") and "no password supplied" in str(exc)):
            raise
        print(f"sendit-watcher: warning: {exc}; ExecReload has no credentials, so the service checks the database "
              "itself and keeps its running configuration if it does not answer", file=sys.stderr)
        return
    if missing and not config.database.migrate_on_start:
        raise ConfigError([f"{config.source}: [database] schema {config.database.schema} lacks {len(missing)} "
                           f"migration(s) (from {missing[0].version:04d}_{missing[0].name}) and migrate_on_start is "
                           "off: run `sendit-watcher migrate` first"])


def _open(config: Config, application: str = "sendit-watcher") -> Connection:
    conn = connect(config.database, application=application)
    if config.database.migrate_on_start:
        migrate(conn, config.database.schema)
    return conn


def _migrate(config: Config, args: argparse.Namespace) -> int:
    with connect(config.database) as conn:
        applied = migrate(conn, config.database.schema)
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "nothing to do, schema is current"
    print(f"schema {config.database.schema}: {names}")
    return EXIT_OK


def _import(config: Config, args: argparse.Namespace) -> int:
    missing = [folder for folder in args.folders if not folder.is_dir()]
    if missing:
        for folder in missing:
            print(f"sendit-watcher: {folder}: not a directory", file=sys.stderr)
        return EXIT_USAGE
    processes = args.processes or config.importing.parse_process_count
    with _open(config) as conn:
        ids = {batches.ensure(conn, *batches.locate(config, folder)): folder for folder in args.folders}
        if len(ids) > 1 and processes > 1:
            outcomes = _import_in_parallel(config, list(ids), processes, args.force)
        else:
            outcomes = _import_in_turn(conn, config, ids, processes, quiet=args.no_progress or args.json,
                                       force=args.force)
        failed = False
        for outcome in outcomes:
            folder = str(ids[outcome.batch_id])
            print(report.outcome_json(folder, outcome) if args.json else report.summary_line(folder, outcome),
                  flush=True)
            failed |= isinstance(outcome, Failure)
    return EXIT_FAILURE if failed else EXIT_OK


def _import_in_turn(conn: Connection, config: Config, ids: dict[int, Path], processes: int,
                    quiet: bool, force: bool) -> Iterator[Outcome]:
    """One folder after another, each parsed by ``processes`` processes (best for a few large folders)."""
    parser = PoolParser(processes)
    try:
        for batch_id, folder in ids.items():
            progress = report.Progress(str(folder), enabled=False if quiet else None)
            outcome = import_batch(conn, config, parser, batch_id, progress, force=force)
            progress.clear()
            assert outcome is not None
            yield outcome
    finally:
        parser.close()


def _import_in_parallel(config: Config, batch_ids: list[int], processes: int, force: bool) -> Iterator[Outcome]:
    """Several folders at once, one per process (best for many folders)."""
    pool = FolderPool(config, processes, force=force)
    try:
        for outcome in pool.imap(batch_ids):
            assert outcome is not None
            yield outcome
    finally:
        pool.close()


def _status(config: Config, args: argparse.Namespace) -> int:
    with _open(config) as conn:
        rows = status.failed_batches(conn) if args.failed else status.recent_batches(conn, args.limit)
        totals = status.totals(conn)
        records = roots.records(conn)
    print(report.status_json(rows, totals, records) if args.json else report.status_table(rows, totals, records))
    return EXIT_OK


def _rejected(config: Config, args: argparse.Namespace) -> int:
    with _open(config) as conn:
        batch_id = None
        if args.folder is not None:
            root, path = _folder_key(config, args.folder)
            batch_id = status.batch_id_of(conn, root, path)
            if batch_id is None:
                print(f"sendit-watcher: rejected: {args.folder} ({root}:{path}) was never imported; `sendit-watcher "
                      "status` shows the folders as ROOT:FOLDER", file=sys.stderr)
                return EXIT_FAILURE
        rows = status.rejected_files(conn, batch_id)
    print(report.rejected_json(rows) if args.json else report.rejected_table(rows))
    return EXIT_OK


def _folder_key(config: Config, folder: str) -> tuple[str, str]:
    """(root name, path) of a folder given as a path on disk, or as ROOT:FOLDER (as ``status`` shows it)."""
    root, colon, path = folder.partition(":")
    names = {watch.name for watch in config.watches} | {batches.OUTSIDE_ROOTS}
    if colon and root in names and not Path(folder).exists():
        return root, path
    return batches.locate(config, Path(folder))


class _Stopped(Exception):
    """SIGTERM reached ``listen``: it stops as a consumer asked it to."""


def _stop_listening(signum: int, frame: FrameType | None) -> None:
    raise _Stopped


def _listen(config: Config, args: argparse.Namespace) -> int:
    """Print finished batches until --count, SIGINT (exit 130), SIGTERM or a closed stdout (exit 0); a lost
    connection is reconnected and replayed from the last seq printed (handoff.follow)."""
    signal.signal(signal.SIGTERM, _stop_listening)
    records = handoff.follow(partial(_open, config, "sendit-watcher listen"), args.since,
                             retry_seconds=config.database.retry_interval, say=_say_listen)
    try:
        for printed, record in enumerate(records, 1):
            print(handoff.as_json(record), flush=True)
            if args.count is not None and printed >= args.count:
                break
    except _Stopped:
        pass
    except BrokenPipeError:  # the consumer closed its end: nothing left to print to, and nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except psycopg.Error as exc:  # not connection trouble (that is reconnected): a missing schema, a permission
        print(f"sendit-watcher: listen: {describe(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        records.close()
    return EXIT_OK


def _say_listen(message: str) -> None:
    print(f"sendit-watcher: listen: {message}", file=sys.stderr, flush=True)


def _retry(config: Config, args: argparse.Namespace) -> int:
    if not args.batch_ids:
        return _retry_every_failed(config)
    code = EXIT_OK
    with _open(config) as conn:
        for batch_id in args.batch_ids:
            refused = batches.retry(conn, batch_id)
            if refused is None:
                print(f"batch {batch_id}: queued again")
            else:
                print(f"sendit-watcher: batch {batch_id} is {refused}, not failed: nothing to retry", file=sys.stderr)
                code = EXIT_FAILURE
    return code


def _retry_every_failed(config: Config) -> int:
    with _open(config) as conn:
        queued, by_hand = batches.retry_failed(conn)
    for batch_id in queued:
        print(f"batch {batch_id}: queued again")
    for batch_id, path in by_hand:
        print(f"batch {batch_id}: imported by hand from outside every root, which no worker takes: "
              f"sendit-watcher import /{path}")
    if not queued and not by_hand:
        print("no failed batch")
    return EXIT_OK


def _metrics(config: Config, args: argparse.Namespace) -> int:
    """The metrics on stdout; or in a textfile, written only from a complete reading (a textfile that did not
    get one says ``sendit_watcher_up 0``: main)."""
    render = partial(_render_metrics, config)
    if args.textfile is None:
        sys.stdout.write(render())
        return EXIT_OK
    code, text = privileges.output_as(args.switch_to, render) if args.switch_to else _rendered(render)
    if code == EXIT_OK:
        metrics.write_textfile(args.textfile, text)
    return code


def _render_metrics(config: Config) -> str:
    """The metrics text; a database that answers but cannot be read (no schema, no permission) is a SenditError."""
    try:
        with _open(config) as conn:
            return metrics.render(conn)
    except psycopg.Error as exc:
        raise SenditError(f"metrics: cannot read the database: {describe(exc)}") from exc


def _rendered(render: Callable[[], str]) -> tuple[int, str]:
    """``render``'s (0, text), or (exit code, "") when it failed, said on stderr as privileges.output_as says it."""
    try:
        return EXIT_OK, render()
    except SenditError as exc:
        print(f"sendit-watcher: {exc}", file=sys.stderr)
        return exc.exit_code, ""


def _adopt_root(config: Config, args: argparse.Namespace) -> int:
    watch = config.watch_named(args.root)
    if watch is None:
        names = ", ".join(w.name for w in config.watches) or "none"
        print(f"sendit-watcher: adopt-root: no [watch:{args.root}] in {config.source} (roots: {names})",
              file=sys.stderr)
        return EXIT_USAGE
    host = config.watcher.host_name
    with _open(config) as conn:
        identity = roots.adopt(conn, host, watch, force=args.force)
    print(f"watch root {watch.name} ({watch.path}) adopted on host {host} as it is now: {identity.describe()}"
          f"{', a mount point' if identity.mount_point else ''}; the service watches it again within seconds")
    return EXIT_OK


def _run(config: Config, args: argparse.Namespace) -> int:
    from sendit_watcher.service import serve

    return serve(config, demo=args.demo)


_COMMANDS: dict[str, Callable[[Config, argparse.Namespace], int]] = {
    "run": _run, "import": _import, "status": _status, "rejected": _rejected, "listen": _listen, "retry": _retry,
    "metrics": _metrics,
    "migrate": _migrate, "check-config": _check_config, "adopt-root": _adopt_root,
}
