"""The intake's timing rules, on a fake clock: settling, finishing, back-off, reconfiguring."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sendit_watcher.intake import Intake, newest_change


class FakeClock:
    """A monotonic clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def folder_with_file(tmp_path: Path, name: str = "A") -> Path:
    """A folder holding one file written now (a ctime cannot be set back: tests wait where they need it older)."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "f").write_bytes(b"x")
    return folder


def test_activity_settles_after_the_quiet_period_and_not_before(tmp_path: Path) -> None:
    clock = FakeClock()
    intake = Intake(settle_seconds=0.05, clock=clock)
    folder = folder_with_file(tmp_path)
    time.sleep(0.06)  # the file's real ctime must be older than the settle period too
    intake.activity(("in", "A"))
    assert list(intake.settled(lambda f: str(folder))) == []
    clock.advance(0.05)
    assert list(intake.settled(lambda f: str(folder))) == [("in", "A")]
    assert intake.pending == 0


def test_new_activity_restarts_the_quiet_period(tmp_path: Path) -> None:
    clock = FakeClock()
    intake = Intake(settle_seconds=10, clock=clock)
    intake.activity(("in", "A"))
    clock.advance(9)
    intake.activity(("in", "A"))
    assert intake.next_deadline() == clock.now + 10


def test_a_recent_ctime_postpones_settling_even_when_the_clock_says_quiet(tmp_path: Path) -> None:
    clock = FakeClock()
    intake = Intake(settle_seconds=30, clock=clock)
    folder = folder_with_file(tmp_path)  # its files changed just now
    intake.activity(("in", "A"))
    clock.advance(31)
    assert list(intake.settled(lambda f: str(folder))) == []
    due = intake.next_deadline()
    assert due is not None and clock.now < due <= clock.now + 30


def test_a_vanished_settling_folder_is_forgotten(tmp_path: Path) -> None:
    clock = FakeClock()
    intake = Intake(settle_seconds=1, clock=clock)
    intake.activity(("in", "gone"))
    clock.advance(2)
    assert list(intake.settled(lambda f: str(tmp_path / "gone"))) == []
    assert intake.pending == 0


def test_finished_wins_over_settling_and_is_due_at_once() -> None:
    clock = FakeClock()
    intake = Intake(settle_seconds=5, clock=clock)
    intake.activity(("in", "A"))
    intake.finished(("in", "A"))
    intake.activity(("in", "A"))  # late events of a renamed folder do not send it back to settling
    assert intake.due_for_enqueue() == [("in", "A")]
    assert intake.settling == {}


def test_retry_later_backs_off_doubling_up_to_the_cap() -> None:
    clock = FakeClock()
    intake = Intake(settle_seconds=5, clock=clock)
    intake.finished(("in", "A"))
    waits = []
    for _ in range(8):
        intake.retry_later(("in", "A"), cap=30)
        waits.append(intake.ready[("in", "A")] - clock.now)
    assert waits == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert intake.due_for_enqueue() == []
    clock.advance(30)
    assert intake.due_for_enqueue() == [("in", "A")]
    intake.enqueued(("in", "A"))
    assert intake.pending == 0 and intake.failures == {}


def test_forget_drops_every_trace() -> None:
    intake = Intake(settle_seconds=5, clock=FakeClock())
    intake.finished(("in", "A"))
    intake.retry_later(("in", "A"))
    intake.forget(("in", "A"))
    assert intake.pending == 0 and intake.failures == {} and intake.next_deadline() is None


def test_reconfigure_changes_the_settle_period_of_later_activity() -> None:
    clock = FakeClock()
    intake = Intake(settle_seconds=5, clock=clock)
    intake.reconfigure(settle_seconds=42)
    intake.activity(("in", "A"))
    assert intake.next_deadline() == clock.now + 42


def test_overflow_requests_a_rescan() -> None:
    intake = Intake(settle_seconds=5, clock=FakeClock())
    intake.rescan_requested = False
    intake.overflow()
    assert intake.rescan_requested


def test_newest_change_sees_deep_files_and_none_for_a_missing_folder(tmp_path: Path) -> None:
    deep = tmp_path / "A" / "s1" / "s2"
    deep.mkdir(parents=True)
    before = time.time()
    (deep / "late").write_bytes(b"x")
    newest = newest_change(str(tmp_path / "A"))
    assert newest is not None and newest >= before - 1
    assert newest == os.stat(deep / "late").st_ctime
    assert newest_change(str(tmp_path / "missing")) is None
