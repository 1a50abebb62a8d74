"""The hand-off never goes quiet or lies (issue 19 item 4): a failed batch that succeeds again is news, and
`listen` survives its connection being terminated, replaying from the last seq it printed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from sendit_watcher import batches
from sendit_watcher.batches import BatchStatus
from sendit_watcher.config import DatabaseConfig
from sendit_watcher.db import Connection, connect
from sendit_watcher.worker import Failure
from tests.fix_dicom import make_study
from tests.helpers import as_int, import_folder, make_config

_REFUSE_BAD = """
CREATE FUNCTION refuse_bad() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'refused' USING ERRCODE = '23514'; END $$;
CREATE TRIGGER refuse_bad BEFORE INSERT ON instance FOR EACH ROW WHEN (NEW.path = 'bad.dcm')
    EXECUTE FUNCTION refuse_bad();
"""


def _seq_and_status(conn: Connection, path: str) -> tuple[int, str]:
    row = conn.execute("SELECT finished_seq, status FROM batch WHERE path = %s", (path,)).fetchone()
    conn.rollback()
    assert row is not None
    return as_int(row[0]), str(row[1])


def test_a_failed_batch_that_succeeds_as_its_last_success_saw_it_is_news(
        conn: Connection, database: DatabaseConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """failed -> done (the bad file removed, so the folder is exactly as its last success saw it) takes a new
    finished_seq, a NOTIFY and an info log line; before, it went done silently under its old seq."""
    root = tmp_path / "incoming"
    config = make_config(database, {"incoming": root})
    make_study(root / "A", 2)
    conn.execute(_REFUSE_BAD)
    conn.commit()
    assert import_folder(conn, config, root / "A").status == BatchStatus.DONE
    first, _ = _seq_and_status(conn, "A")
    make_study(tmp_path / "other", 1)
    (tmp_path / "other" / "IM00000.dcm").rename(root / "A" / "bad.dcm")
    assert isinstance(import_folder(conn, config, root / "A"), Failure)
    failed, status = _seq_and_status(conn, "A")
    assert status == BatchStatus.FAILED and failed > first
    (root / "A" / "bad.dcm").unlink()
    with connect(database, autocommit=True) as listener:
        listener.execute("LISTEN sendit_batch")
        with caplog.at_level(logging.INFO, logger="sendit_watcher.worker"):
            outcome = import_folder(conn, config, root / "A")
        notified = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
    assert outcome.status == BatchStatus.DONE and not getattr(outcome, "unchanged", True)
    recovered, status = _seq_and_status(conn, "A")
    assert status == BatchStatus.DONE and recovered > failed
    assert notified == [str(outcome.batch_id)]
    assert any(r.levelno == logging.INFO and f"batch {outcome.batch_id} " in r.getMessage() and " done:" in
               r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert [r["seq"] for r in batches.finished_after(conn, failed)] == [recovered]
    again = import_folder(conn, config, root / "A")  # a plain re-check of a done folder is still no news
    assert getattr(again, "unchanged", False) and _seq_and_status(conn, "A")[0] == recovered
