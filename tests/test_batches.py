"""The batch protocol's failure policy on a real PostgreSQL: a failure never overwrites a later success, failures
back off exponentially without holding up other batches, and errors are classified by their SQLSTATE."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from sendit_watcher import batches
from sendit_watcher.batches import Batch, BatchStatus
from sendit_watcher.db import Connection
from sendit_watcher.errors import connection_trouble


def _claimed(conn: Connection, roots: list[str]) -> Batch | None:
    """Claim a batch as a worker does, and roll the claim back (its import failed, or it is not wanted)."""
    with conn.transaction(force_rollback=True):
        return batches.claim(conn, roots)


def _failure_row(conn: Connection, batch_id: int) -> tuple[object, ...]:
    row = conn.execute("SELECT status, attempts, last_error, extract(epoch FROM next_attempt_at - finished_at)"
                       " FROM batch WHERE id = %s", (batch_id,)).fetchone()
    assert row is not None
    return tuple(row)


def test_a_failure_is_never_recorded_over_another_workers_later_success(conn: Connection) -> None:
    batch_id = batches.enqueue(conn, "incoming", "A")
    conn.commit()
    slow = _claimed(conn, ["incoming"])  # worker 1 claims A; its import fails and rolls back, slowly...
    assert slow is not None and slow.id == batch_id
    with conn.transaction():  # ...meanwhile worker 2 claims A again and imports it
        fast = batches.claim(conn, ["incoming"])
        assert fast is not None and fast.id == batch_id
        batches.finish(conn, fast, host="worker-2", fingerprint="f", files=1, new_instances=1, removed=0,
                       seconds=0.1, unchanged=False)
    assert batches.record_failure(conn, slow, "worker-1", "ImportFailed: too late", None) is False
    assert _failure_row(conn, batch_id)[:3] == (BatchStatus.DONE, 0, None)  # worker 2's success stands
    again = batches.claim_id(conn, batch_id)  # claimed after that success: its failure is recorded
    conn.rollback()
    assert again is not None
    assert batches.record_failure(conn, again, "worker-1", "ImportFailed: now", None) is True
    assert _failure_row(conn, batch_id)[:3] == (BatchStatus.FAILED, 1, "ImportFailed: now")


def test_failures_in_a_row_back_off_from_5_s_doubling_up_to_an_hour(conn: Connection) -> None:
    batch_id = batches.enqueue(conn, "incoming", "A")
    conn.commit()
    waits = []
    for attempt in range(1, 13):
        batch = batches.claim_id(conn, batch_id)
        conn.rollback()
        assert batch is not None
        assert batches.record_failure(conn, batch, "h", f"failure {attempt}", None)
        status, attempts, _, wait = _failure_row(conn, batch_id)
        assert (status, attempts) == (BatchStatus.FAILED, attempt)
        waits.append(round(float(str(wait))))
    assert waits == [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]


def test_a_batch_backing_off_never_holds_up_the_others(conn: Connection) -> None:
    poison = batches.enqueue(conn, "incoming", "A")
    later = batches.enqueue(conn, "incoming", "B")
    conn.commit()
    first = _claimed(conn, ["incoming"])
    assert first is not None and first.id == poison  # the oldest first
    assert batches.record_failure(conn, first, "h", "failure", None)
    assert batches.retry(conn, poison) is None  # `retry` queues it at once, with no back-off left
    queued_again = _claimed(conn, ["incoming"])
    assert queued_again is not None and queued_again.id == poison
    assert batches.record_failure(conn, queued_again, "h", "failure again", None)
    conn.execute("UPDATE batch SET status = %s WHERE id = %s", (BatchStatus.QUEUED, poison))  # queued, backing off
    conn.commit()
    claimed = _claimed(conn, ["incoming"])
    assert claimed is not None and claimed.id == later
    assert _claimed(conn, ["other-root"]) is None  # a worker claims only the roots it has


@pytest.mark.parametrize(("sqlstate", "retry_later"), [
    ("08006", True),   # connection failure
    ("53100", True),   # disk full
    ("53200", True),   # out of memory
    ("57P01", True),   # admin shutdown
    ("58030", True),   # I/O error
    ("40001", True),   # serialization failure
    ("40P01", True),   # deadlock
    ("55P03", True),   # lock not available
    ("54000", False),  # program limit exceeded (a 12,000-character value in an index)
    ("22P02", False),  # invalid text representation
    ("23505", False),  # unique violation
    ("XX000", False),  # internal error
])
def test_a_database_error_is_the_connections_or_the_batchs_by_its_sqlstate(
        conn: Connection, sqlstate: str, retry_later: bool) -> None:
    with pytest.raises(psycopg.Error) as raised:
        conn.execute(sql.SQL("DO $$ BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = {}; END $$")
                     .format(sql.Literal(sqlstate)))
    conn.rollback()
    assert raised.value.sqlstate == sqlstate
    assert connection_trouble(raised.value) is retry_later


def test_no_answer_at_all_is_connection_trouble() -> None:
    with pytest.raises(psycopg.OperationalError) as raised:
        psycopg.connect("host=127.0.0.1 port=1 connect_timeout=2")
    assert raised.value.sqlstate is None and connection_trouble(raised.value)
