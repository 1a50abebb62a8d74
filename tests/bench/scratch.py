"""A database of its own for one benchmark run, dropped after it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

ADMIN_DSN = os.environ.get("SENDIT_TEST_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")


@contextmanager
def scratch_database() -> Iterator[str]:
    """Yields the conninfo of a new database."""
    name = f"sendit_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=name)
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
