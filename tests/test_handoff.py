"""The hand-off never goes quiet or lies: a failed batch that succeeds again is news, and
`listen` survives its connection being terminated, replaying from the last seq it printed."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from sendit_watcher import batches
from sendit_watcher.batch_import import Failure
from sendit_watcher.batches import BatchStatus
from sendit_watcher.config import DatabaseConfig
from sendit_watcher.db import Connection, connect
from tests.fix_database import ADMIN_DSN
from tests.fix_service import Listener
from tests.helpers import as_int, import_folder, make_config, make_study, scalar, wait_until, write_config

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
    notified: list[str] = []
    with connect(database, autocommit=True) as listener:
        listener.add_notify_handler(lambda notify: notified.append(notify.payload))
        listener.execute("LISTEN sendit_batch")
        with caplog.at_level(logging.INFO, logger="sendit_watcher.batch_import"):
            outcome = import_folder(conn, config, root / "A")
        wait_until(lambda: listener.execute("SELECT 1") is not None and bool(notified), timeout=5,
                   what="NOTIFY sendit_batch")
    assert outcome.status == BatchStatus.DONE and not getattr(outcome, "unchanged", True)
    recovered, status = _seq_and_status(conn, "A")
    assert status == BatchStatus.DONE and recovered > failed
    assert notified == [str(outcome.batch_id)]
    assert any(r.levelno == logging.INFO and f"batch {outcome.batch_id} " in r.getMessage() and " done:" in
               r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert [r["seq"] for r in batches.finished_after(conn, failed)] == [recovered]
    again = import_folder(conn, config, root / "A")  # a plain re-check of a done folder is still no news
    assert getattr(again, "unchanged", False) and _seq_and_status(conn, "A")[0] == recovered


def _finish(conn: Connection, path: str) -> int:
    """Queue, claim and finish a batch as a worker does; its finished_seq."""
    batch_id = batches.enqueue(conn, "incoming", path)
    conn.commit()
    assert batch_id is not None
    with conn.transaction():
        claimed = batches.claim_id(conn, batch_id)
        assert claimed is not None
        batches.finish(conn, claimed, host="h", fingerprint=path, files=1, new_instances=1, removed=0, seconds=0.1,
                       unchanged=False)
    return _seq_and_status(conn, path)[0]


def _terminate_listener(admin: psycopg.Connection[object], dbname: str) -> int:
    rows = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                         " WHERE application_name = 'sendit-watcher listen' AND datname = %s", (dbname,)).fetchall()
    return len(rows)


def test_listen_survives_its_connection_being_terminated_with_no_gap_and_no_duplicate(
        conn: Connection, database: DatabaseConfig, tmp_path: Path) -> None:
    """`listen` died with a traceback when its backend was terminated (a restart, a failover).
    Now it says so on one line, reconnects, and prints every batch once, in order: those that finished while it
    could not connect are replayed from the last seq it printed."""
    config = write_config(tmp_path / "watcher.conf", database, {})
    dbname = conn.info.dbname
    expected = [_finish(conn, "before")]
    listener = Listener(config, "--since", "0")
    try:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            wait_until(lambda: listener.seqs() == expected, timeout=30, what=f"the first line; {listener.stderr}")
            try:  # the backend terminated, and no new connection let in while two batches finish
                admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(dbname)))
                assert _terminate_listener(admin, dbname) == 1
                wait_until(lambda: "connection lost" in listener.stderr, timeout=30, what="the lost connection said")
                expected += [_finish(conn, "while-away-1"), _finish(conn, "while-away-2")]
                time.sleep(1.5)  # several reconnection attempts, refused
                assert listener.seqs() == expected[:1] and listener.process.poll() is None
            finally:
                admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(dbname)))
            wait_until(lambda: listener.seqs() == expected, timeout=30, what=f"the replay; {listener.stderr}")
            expected.append(_finish(conn, "live-again"))
            wait_until(lambda: listener.seqs() == expected, timeout=30, what="a live line after the reconnection")
            wait_until(lambda: _terminate_listener(admin, dbname) == 1, timeout=30, what="the new backend")
            expected += [_finish(conn, "right-after-1"), _finish(conn, "right-after-2")]  # reconnect races these
            wait_until(lambda: len(listener.seqs()) >= len(expected) and "reconnected" in listener.stderr.split(
                "connection lost")[-1], timeout=30, what=f"the second reconnection; {listener.stderr}")
            expected.append(_finish(conn, "last"))
            wait_until(lambda: len(listener.seqs()) >= len(expected), timeout=30, what="the last line")
            time.sleep(0.5)  # a duplicate would show up meanwhile
        assert listener.seqs() == expected, (listener.seqs(), expected)
        assert listener.process.poll() is None, listener.stderr
        lost = [line for line in listener.stderr.splitlines() if "connection lost" in line]
        assert 2 <= len(lost) <= 4 and "Traceback" not in listener.stderr, listener.stderr
        assert all(line.startswith("sendit-watcher: listen: ") for line in listener.stderr.splitlines())
        listener.process.send_signal(signal.SIGTERM)
        assert listener.process.wait(10) == 0
        assert "Traceback" not in listener.stderr
    finally:
        listener.kill()


def test_listen_ends_quietly_when_its_reader_closes_the_pipe(conn: Connection, database: DatabaseConfig,
                                                              tmp_path: Path) -> None:
    listener = Listener(write_config(tmp_path / "watcher.conf", database, {}), read_stdout=False)
    try:
        wait_until(lambda: scalar(conn, "SELECT count(*) FROM pg_stat_activity WHERE application_name ="  # this
                                  " 'sendit-watcher listen' AND state = 'idle' AND datname = current_database()")
                   == 1, timeout=30, what="listen waiting")  # database's: the other world's run beside has its own
        assert listener.process.stdout is not None
        listener.process.stdout.close()
        _finish(conn, "nobody-reads-this")
        assert listener.process.wait(30) == 0
        time.sleep(0.2)
        assert listener.stderr == "", listener.stderr
    finally:
        listener.kill()
