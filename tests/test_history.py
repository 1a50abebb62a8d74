"""History does not change what the catch-up scan decides, nor what `status` and `metrics` count: the scan reads only
the rows of the folders on disk and of those that may be gone, and the counts come from batch_tally; for generated
histories of folders written, deleted, recreated, imported, failed and retried, both equal the full comparison over
every row (hypothesis), and named cases for a recreated name, the hand-off and a schema migrated from before the
tally."""

from __future__ import annotations

import shutil
import uuid
from decimal import Decimal
from itertools import count
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg import sql

from sendit_watcher import batches, catchup, metrics, roots, status
from sendit_watcher.batch_import import import_next
from sendit_watcher.batches import BatchStatus, Known
from sendit_watcher.catchup import ScanResult, scan_roots
from sendit_watcher.config import Config, DatabaseConfig
from sendit_watcher.db import Connection, connect
from sendit_watcher.migrate import available, migrate
from sendit_watcher.names import to_text
from sendit_watcher.parsers import InlineParser
from sendit_watcher.walk import fingerprint, walk
from tests.helpers import make_config, make_study

ROOT = "incoming"
HOST = "test-host"  # make_config's host
NAMES = ("A", "B")  # few names, so that histories revisit them
_bytes = count(1)


def full_known(conn: Connection) -> dict[str, Known]:
    """Every row of the root, as the scan read them before: the reference the scan's decisions must match."""
    rows = conn.execute("SELECT path, CASE WHEN status = 'failed' THEN failed_fingerprint ELSE fingerprint END,"
                        " status, removal, %s = ANY(seen_on), seen_on <> '{}', coalesce(coalesce(finished_at,"
                        " queued_at) < now() - make_interval(secs => %s), false) AND EXISTS (SELECT 1 FROM"
                        " root_identity r WHERE r.root = batch.root AND r.host = batch.host AND r.shared),"
                        " coalesce(host <> %s, false), coalesce(fingerprint, '0:') NOT LIKE '0:%%'"
                        " FROM batch WHERE root = %s", (HOST, batches.SHARE_CACHE_SECONDS, HOST, ROOT)).fetchall()
    conn.rollback()
    return {path: Known(stamp, BatchStatus(state), removal, seen, not seen and (hosts or has_rows), settled,
                        by_another)
            for path, stamp, state, removal, seen, hosts, settled, by_another, has_rows in rows}


def decisions(result: ScanResult) -> dict[str, list[object]]:
    return {"changed": sorted(result.changed), "gone": sorted(result.gone), "waiting": sorted(result.waiting),
            "young": sorted(result.young), "seen_failed": sorted(result.seen_failed)}


def scan(config: Config) -> ScanResult:
    watch = config.watches[0]
    result = scan_roots(config.database, {ROOT: watch}, config.watcher.host_name, config.watcher.is_temporary, 0.0,
                        set())
    assert result.error is None
    return result


def reference_scan(conn: Connection, config: Config) -> ScanResult:
    """The same scan over every row of the root (no row left out)."""
    watch = config.watches[0]
    entries = catchup._list_root(watch)
    assert entries is not None
    result = ScanResult()
    catchup._scan_root(watch, entries, full_known(conn), config.watcher.is_temporary, 0.0, set(), result)
    return result


def queue(conn: Connection, result: ScanResult) -> None:
    """What the service does with a scan's result."""
    for root, name in result.changed:
        assert batches.enqueue(conn, root, to_text(name), result.scan_began((root, name))) is not None
    for root, name in result.gone:
        assert batches.enqueue_known(conn, root, to_text(name), host=HOST) is not None


def import_all(conn: Connection, config: Config) -> None:
    while import_next(conn, config, InlineParser()) is not None:
        pass


def fail(conn: Connection, config: Config, name: str) -> None:
    """Record a failure of the folder's batch, as a worker whose import failed does."""
    row = conn.execute("SELECT id FROM batch WHERE root = %s AND path = %s", (ROOT, name)).fetchone()
    conn.rollback()
    if row is None:
        return
    batch = batches.claim_id(conn, row[0])
    conn.rollback()
    assert batch is not None
    folder = config.watches[0].path / name
    stamp = fingerprint(walk(str(folder))) if folder.is_dir() else None
    batches.record_failure(conn, batch, "test-host", "ImportFailed: generated failure", stamp)


def full_tally(conn: Connection) -> list[tuple[object, ...]]:
    rows = conn.execute("SELECT status, coalesce(host, ''), count(*), sum(files), sum(instances), sum(rejected),"
                        " round(coalesce(sum(seconds), 0)::numeric, 6), sum(attempts)"
                        " FROM batch GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
    conn.rollback()
    return [tuple(row) for row in rows]


def tallied(conn: Connection) -> list[tuple[object, ...]]:
    return [(str(t.status), t.host, t.batches, t.files, t.instances, t.rejected,
             round(Decimal(t.seconds), 6), t.attempts) for t in batches.tally(conn)]


def apply(operation: tuple[str, int, int], conn: Connection, config: Config, root: Path) -> None:
    kind, which, size = operation
    name = NAMES[which]
    folder = root / name
    if kind == "write":
        folder.mkdir(exist_ok=True)
        (folder / f"f{next(_bytes)}").write_bytes(b"x" * size)
    elif kind == "mkdir":
        folder.mkdir(exist_ok=True)
    elif kind == "delete":
        shutil.rmtree(folder, ignore_errors=True)
    elif kind == "scan":
        queue(conn, scan(config))
    elif kind == "import":
        import_all(conn, config)
    elif kind == "fail":
        fail(conn, config, name)
    elif kind == "retry":
        row = conn.execute("SELECT id FROM batch WHERE path = %s", (name,)).fetchone()
        conn.rollback()
        if row is not None:
            batches.retry(conn, row[0])
    elif kind == "fold":
        batches.fold_tally(conn)


OPERATIONS = st.lists(st.tuples(st.sampled_from(["write", "mkdir", "delete", "scan", "import", "fail", "retry",
                                                 "fold"]),
                                st.integers(0, len(NAMES) - 1), st.integers(0, 3)), max_size=20)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=OPERATIONS)
@example(operations=[("write", 0, 1), ("scan", 0, 0), ("fail", 0, 0), ("delete", 0, 0)])  # failed on first try
@example(operations=[("write", 0, 1), ("scan", 0, 0), ("import", 0, 0), ("write", 0, 2), ("fail", 0, 0),
                     ("delete", 0, 0), ("scan", 0, 0), ("mkdir", 0, 0), ("scan", 0, 0), ("import", 0, 0),
                     ("write", 0, 1), ("retry", 0, 0)])
def test_scan_decisions_and_counts_equal_the_full_comparison_for_any_history(
        operations: list[tuple[str, int, int]], database: DatabaseConfig, conn: Connection, tmp_path: Path) -> None:
    # root_identity too: each example makes its root anew, which a recorded identity would call lost.
    conn.execute("TRUNCATE rejected_file, instance, batch, batch_tally, root_identity CASCADE")
    conn.commit()
    root = tmp_path / "incoming"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    config = make_config(database, {ROOT: root})
    roots.adopt(conn, HOST, config.watches[0])  # proven: what is missing from it is gone (the scan decides)
    for operation in [*operations, ("scan", 0, 0), ("import", 0, 0)]:
        apply(operation, conn, config, root)
        assert decisions(scan(config)) == decisions(reference_scan(conn, config)), operation
        assert tallied(conn) == full_tally(conn), operation


def test_a_deleted_folder_is_left_out_of_the_scan_and_its_name_recreated_is_imported_as_new(
        database: DatabaseConfig, conn: Connection, tmp_path: Path) -> None:
    root = tmp_path / "incoming"
    config = make_config(database, {ROOT: root})
    make_study(root / "A", 3)
    queue(conn, scan(config))
    import_all(conn, config)
    imported = batches.latest_seq(conn)
    shutil.rmtree(root / "A")
    result = scan(config)
    assert result.gone == [(ROOT, "A")]
    queue(conn, result)
    import_all(conn, config)
    removal = batches.finished_after(conn, imported)
    assert [(r["folder"], r["status"], r["removed"], r["instances"]) for r in removal] == [("A", "empty", 3, 0)]
    now = batches.database_time(conn)
    assert "A" not in batches.known_folders(conn, ROOT, [], now, HOST)  # its row is no longer read by a scan...
    assert decisions(scan(config)) == decisions(ScanResult())  # ...and nothing is decided about it
    make_study(root / "A", 2)
    result = scan(config)
    assert result.changed == [(ROOT, "A")]
    queue(conn, result)
    import_all(conn, config)
    again = batches.finished_after(conn, removal[-1]["seq"])
    assert [(r["folder"], r["status"], r["instances"], r["new_instances"]) for r in again] == [("A", "done", 2, 2)]


def test_status_and_metrics_count_every_batch_by_status_and_host(database: DatabaseConfig, conn: Connection,
                                                                 tmp_path: Path) -> None:
    root = tmp_path / "incoming"
    config = make_config(database, {ROOT: root})
    for name in ("A", "B", "C"):
        make_study(root / name, 2)
    queue(conn, scan(config))
    import_all(conn, config)
    shutil.rmtree(root / "B")
    queue(conn, scan(config))
    import_all(conn, config)
    fail(conn, config, "C")
    batches.enqueue(conn, ROOT, "D")
    totals = status.totals(conn)
    assert totals.batches == {"done": 1, "empty": 1, "failed": 1, "queued": 1}
    assert totals.instances == 4
    text = metrics.render(conn)
    assert 'sendit_batches{status="done",host="test-host"} 1' in text
    assert 'sendit_batches{status="empty",host="test-host"} 1' in text
    assert 'sendit_batches{status="failed",host="test-host"} 1' in text
    assert 'sendit_batches{status="queued",host=""} 1' in text
    assert 'sendit_instances{status="done",host="test-host"} 2' in text
    assert 'sendit_import_failures{status="failed",host="test-host"} 1' in text
    assert "sendit_queue_depth 1" in text
    counts = batches.queue_counts(conn)
    assert (counts.queued, counts.finished, counts.failed) == (1, 2, 1)


def test_a_schema_migrated_from_before_the_tally_counts_its_existing_rows(test_dsn: str) -> None:
    database = DatabaseConfig(dsn=test_dsn, schema=f"m_{uuid.uuid4().hex[:10]}")
    before = [m for m in available() if m.version < 7]
    try:
        with connect(database) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(database.schema)))
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(database.schema)))
            conn.execute("CREATE TABLE schema_migration (version integer PRIMARY KEY, name text NOT NULL,"
                         " applied_at timestamptz NOT NULL DEFAULT now())")
            for migration in before:
                conn.execute(migration.text.encode())
                conn.execute("INSERT INTO schema_migration (version, name) VALUES (%s, %s)",
                             (migration.version, migration.name))
            conn.execute("INSERT INTO batch (root, path, status, files, instances, host, seconds, attempts)"
                         " SELECT 'r', 'p' || g, (ARRAY['done', 'empty', 'failed', 'queued'])[1 + g % 4],"
                         " g % 7, g % 5, CASE WHEN g % 3 = 0 THEN NULL ELSE 'h' || g % 2 END, g / 10.0, g % 2"
                         " FROM generate_series(1, 500) AS g")
            conn.commit()
            assert [m.version for m in migrate(conn, database.schema)] == [
                m.version for m in available() if m.version >= 7]
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(database.schema)))
            assert tallied(conn) == full_tally(conn)
            assert sum(t.batches for t in batches.tally(conn)) == 500
    finally:
        with connect(database, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(database.schema)))
