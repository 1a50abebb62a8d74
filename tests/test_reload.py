"""Reload is all or nothing: a new database moves every part of the service, or the reload is
refused and the running configuration keeps working; `systemctl reload`'s command line fails on an invalid file."""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from sendit_watcher.config import DatabaseConfig
from sendit_watcher.db import Connection, connect
from tests.fix_database import ADMIN_DSN
from tests.fix_service import REPO, ServiceProcess
from tests.helpers import batch_rows, done, drop_study, exec_reload, scalar_int, wait_until, write_config


@pytest.fixture
def other_database(test_dsn: str) -> Iterator[DatabaseConfig]:
    """A second database on the same server, empty (no schema yet), dropped after the test."""
    name = f"sendit_other_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield DatabaseConfig(dsn=psycopg.conninfo.make_conninfo(test_dsn, dbname=name), schema="sendit")
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _reloaded(service: ServiceProcess, what: str) -> None:
    """SIGHUP, then the reload's verdict in the log and READY=1 after RELOADING=1."""
    before = service.log.count(what)
    seen = len(service.notify.fields())
    service.signal(signal.SIGHUP)
    wait_until(lambda: service.log.count(what) > before, timeout=30, what=f"{what!r}; log:\n{service.log[-3000:]}")

    def ready_after_reloading() -> bool:
        fields = service.notify.fields()[seen:]
        return "RELOADING=1" in fields and "READY=1" in fields[fields.index("RELOADING=1"):]

    wait_until(ready_after_reloading, timeout=10, what="READY=1 after RELOADING=1")


def test_a_reload_with_a_new_database_moves_every_part_of_the_service(
        services: Callable[[Path], ServiceProcess], conn: Connection, database: DatabaseConfig,
        other_database: DatabaseConfig, incoming: Path, tmp_path: Path) -> None:
    """A new dsn on reload moved the workers and the catch-up but not the main loop, whose
    folders stayed queued in the old database. Now the new database is migrated (migrate_on_start), then the
    main loop, the workers and the catch-up scan all use it."""
    config = tmp_path / "watcher.conf"
    service = services(write_config(config, database, {"incoming": incoming}))
    drop_study(incoming, "BEFORE", 2)
    wait_until(done(conn, "BEFORE", 2), what="BEFORE imported into the old database")
    write_config(config, other_database, {"incoming": incoming})
    _reloaded(service, "reloaded")
    drop_study(incoming, "AFTER", 3)
    with connect(other_database) as new:
        wait_until(done(new, "AFTER", 3), what=f"AFTER imported into the new database; log:\n{service.log[-3000:]}")
        wait_until(done(new, "BEFORE", 2), what="BEFORE caught up into the new database")
    assert set(batch_rows(conn)) == {"BEFORE"}  # nothing of after the reload went to the old database...
    assert scalar_int(conn, "SELECT count(*) FROM batch WHERE status = 'queued'") == 0  # ...nor waits there
    assert "migrating the new database" in service.log and "now uses database" in service.log
    assert service.process.poll() is None


def test_a_reload_to_a_database_that_cannot_be_used_is_refused_whole(
        services: Callable[[Path], ServiceProcess], conn: Connection, database: DatabaseConfig,
        other_database: DatabaseConfig, incoming: Path, tmp_path: Path) -> None:
    """An unreachable dsn, or a database not migrated while migrate_on_start is off: the reload is refused with
    a log line and nothing of the new file applies (not even its settle period); the old database keeps
    receiving folders."""
    config = tmp_path / "watcher.conf"
    service = services(write_config(config, database, {"incoming": incoming}))
    nowhere = DatabaseConfig(dsn="host=127.0.0.1 port=9 dbname=x user=x", schema="sendit")
    write_config(config, nowhere, {"incoming": incoming}, settle_seconds=60)
    _reloaded(service, "reload refused")
    assert "does not answer" in service.log.split("reload refused")[-1]
    write_config(config, other_database, {"incoming": incoming}, settle_seconds=60, migrate_on_start="no")
    _reloaded(service, "reload refused")
    assert "lacks" in service.log.split("reload refused")[-1] and "sendit-watcher migrate" in service.log
    with connect(other_database, autocommit=True) as new:  # nothing was created there either
        assert new.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'sendit'").fetchone() == (0,)
    drop_study(incoming, "KEPT", 2)
    (incoming / "SETTLING").mkdir()  # settles with the running 1 s, not the refused 60 s
    (incoming / "SETTLING" / "x").write_bytes(b"not dicom")
    wait_until(done(conn, "KEPT", 2), what="KEPT imported into the running database")
    wait_until(lambda: batch_rows(conn).get("SETTLING", ("",))[0] == "done", timeout=20,
               what="SETTLING settled with the running settle period")
    assert "reloaded" not in service.log and service.process.poll() is None


def _run_exec_reload(config: Path, main_pid: int, said: list[str] | None = None) -> int:
    """Run the unit's ExecReload= lines as systemd does: in order, $MAINPID substituted, the first failure ends
    the reload with that status. /usr/bin/sendit-watcher is the installed program; in a checkout, the module.
    ``said`` receives each line's output lines (what the journal gets)."""
    for line in exec_reload():
        argv = [str(main_pid) if word == "$MAINPID" else word for word in shlex.split(line)]
        if argv[0] == "/usr/bin/sendit-watcher" and not os.path.exists(argv[0]):
            argv[:1] = [sys.executable, "-m", "sendit_watcher"]
        result = subprocess.run(argv, env={**os.environ, "PYTHONPATH": str(REPO), "SENDIT_WATCHER_CONFIG": str(config)},
                                capture_output=True, text=True, timeout=60, check=False)
        if said is not None:
            said += (result.stdout + result.stderr).splitlines()
        if result.returncode != 0:
            return result.returncode
    return 0


def test_the_units_reload_command_fails_on_an_invalid_file_and_never_signals_the_service(
        services: Callable[[Path], ServiceProcess], database: DatabaseConfig, incoming: Path, tmp_path: Path) -> None:
    config = tmp_path / "watcher.conf"
    service = services(write_config(config, database, {"incoming": incoming}))
    good = config.read_text()
    config.write_text(good + "\n[watcher]\nsettle_seconds = soon\n")
    assert _run_exec_reload(config, service.process.pid) == 78  # systemctl reload fails: EX_CONFIG
    config.write_text(good.replace(str(incoming), "relative/path"))
    assert _run_exec_reload(config, service.process.pid) == 78
    assert "RELOADING=1" not in service.notify.fields()  # the service was never told
    config.write_text(good)
    said: list[str] = []
    assert _run_exec_reload(config, service.process.pid, said) == 0
    assert said == [f"sendit-watcher: {config} is valid (1 watch root(s)); the service applies it"], said  # not
    # the whole configuration in the journal at every reload
    service.notify.wait_for(lambda line: line == "RELOADING=1", 10)
    wait_until(lambda: "reloaded" in service.log, timeout=30, what="the reload")


def test_the_units_reload_command_fails_on_a_database_that_cannot_be_used_and_never_signals_the_service(
        services: Callable[[Path], ServiceProcess], database: DatabaseConfig, incoming: Path, tmp_path: Path) -> None:
    """`systemctl reload` itself fails (not only the service's refusal in the journal) when the file's database
    does not answer (69), or lacks migrations that the service will not apply (78); a root missing now (a share
    not mounted) is only a warning: the service reports it lost."""
    config = tmp_path / "watcher.conf"
    service = services(write_config(config, database, {"incoming": incoming}))
    nowhere = dataclasses.replace(database, dsn="host=/nonexistent-socket-dir dbname=nowhere")
    write_config(config, nowhere, {"incoming": incoming})
    assert _run_exec_reload(config, service.process.pid) == 69  # EX_UNAVAILABLE
    write_config(config, dataclasses.replace(database, schema="never_migrated"), {"incoming": incoming},
                 migrate_on_start="no")
    assert _run_exec_reload(config, service.process.pid) == 78
    assert "RELOADING=1" not in service.notify.fields()  # the service was never told
    write_config(config, database, {"incoming": tmp_path / "not-mounted-now"})
    assert _run_exec_reload(config, service.process.pid) == 0
    service.notify.wait_for(lambda line: line == "RELOADING=1", 10)
