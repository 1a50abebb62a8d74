"""Shared fixtures: a real PostgreSQL database per test session, a fresh schema per test, DICOM trees."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from sendit_watcher.config import Config, DatabaseConfig, ImportConfig, WatchConfig, WatcherConfig
from sendit_watcher.db import Connection, connect
from sendit_watcher.migrate import migrate

# Where tests create their database; .ci/run makes sure a server answers here.
ADMIN_DSN = os.environ.get("SENDIT_TEST_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")


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
    dsn = psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=name)
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


def make_config(database: DatabaseConfig, roots: dict[str, Path] | None = None, *, full_header: bool = True,
                settle: float = 0.5, rescan: float = 0.0, workers: int = 1) -> Config:
    """A Config for tests: the given roots watched with the default processor."""
    import pyinotify

    mask = pyinotify.IN_CREATE | pyinotify.IN_MOVED_TO | pyinotify.IN_CLOSE_WRITE
    watches = tuple(WatchConfig(name, path, mask, "sendit_watcher.processors.DicomFolderImporter")
                    for name, path in (roots or {}).items())
    return Config(None, database, ImportConfig(full_header=full_header, workers=workers, parse_processes=2),
                  WatcherConfig(settle_seconds=settle, rescan_interval=rescan, drain_seconds=10, host="test-host"),
                  watches)


@pytest.fixture
def config(database: DatabaseConfig) -> Config:
    return make_config(database)


@pytest.fixture
def incoming(tmp_path: Path) -> Path:
    """An empty watch root."""
    root = tmp_path / "incoming"
    root.mkdir()
    return root


def pydicom_test_files() -> Path:
    """The directory of pydicom's bundled test files (real DICOM nobody here wrote)."""
    from pydicom.data import get_testdata_files

    return Path(get_testdata_files("CT_small.dcm")[0]).parent


@pytest.fixture
def dicom_tree(tmp_path: Path) -> Path:
    """A copy of pydicom's whole test-file tree (DICOMDIR trees, non-DICOM files, transcodings)."""
    target = tmp_path / "pydicom-tree"
    shutil.copytree(pydicom_test_files(), target)
    return target


def count_rows(conn: Connection) -> dict[str, int]:
    """Row counts of every table of the hierarchy."""
    counts = {}
    for table in ("batch", "patient", "study", "series", "instance", "rejected_file"):
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
        assert row is not None
        counts[table] = int(str(row[0]))
    conn.commit()
    return counts


_FIGURES: list[str] = []


@pytest.fixture
def figures() -> Callable[[str], None]:
    """Record a line of figures (counts, timings) to print at the end of the run."""
    return _FIGURES.append


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)
