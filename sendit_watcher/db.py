"""Connections to PostgreSQL: one place that turns the [database] section into a live connection."""

from __future__ import annotations

import os

import psycopg
from psycopg.rows import TupleRow

from sendit_watcher.config import DatabaseConfig, redact_dsn
from sendit_watcher.errors import DatabaseUnavailable, one_line

__all__ = ["Connection", "connect", "describe_failure", "use_credential_pgpass"]

Connection = psycopg.Connection[TupleRow]


def connect(database: DatabaseConfig, *, autocommit: bool = False, application: str = "sendit-watcher") -> Connection:
    """Open a connection whose search_path is the configured schema; raise DatabaseUnavailable on failure."""
    use_credential_pgpass()
    try:
        return psycopg.connect(
            database.dsn,
            autocommit=autocommit,
            connect_timeout=max(1, round(database.connect_timeout)),
            application_name=application,
            options=f"-c search_path={database.schema}",  # schema is a validated plain identifier
        )
    except psycopg.Error as exc:
        raise DatabaseUnavailable(describe_failure(database, exc)) from exc


def use_credential_pgpass() -> None:
    """Point libpq at a pgpass file passed by systemd (``LoadCredential=pgpass:...``) unless PGPASSFILE is set."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory and "PGPASSFILE" not in os.environ and os.path.isfile(os.path.join(directory, "pgpass")):
        os.environ["PGPASSFILE"] = os.path.join(directory, "pgpass")


def describe_failure(database: DatabaseConfig, exc: BaseException) -> str:
    """A one-line account of a connection failure that never shows the password."""
    where = redact_dsn(database.dsn) or "libpq defaults"
    return f"cannot connect to PostgreSQL ({where}): {redact_dsn(one_line(exc))}"
