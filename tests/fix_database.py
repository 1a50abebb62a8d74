"""Database fixtures: a real PostgreSQL database per test session, a fresh migrated schema per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from sendit_watcher.config import Config, DatabaseConfig
from sendit_watcher.db import Connection, connect
from sendit_watcher.migrate import migrate
from tests.helpers import make_config

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
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def conn(database: DatabaseConfig) -> Iterator[Connection]:
    with connect(database) as connection:
        yield connection


@pytest.fixture
def config(database: DatabaseConfig) -> Config:
    return make_config(database)
