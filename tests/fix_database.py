"""Database fixtures: a real PostgreSQL database per test session, a fresh migrated schema per test."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from sendit_watcher import batches, handoff, report, roots, status
from sendit_watcher.config import Config, DatabaseConfig
from sendit_watcher.db import Connection, connect
from sendit_watcher.migrate import migrate
from tests.helpers import make_config

# What each test's schema would show an operator when the test ends (every batch's last_error, `status`,
# `status --json` and every `listen` record), for the PHI canary (fix_canary) to search when the session ends.
SHOWN: list[tuple[str, str]] = []


def shown_by(conn: Connection, schema: str) -> list[tuple[str, str]]:
    """(where, text) for everything the schema's batches would show: last_error, status, status --json, listen."""
    errors = conn.execute("SELECT id, last_error FROM batch WHERE last_error IS NOT NULL").fetchall()
    rows, totals, records = status.recent_batches(conn, 1_000_000), status.totals(conn), roots.records(conn)
    texts = [(f"last_error of batch {batch_id}", str(error)) for batch_id, error in errors]
    texts += [("status", report.status_table(rows, totals, records)),
              ("status --json", report.status_json(rows, totals, records))]
    texts += [("listen", handoff.as_json(record)) for record in batches.finished_after(conn, 0)]
    return [(f"{where} in schema {schema}", text) for where, text in texts]


# Where tests create their database; .ci/run makes sure a server answers at the default. A libpq conninfo: what
# it leaves out (all of it when empty) comes from libpq's PG* variables, as pg_virtualenv (debian/tests) sets them.
ADMIN_DSN = os.environ.get("SENDIT_TEST_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")


def reached(conn: psycopg.Connection[object]) -> dict[str, str]:
    """The server and role a connection reached, spelled out: the tests hand their dsn to processes started with
    an environment of their own (no PG* variables), which must reach the same server."""
    info = conn.info
    spelled = {"host": info.host, "port": str(info.port), "user": info.user}
    if info.password:
        spelled["password"] = info.password
    return spelled


@pytest.fixture(scope="session")
def test_dsn() -> Iterator[str]:
    """A database created for this test session and dropped after it. Fails, never skips, without a server."""
    name = f"sendit_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg.connect(ADMIN_DSN, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required for these tests (SENDIT_TEST_ADMIN_DSN={ADMIN_DSN!r}): {exc}")
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        dsn = psycopg.conninfo.make_conninfo(ADMIN_DSN, **reached(admin), dbname=name)
    yield dsn
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def database(test_dsn: str) -> Iterator[DatabaseConfig]:
    """A fresh, migrated schema of its own for one test."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    database = DatabaseConfig(dsn=test_dsn, schema=schema, connect_timeout=5, retry_interval=0.2)
    with connect(database) as conn:
        migrate(conn, schema)
    yield database
    with connect(database, autocommit=True) as conn:
        SHOWN.extend(shown_by(conn, schema))
        _drop_schema(conn, schema)


def _drop_schema(conn: Connection, schema: str) -> None:
    """DROP SCHEMA, again when PostgreSQL chose it as a deadlock's victim: a killed service's worker may still be
    finishing a transaction on the schema for a moment (it exits once it sees its parent gone)."""
    for attempt in range(5):
        try:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
            return
        except psycopg.errors.DeadlockDetected:
            if attempt == 4:
                raise
            time.sleep(1)


@pytest.fixture
def conn(database: DatabaseConfig) -> Iterator[Connection]:
    with connect(database) as connection:
        yield connection


@pytest.fixture
def config(database: DatabaseConfig) -> Config:
    return make_config(database)
