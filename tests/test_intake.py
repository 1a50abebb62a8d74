"""The intake's timing rules, on a fake clock: settling, finishing, back-off, reconfiguring."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

from sendit_watcher.intake import Intake
from sendit_watcher.walk import newest_change


class FakeClock:
    """A monotonic clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_activity_is_due_for_a_check_after_the_quiet_period_and_not_before() -> None:
    clock = FakeClock()
    intake = Intake(settle_seconds=5, clock=clock)
    intake.activity(("in", "A"))
    assert intake.due_to_check() == []
    clock.advance(5)
    assert intake.due_to_check() == [("in", "A")]
    assert intake.due_to_check() == []  # being checked: not handed out twice
    assert intake.next_deadline() is None  # nothing timed while the check runs
    assert intake.checked(("in", "A"), newest=time.time() - 60, wall_clock=time.time())
    assert intake.pending == 0


def test_new_activity_restarts_the_quiet_period() -> None:
    clock = FakeClock()
    intake = Intake(settle_seconds=10, clock=clock)
    intake.activity(("in", "A"))
    clock.advance(9)
    intake.activity(("in", "A"))
    assert intake.next_deadline() == clock.now + 10


def test_a_recent_ctime_postpones_settling_by_what_is_left_of_the_quiet_period() -> None:
    clock = FakeClock()
    intake = Intake(settle_seconds=30, clock=clock)
    intake.activity(("in", "A"))
    clock.advance(31)
    assert intake.due_to_check() == [("in", "A")]
    assert not intake.checked(("in", "A"), newest=1000.0 - 10, wall_clock=1000.0)  # changed 10 s ago
    assert intake.next_deadline() == clock.now + 20


def test_activity_during_the_check_wins_over_its_answer() -> None:
    clock = FakeClock()
    intake = Intake(settle_seconds=5, clock=clock)
    intake.activity(("in", "A"))
    clock.advance(5)
    assert intake.due_to_check() == [("in", "A")]
    clock.advance(1)
    intake.activity(("in", "A"))  # a file arrived while the stat walk ran
    assert not intake.checked(("in", "A"), newest=0.0, wall_clock=1e9)
    assert intake.next_deadline() == clock.now + 5


def test_a_vanished_settling_folder_is_forgotten() -> None:
    clock = FakeClock()
    intake = Intake(settle_seconds=1, clock=clock)
    intake.activity(("in", "gone"))
    clock.advance(2)
    assert intake.due_to_check() == [("in", "gone")]
    assert not intake.checked(("in", "gone"), newest=None, wall_clock=time.time())
    assert intake.pending == 0


def test_forget_root_drops_every_folder_of_that_root_only() -> None:
    clock = FakeClock()
    intake = Intake(settle_seconds=1, clock=clock)
    intake.activity(("old", "A"))
    intake.finished(("old", "B"))
    intake.activity(("kept", "C"))
    clock.advance(1)
    intake.due_to_check()
    intake.forget_root("old")
    assert set(intake.settling) | set(intake.ready) | set(intake.checking) == {("kept", "C")}


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


def test_overflow_requests_a_rescan_and_a_scan_leaves_the_folders_in_hand_alone() -> None:
    clock = FakeClock()
    intake = Intake(settle_seconds=5, clock=clock)
    assert intake.rescan_requested  # at start
    assert intake.scan_started() == set() and not intake.rescan_requested
    intake.overflow()
    assert intake.rescan_requested
    intake.activity(("r", b"settling"))
    intake.finished(("r", b"finished"))
    intake.enqueued(("r", b"finished"))  # queued: no longer in hand
    intake.finished(("r", b"waiting"))
    assert intake.scan_started() == {("r", b"settling"), ("r", b"waiting")} and not intake.rescan_requested


def test_newest_change_sees_deep_files_and_none_for_a_missing_folder(tmp_path: Path) -> None:
    deep = tmp_path / "A" / "s1" / "s2"
    deep.mkdir(parents=True)
    before = time.time()
    (deep / "late").write_bytes(b"x")
    newest = newest_change(str(tmp_path / "A"))
    assert newest is not None and newest >= before - 1
    assert newest == os.stat(deep / "late").st_ctime
    assert newest_change(str(tmp_path / "missing")) is None


def test_a_folder_only_a_scan_found_carries_the_scan_time_until_an_event_or_its_queueing() -> None:
    began = datetime(2026, 1, 1, tzinfo=UTC)
    intake = Intake(settle_seconds=5, clock=FakeClock())
    intake.finished(("in", "A"), began)
    assert intake.scanned == {("in", "A"): began}
    intake.finished(("in", "A"))  # then an event: queued whatever the scan saw
    assert intake.scanned == {}
    intake.finished(("in", "B"))
    intake.finished(("in", "B"), began)  # an event came first: the scan does not weaken it
    assert intake.scanned == {}
    intake.finished(("in", "C"), began)
    intake.enqueued(("in", "C"))
    intake.finished(("in", "D"), began)
    intake.forget(("in", "D"))
    intake.activity(("in", "E"))  # a late file since the scan: an event, whatever the scan saw
    intake.finished(("in", "E"), began)
    assert intake.scanned == {} and ("in", "E") in intake.ready
    intake.finished(("in", "F"), began)  # waiting to be queued (no database), then a late file arrives
    intake.activity(("in", "F"))
    assert intake.scanned == {} and ("in", "F") in intake.ready
