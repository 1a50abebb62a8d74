"""What people read on a terminal: the progress bar, one summary line per folder, the status table."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict
from datetime import datetime
from typing import Any, TextIO

from sendit_watcher.batch_import import Failure, Outcome
from sendit_watcher.batches import BatchStatus
from sendit_watcher.importer import Result
from sendit_watcher.roots import RootRecord
from sendit_watcher.status import BatchRow, RejectedRow, Totals

__all__ = ["Progress", "summary_line", "outcome_json", "status_table", "status_json", "rejected_table",
           "rejected_json"]


class Progress:
    """A one-line progress bar on a terminal, redrawn at most 10 times a second; silent elsewhere."""

    def __init__(self, label: str, stream: TextIO = sys.stderr, enabled: bool | None = None) -> None:
        self.label = label
        self.stream = stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self._drawn = 0.0
        self._started = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._drawn < 0.1 and done < total):
            return
        self._drawn = now
        width = 30
        filled = width * done // max(total, 1)
        rate = done / max(now - self._started, 1e-9)
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {rate:,.0f}/s")
        self.stream.flush()

    def clear(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()


def summary_line(folder: str, outcome: Outcome) -> str:
    """``/data/A: done, 120 files, 118 instances (118 new), 2 rejected, 0.41 s, 293 files/s``."""
    if isinstance(outcome, Failure):
        return f"{folder}: failed (batch {outcome.batch_id}): {outcome.error}"
    if outcome.unchanged:
        return f"{folder}: unchanged since its last import (batch {outcome.batch_id}, {outcome.files} files)"
    removed = f", {outcome.removed:,} removed (gone from disk)" if outcome.removed else ""
    return (f"{folder}: {outcome.status}, {outcome.files:,} files, {outcome.instances:,} instances "
            f"({outcome.new_instances:,} new), {outcome.rejected:,} rejected{removed}, {outcome.seconds:.2f} s, "
            f"{outcome.files_per_second:,.0f} files/s (batch {outcome.batch_id})")


def outcome_json(folder: str, outcome: Outcome) -> str:
    """One JSON object per folder, for scripts."""
    record: dict[str, Any] = {"folder": folder, **asdict(outcome)}
    if isinstance(outcome, Result):
        record["files_per_second"] = round(outcome.files_per_second, 1)
    return json.dumps(record, sort_keys=True)


def status_table(rows: list[BatchRow], totals: Totals, roots: Iterable[RootRecord] = ()) -> str:
    """Recent batches as an aligned table, then the totals, then the roots lost on some host."""
    header = ("ID", "STATUS", "ROOT:FOLDER", "FILES", "INSTANCES", "REJECTED", "SECONDS", "FINISHED", "HOST")
    lines = [header] + [_cells(row) for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines]
    if len(lines) == 1:
        text.append("(no batches yet)")
    by_status = ", ".join(f"{n:,} {status}" for status, n in sorted(totals.batches.items())) or "none"
    text += ["", f"batches: {by_status}",
             f"rows: {totals.patients:,} patients, {totals.studies:,} studies, {totals.series:,} series, "
             f"{totals.instances:,} instances, {totals.rejected:,} rejected files"]
    errors = [f"batch {row.id}: {row.last_error}" for row in rows
              if row.status == BatchStatus.FAILED and row.last_error]
    lost = [f"{root.root} on {root.host}: {root.lost_reason} (since {_when(root.lost_since)}); its rows are kept"
            for root in roots if root.lost_reason is not None]
    return "\n".join(text + (["", "errors:"] + errors if errors else []) + (["", "LOST ROOTS:"] + lost if lost else []))


def _cells(row: BatchRow) -> tuple[str, ...]:
    return (str(row.id), row.status, f"{row.root}:{row.path}", f"{row.files:,}", f"{row.instances:,}",
            f"{row.rejected:,}", "" if row.seconds is None else f"{row.seconds:.2f}", _when(row.finished_at),
            row.host or "")


def _when(moment: datetime | None) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment else ""


def status_json(rows: Iterable[BatchRow], totals: Totals, roots: Iterable[RootRecord] = ()) -> str:
    """The same as the table, as one JSON document; ``lost_roots``: each root lost on a host, why and since when."""
    lost = [{"root": r.root, "host": r.host, "reason": r.lost_reason, "since": r.lost_since}
            for r in roots if r.lost_reason is not None]
    return json.dumps({"batches": [asdict(row) for row in rows], "totals": asdict(totals), "lost_roots": lost},
                      default=str, indent=2)


def rejected_table(rows: list[RejectedRow]) -> str:
    """Rejected files as an aligned table (batch, folder, file, reason, detail), then their count by reason."""
    header = ("BATCH", "ROOT:FOLDER", "FILE", "REASON", "DETAIL")
    lines = [header] + [(str(r.batch), f"{r.root}:{r.folder}", r.path, r.reason, r.detail) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.reason] = counts.get(row.reason, 0) + 1
    by_reason = ", ".join(f"{n:,} {reason}" for reason, n in sorted(counts.items()))
    return "\n".join(text + ["", f"rejected files: {len(rows):,}" + (f" ({by_reason})" if by_reason else "")])


def rejected_json(rows: Iterable[RejectedRow]) -> str:
    """The same as the table, as one JSON document."""
    return json.dumps({"rejected": [asdict(row) for row in rows]}, default=str, indent=2)
