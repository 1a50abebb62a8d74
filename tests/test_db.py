"""Connections: text goes in and comes out as UTF-8 whatever the client's environment says, and a database that
cannot store UTF-8 is refused with the fix, never half used."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pydicom
import pytest
from psycopg import sql
from pydicom.uid import generate_uid

from sendit_watcher.cli import main
from sendit_watcher.config import Config, DatabaseConfig
from sendit_watcher.db import connect
from sendit_watcher.errors import EXIT_UNAVAILABLE, DatabaseUnavailable
from tests.fix_database import ADMIN_DSN
from tests.helpers import import_folder, pydicom_test_files, write_config


def _non_ascii_study(folder: Path) -> None:
    folder.mkdir()
    dataset = pydicom.dcmread(pydicom_test_files() / "CT_small.dcm")
    dataset.SpecificCharacterSet = "ISO_IR 192"
    dataset.StudyDescription = "Überweisung 検査"
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.save_as(folder / "Bild-ü.dcm")


def test_a_client_encoding_from_the_environment_changes_nothing(
        monkeypatch: pytest.MonkeyPatch, database: DatabaseConfig, config: Config, tmp_path: Path) -> None:
    _non_ascii_study(tmp_path / "study")
    monkeypatch.setenv("PGCLIENTENCODING", "LATIN1")  # an operator's environment, or client_encoding in the DSN
    with connect(database) as conn:
        assert conn.info.encoding == "utf-8"
        outcome = import_folder(conn, config, tmp_path / "study")
        assert (outcome.instances, outcome.rejected) == (1, 0)
        assert conn.execute("SELECT study_description FROM study").fetchone() == ("Überweisung 検査",)
        assert conn.execute("SELECT path, header->'00081030'->'Value'->>0 FROM instance").fetchone() == (
            "Bild-ü.dcm", "Überweisung 検査")


@pytest.fixture
def sql_ascii_database() -> Iterator[str]:
    """A database created with ENCODING 'SQL_ASCII' (what initdb gives under LANG=C)."""
    name = f"sendit_ascii_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} ENCODING 'SQL_ASCII' TEMPLATE template0 LC_COLLATE 'C'"
                              " LC_CTYPE 'C'").format(sql.Identifier(name)))
        dsn = psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=name)
    yield dsn
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_a_database_that_is_not_utf8_is_refused_with_the_fix(
        sql_ascii_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    database = DatabaseConfig(dsn=sql_ascii_database, connect_timeout=5)
    with pytest.raises(DatabaseUnavailable, match="has encoding SQL_ASCII; .* need UTF8: createdb --encoding=UTF8"):
        connect(database)
    _non_ascii_study(tmp_path / "study")
    conffile = write_config(tmp_path / "watcher.conf", database, {"incoming": tmp_path})
    assert main(["--config", str(conffile), "import", str(tmp_path / "study")]) == EXIT_UNAVAILABLE
    assert "has encoding SQL_ASCII" in capsys.readouterr().err
    with psycopg.connect(sql_ascii_database) as conn:  # nothing was created in it
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'sendit'").fetchone() == (0,)
