"""What an operator needs to find trouble: ``status --failed`` (every failed batch and why), ``rejected [FOLDER]``
(rejected files with their reasons), ``import --force`` (read every file again) and ``retry`` of every failed
batch; each against a real database, through the command line."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

from sendit_watcher.cli import main
from sendit_watcher.config import DatabaseConfig
from sendit_watcher.db import Connection
from tests.helpers import make_study, write_config


def run(config: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--config", str(config), *args])
    return code, out.getvalue(), err.getvalue()


def statuses(conn: Connection) -> dict[str, str]:
    rows = dict(conn.execute("SELECT path, status FROM batch").fetchall())
    conn.rollback()
    return rows


def failing_folders(tmp_path: Path, database: DatabaseConfig, conn: Connection, failed: int, done: int
                    ) -> tuple[Path, Path]:
    """``failed`` folders imported while a constraint refuses every instance, then ``done`` folders imported after
    the constraint is gone (newer than the failed ones: the 20 most recent batches are done ones)."""
    root = tmp_path / "incoming"
    config = write_config(tmp_path / "watcher.conf", database, {"incoming": root})
    for n in range(failed):
        make_study(root / f"F{n:02d}", 1)
    for n in range(done):
        make_study(root / f"D{n:02d}", 1)
    conn.execute("ALTER TABLE instance ADD CONSTRAINT provoked_by_test CHECK (instance_number IS NULL) NOT VALID")
    conn.commit()
    assert run(config, "import", "--processes", "1", "--no-progress",
               *(str(root / f"F{n:02d}") for n in range(failed)))[0] == 1
    conn.execute("ALTER TABLE instance DROP CONSTRAINT provoked_by_test")
    conn.commit()
    assert run(config, "import", "--processes", "1", "--no-progress",
               *(str(root / f"D{n:02d}") for n in range(done)))[0] == 0
    return config, root


def test_status_failed_shows_every_failed_batch_and_why(tmp_path: Path, database: DatabaseConfig,
                                                        conn: Connection) -> None:
    config, _ = failing_folders(tmp_path, database, conn, failed=23, done=20)
    code, recent, _ = run(config, "status")
    assert code == 0 and "incoming:F" not in recent  # the 20 most recent are the done ones

    code, table, _ = run(config, "status", "--failed")
    assert code == 0
    shown = {line.split()[2] for line in table.splitlines()[1:] if line.split()[1:2] == ["failed"]}
    assert shown == {f"incoming:F{n:02d}" for n in range(23)}
    errors = table.split("\nerrors:\n")[1].splitlines()
    assert len(errors) == 23 and all("provoked_by_test" in line and "23514" in line for line in errors)
    assert "incoming:D" not in table

    code, text, _ = run(config, "status", "--failed", "--json")
    document = json.loads(text)
    assert code == 0 and len(document["batches"]) == 23
    assert all(b["status"] == "failed" and "provoked_by_test" in b["last_error"] for b in document["batches"])


def test_retry_without_an_id_queues_every_failed_batch(tmp_path: Path, database: DatabaseConfig,
                                                       conn: Connection) -> None:
    config, _ = failing_folders(tmp_path, database, conn, failed=3, done=2)
    outside = tmp_path / "elsewhere" / "X"  # imported by hand from outside every root: no worker takes it
    make_study(outside, 1)
    conn.execute("ALTER TABLE instance ADD CONSTRAINT provoked_by_test CHECK (instance_number IS NULL) NOT VALID")
    conn.commit()
    assert run(config, "import", "--no-progress", str(outside))[0] == 1
    conn.execute("ALTER TABLE instance DROP CONSTRAINT provoked_by_test")
    conn.commit()

    code, out, _ = run(config, "retry")
    assert code == 0
    rows = statuses(conn)
    assert {path: status for path, status in rows.items() if path.startswith(("F", "D"))} == {
        "F00": "queued", "F01": "queued", "F02": "queued", "D00": "done", "D01": "done"}
    assert out.count(": queued again") == 3
    [hand] = [path for path in rows if path.endswith("elsewhere/X")]
    assert rows[hand] == "failed" and f"sendit-watcher import /{hand}" in out

    assert run(config, "import", "--no-progress", f"/{hand}")[0] == 0
    assert run(config, "retry") == (0, "no failed batch\n", "")


def test_rejected_lists_the_rejected_files_with_their_reasons(tmp_path: Path, database: DatabaseConfig) -> None:
    root = tmp_path / "incoming"
    config = write_config(tmp_path / "watcher.conf", database, {"incoming": root})
    make_study(root / "A", 2)
    (root / "A" / "notes.txt").write_text("not DICOM at all, but long enough to be looked at " * 10)
    (root / "A" / "empty.dcm").write_bytes(b"")
    make_study(root / "B", 1)
    (root / "B" / "readme.txt").write_text("not DICOM either " * 20)
    assert run(config, "import", "--no-progress", str(root / "A"), str(root / "B"))[0] == 0

    code, table, _ = run(config, "rejected", str(root / "A"))
    assert code == 0
    lines = [line.split()[:4] for line in table.splitlines()[1:] if line.strip() and not line.startswith("rejected")]
    assert sorted(cells[1:] for cells in lines) == [["incoming:A", "empty.dcm", "empty-file"],
                                                    ["incoming:A", "notes.txt", "not-dicom"]]
    assert "rejected files: 2 (1 empty-file, 1 not-dicom)" in table
    assert run(config, "rejected", "incoming:A")[1] == table  # as status shows the folder

    code, text, _ = run(config, "rejected", "--json")
    every = {(r["folder"], r["path"], r["reason"]) for r in json.loads(text)["rejected"]}
    assert code == 0 and every == {("A", "empty.dcm", "empty-file"), ("A", "notes.txt", "not-dicom"),
                                   ("B", "readme.txt", "not-dicom")}
    assert all(r["detail"] for r in json.loads(text)["rejected"] if r["reason"] == "not-dicom")

    code, _, error = run(config, "rejected", str(root / "NEVER"))
    assert code == 1 and f"{root / 'NEVER'} (incoming:NEVER) was never imported" in error


def test_import_force_reads_every_file_again(tmp_path: Path, database: DatabaseConfig, conn: Connection) -> None:
    root = tmp_path / "incoming"
    make_study(root / "ST", 3)
    main_tags = write_config(tmp_path / "main.conf", database, {"incoming": root}, full_header=False)
    full = write_config(tmp_path / "full.conf", database, {"incoming": root}, full_header=True)
    assert run(main_tags, "import", "--json", str(root / "ST"))[0] == 0

    def headers() -> int:
        count = conn.execute("SELECT count(*) FROM instance WHERE header IS NOT NULL").fetchone()
        conn.rollback()
        return int(count[0]) if count else -1

    ids = conn.execute("SELECT id FROM instance ORDER BY id").fetchall()
    conn.rollback()
    assert headers() == 0
    code, out, _ = run(full, "import", "--json", str(root / "ST"))
    assert code == 0 and json.loads(out)["unchanged"] and headers() == 0  # recorded unchanged: not read

    code, out, _ = run(full, "import", "--json", "--force", str(root / "ST"))
    outcome = json.loads(out)
    assert code == 0 and not outcome["unchanged"] and headers() == 3  # every file read again, with the new setting
    assert outcome["instances"] == 3 and outcome["new_instances"] == 0 and outcome["removed"] == 0
    assert conn.execute("SELECT count(*) FROM instance").fetchone() == (3,) and len(ids) == 3
    assert conn.execute("SELECT count(*) FROM rejected_file").fetchone() == (0,)
    conn.rollback()

    shutil.copytree(root / "ST", root / "COPY")  # its files duplicate ST's instances
    assert run(full, "import", str(root / "COPY"))[0] == 0
    code, out, _ = run(full, "import", "--json", "--force", str(root / "ST"))
    assert code == 0 and json.loads(out)["new_instances"] == 0
    rows = conn.execute("SELECT b.path, count(*) FROM instance i JOIN batch b ON b.id = i.batch GROUP BY b.path"
                        " UNION ALL SELECT b.path || ':' || r.reason, count(*) FROM rejected_file r"
                        " JOIN batch b ON b.id = r.batch GROUP BY 1").fetchall()
    assert sorted(rows) == [("COPY:duplicate", 3), ("ST", 3)]  # read again, the original stays the instance
