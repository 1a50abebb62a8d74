"""Connections to PostgreSQL: one place that turns the [database] section into a live connection."""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

from sendit_watcher import pgpass
from sendit_watcher.config import DatabaseConfig, redact_dsn
from sendit_watcher.errors import DatabaseUnavailable, one_line

__all__ = ["Connection", "connect", "describe_failure", "session_options"]

Connection = psycopg.Connection[TupleRow]


def connect(database: DatabaseConfig, *, autocommit: bool = False, application: str = "sendit-watcher") -> Connection:
    """Open a connection whose search_path is the configured schema; raise DatabaseUnavailable on failure. A
    password the DSN lacks comes from the pgpass credential, when systemd passed one (pgpass.py)."""
    try:
        password = pgpass.password_for(database.dsn)  # a DSN that cannot be parsed fails here, as in connect
        conn = psycopg.connect(
            database.dsn,
            password=password,  # None: libpq decides (psycopg leaves out None values)
            autocommit=autocommit,
            connect_timeout=max(1, round(database.connect_timeout)),
            application_name=application,
            options=session_options(database),
            client_encoding="UTF8",  # what COPY sends and text is read as, whatever PGCLIENTENCODING says
        )
    except psycopg.Error as exc:
        raise DatabaseUnavailable(describe_failure(database, exc)) from exc
    encoding, dbname = conn.info.parameter_status("server_encoding"), conn.info.dbname
    if encoding != "UTF8":
        conn.close()
        raise DatabaseUnavailable(_wrong_encoding(database, dbname, encoding or "unknown"))
    return conn


def _wrong_encoding(database: DatabaseConfig, dbname: str, encoding: str) -> str:
    """Why a database that does not store UTF-8 is refused, and how to make one that does."""
    return (f"database {dbname!r} ({redact_dsn(database.dsn) or 'libpq defaults'}) has encoding {encoding};"
            f" DICOM text and file names need UTF8: createdb --encoding=UTF8 --template=template0 NAME"
            f" (or a cluster made with pg_createcluster --locale=C.UTF-8)")


def session_options(database: DatabaseConfig) -> str:
    """libpq's ``options``: the operator's own (from the DSN), then our search_path (a validated identifier)."""
    ours = f"-c search_path={database.schema}"
    theirs = conninfo_to_dict(database.dsn).get("options") if database.dsn.strip() else None
    return f"{theirs} {ours}" if theirs else ours


def describe_failure(database: DatabaseConfig, exc: BaseException) -> str:
    """A one-line account of a connection failure that never shows the password."""
    where = redact_dsn(database.dsn) or "libpq defaults"
    if where.startswith("(a dsn that cannot be parsed"):
        return f"cannot connect to PostgreSQL: {where}; quote values that hold spaces, e.g. password='two words'"
    return f"cannot connect to PostgreSQL ({where}): {one_line(exc)}"
