"""Schema migrations: apply the package's versioned SQL files once, under an advisory lock."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

from psycopg import sql

from sendit_watcher.db import Connection
from sendit_watcher.locks import LEGACY_LOCKS, MIGRATION_LOCK

__all__ = ["Migration", "available", "migrate", "pending", "MIGRATION_LOCK"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    """One SQL file: ``NNNN_name.sql`` with version NNNN."""

    version: int
    name: str
    text: str


def available() -> list[Migration]:
    """Every migration shipped in the package, in version order."""
    found = []
    for entry in resources.files("sendit_watcher.migrations").iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


def migrate(conn: Connection, schema: str) -> list[Migration]:
    """Apply pending migrations in one transaction; safe to run twice or from two processes at once."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", MIGRATION_LOCK)  # the project's key space (locks.py)
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LEGACY_LOCKS[MIGRATION_LOCK],))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migration ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migration")}
        pending = [m for m in available() if m.version not in done]
        for migration in pending:
            log.info("applying schema migration %04d_%s to schema %s", migration.version, migration.name, schema)
            conn.execute(migration.text.encode("utf-8"))
            conn.execute("INSERT INTO schema_migration (version, name) VALUES (%s, %s)",
                         (migration.version, migration.name))
    return pending


def pending(conn: Connection, schema: str) -> list[Migration]:
    """The migrations ``schema`` lacks (every one when it has none), read without changing anything; ends the
    transaction (a rollback)."""
    row = conn.execute("SELECT to_regclass(format('%%I.schema_migration', %s::text)) IS NOT NULL", (schema,)).fetchone()
    done: set[int] = set()
    if row is not None and row[0]:
        done = {int(r[0]) for r in conn.execute(
            sql.SQL("SELECT version FROM {}.schema_migration").format(sql.Identifier(schema)))}
    conn.rollback()
    return [m for m in available() if m.version not in done]
