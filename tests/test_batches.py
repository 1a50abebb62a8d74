"""The batch protocol's failure policy on a real PostgreSQL: a failure never overwrites a later success, failures
back off exponentially without holding up other batches, and errors are classified by their SQLSTATE."""

from __future__ import annotations

import itertools

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg import sql

from sendit_watcher import batches, status
from sendit_watcher.batches import Batch, BatchStatus
from sendit_watcher.config import DatabaseConfig
from sendit_watcher.db import Connection, connect
from sendit_watcher.errors import connection_trouble
from sendit_watcher.locks import MAX_BATCH_ID


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


def _shown(conn: Connection) -> dict[int, BatchStatus]:
    shown = {row.id: row.status for row in status.recent_batches(conn, 1_000_000)}
    conn.rollback()
    return shown


def test_another_clients_advisory_locks_neither_stall_an_import_nor_look_like_one(
        conn: Connection, database: DatabaseConfig) -> None:
    """Another client's pg_advisory_lock(1) made batch 1 look importing and stalled its
    re-import. Ours are two-key locks in a class of their own; theirs (any one-bigint key, and the two-key
    (0, id) and (id, 0)) are not ours."""
    batch_id = batches.enqueue(conn, "incoming", "A")
    conn.commit()
    assert batch_id == 1
    with connect(database, autocommit=True) as other:
        for key in (1, 0, 2**32 + 1):  # 1 = the batch's id
            other.execute("SELECT pg_advisory_lock(%s::bigint)", (key,))
        other.execute("SELECT pg_advisory_lock(0, 1), pg_advisory_lock(1, 0)")
        assert _shown(conn)[batch_id] == BatchStatus.QUEUED
        conn.execute("SET lock_timeout = '3s'")  # a stalled claim fails the test rather than hanging it
        conn.commit()
        with conn.transaction():
            claimed = batches.claim(conn, ["incoming"])
            assert claimed is not None and claimed.id == batch_id
            with connect(database) as observer:  # while this transaction imports it, it is importing
                assert _shown(observer)[batch_id] == BatchStatus.IMPORTING
            batches.finish(conn, claimed, host="h", fingerprint="f", files=1, new_instances=1, removed=0,
                           seconds=0.1, unchanged=False)
        assert _shown(conn)[batch_id] == BatchStatus.DONE
        other.execute("SELECT pg_advisory_unlock_all()")


_ids = itertools.count(1)


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(min_value=2, max_value=MAX_BATCH_ID))
@example(2**31 - 1)
@example(2**31)
@example(2**32 - 1)
@example(2**32)
@example(2**32 + 1)
@example(2**63 >> 2)
@example(MAX_BATCH_ID)
def test_every_batch_id_has_a_lock_of_its_own_that_status_reads_back(
        conn: Connection, database: DatabaseConfig, batch_id: int) -> None:
    """A batch's lock key (classid, objid) maps back to its bigint id in pg_locks, and to no other batch: the
    batch held shows importing, a neighbour whose id shares its low or high 32 bits does not."""
    serial = next(_ids)
    neighbours = {batch_id ^ (1 << 32) if batch_id ^ (1 << 32) <= MAX_BATCH_ID else batch_id - (1 << 32),
                  batch_id ^ 1, batch_id - 1} - {batch_id, 0}
    with conn.transaction():
        for number in (batch_id, *neighbours):
            conn.execute("INSERT INTO batch (id, root, path) VALUES (%s, 'incoming', %s) ON CONFLICT DO NOTHING",
                         (number, f"{serial}-{number}"))
    with conn.transaction(force_rollback=True):
        claimed = batches.claim_id(conn, batch_id)
        assert claimed is not None
        with connect(database) as observer:
            shown = _shown(observer)
        assert shown[batch_id] == BatchStatus.IMPORTING
        assert all(shown[n] != BatchStatus.IMPORTING for n in neighbours), (batch_id, neighbours)
    with conn.transaction():
        conn.execute("DELETE FROM batch WHERE id = ANY(%s)", ([batch_id, *neighbours],))


def test_a_batch_id_outside_the_key_space_is_refused() -> None:
    from sendit_watcher.locks import batch_lock

    for bad in (0, -1, MAX_BATCH_ID + 1):
        with pytest.raises(ValueError, match="outside the advisory-lock key space"):
            batch_lock(bad)
