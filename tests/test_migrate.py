"""Schema migrations: applied once, safe to repeat, safe from two processes at once."""

from __future__ import annotations

import threading
import uuid

from psycopg import sql

from sendit_watcher.config import DatabaseConfig
from sendit_watcher.db import connect
from sendit_watcher.migrate import available, migrate, pending


def test_migrations_apply_once_and_twice_is_a_no_op(test_dsn: str) -> None:
    database = DatabaseConfig(dsn=test_dsn, schema=f"m_{uuid.uuid4().hex[:10]}")
    try:
        with connect(database) as conn:
            assert [m.version for m in migrate(conn, database.schema)] == [m.version for m in available()]
            assert migrate(conn, database.schema) == []
            tables = {r[0] for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (database.schema,))}
        assert {"batch", "patient", "study", "series", "instance", "rejected_file", "schema_migration"} <= tables
    finally:
        drop(database)


def test_two_processes_migrating_at_once_do_not_collide(test_dsn: str) -> None:
    database = DatabaseConfig(dsn=test_dsn, schema=f"m_{uuid.uuid4().hex[:10]}")
    applied: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with connect(database) as conn:
                applied.extend(m.version for m in migrate(conn, database.schema))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert sorted(applied) == [m.version for m in available()]
    finally:
        drop(database)


def test_pending_reads_what_a_schema_lacks_without_changing_it(test_dsn: str) -> None:
    """What a reload checks before it moves to a new database with migrate_on_start off."""
    database = DatabaseConfig(dsn=test_dsn, schema=f"m_{uuid.uuid4().hex[:10]}")
    try:
        with connect(database) as conn:
            assert pending(conn, database.schema) == available()  # no schema at all: everything, nothing created
            assert conn.execute("SELECT to_regnamespace(%s)", (database.schema,)).fetchone() == (None,)
            conn.rollback()
            migrate(conn, database.schema)
            assert pending(conn, database.schema) == []
            conn.execute(sql.SQL("DELETE FROM {}.schema_migration WHERE version = (SELECT max(version) FROM {}"
                                 ".schema_migration)").format(sql.Identifier(database.schema),
                                                              sql.Identifier(database.schema)))
            conn.commit()
            assert pending(conn, database.schema) == available()[-1:]
    finally:
        drop(database)


def drop(database: DatabaseConfig) -> None:
    with connect(database, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(database.schema)))
