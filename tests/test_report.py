"""What people read on a terminal: summary lines, JSON outcomes, the status table, the progress bar."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

from sendit_watcher.batch_import import Failure
from sendit_watcher.batches import BatchStatus
from sendit_watcher.importer import Result
from sendit_watcher.report import Progress, outcome_json, status_json, status_table, summary_line
from sendit_watcher.status import BatchRow, Totals

DONE = Result(7, "incoming", "A", BatchStatus.DONE, 120, 118, 118, 2, 0.5)


def test_summary_line_of_a_done_folder() -> None:
    assert summary_line("/data/A", DONE) == ("/data/A: done, 120 files, 118 instances (118 new), 2 rejected, "
                                             "0.50 s, 240 files/s (batch 7)")


def test_summary_line_of_an_unchanged_and_of_a_failed_folder() -> None:
    unchanged = Result(7, "incoming", "A", BatchStatus.DONE, 120, 118, 0, 2, 0.01, unchanged=True)
    assert summary_line("/data/A", unchanged) == "/data/A: unchanged since its last import (batch 7, 120 files)"
    failure = Failure(8, "incoming", "B", "ImportFailed: folder is gone")
    assert summary_line("/data/B", failure) == "/data/B: failed (batch 8): ImportFailed: folder is gone"


def test_outcome_json_is_one_object_with_the_status_as_text() -> None:
    record = json.loads(outcome_json("/data/A", DONE))
    assert record["folder"] == "/data/A" and record["status"] == "done" and record["files_per_second"] == 240.0
    failed = json.loads(outcome_json("/data/B", Failure(8, "incoming", "B", "boom")))
    assert failed["status"] == "failed" and failed["error"] == "boom"


def rows() -> list[BatchRow]:
    finished = datetime(2026, 11, 29, 1, 2, 3, tzinfo=UTC)
    return [BatchRow(1, "incoming", "A", BatchStatus.DONE, 10, 10, 0, 0.25, finished, "h1", None),
            BatchRow(2, "incoming", "B", BatchStatus.FAILED, 0, 0, 0, None, finished, "h2", "database said no")]


def test_status_table_aligns_columns_and_lists_errors() -> None:
    totals = Totals({"done": 1, "failed": 1}, 1, 1, 1, 10, 0, None)
    text = status_table(rows(), totals)
    header, first, second = text.splitlines()[:3]
    assert header.split() == ["ID", "STATUS", "ROOT:FOLDER", "FILES", "INSTANCES", "REJECTED", "SECONDS",
                              "FINISHED", "HOST"]
    assert first.index("incoming:A") == header.index("ROOT:FOLDER") == second.index("incoming:B")
    assert "batches: 1 done, 1 failed" in text and "10 instances" in text
    assert text.endswith("errors:\nbatch 2: database said no")


def test_status_table_without_batches_says_so() -> None:
    assert "(no batches yet)" in status_table([], Totals({}, 0, 0, 0, 0, 0, None))


def test_status_json_round_trips() -> None:
    document = json.loads(status_json(rows(), Totals({"done": 1}, 1, 1, 1, 10, 0, None)))
    assert [b["status"] for b in document["batches"]] == ["done", "failed"]
    assert document["totals"]["instances"] == 10


def test_progress_draws_on_a_terminal_and_clears_itself() -> None:
    stream = io.StringIO()
    progress = Progress("A", stream, enabled=True)
    progress(5, 10)
    progress(10, 10)
    progress.clear()
    text = stream.getvalue()
    assert "\rA [###############...............] 5/10" in text and "10/10" in text and text.endswith("\r\033[K")


def test_progress_is_silent_when_disabled() -> None:
    stream = io.StringIO()
    progress = Progress("A", stream, enabled=False)
    progress(10, 10)
    progress.clear()
    assert stream.getvalue() == ""
