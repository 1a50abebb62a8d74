"""The intake's timing rules, on a fake clock: settling, finishing, back-off, reconfiguring."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from sendit_watcher.intake import LOOK_DELAY, Intake
from sendit_watcher.walk import change_stamp, newest_change


class FakeClock:
    """A monotonic clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def look(intake: Intake, clock: FakeClock, folder: tuple[str, str], stamp: str | None) -> bool:
    """Advance to the folder's next look, take it with ``stamp``; whether the folder settled."""
    due = intake.settling[folder]
    clock.now = max(clock.now, due)
    assert intake.due_to_check() == [folder]
    return intake.checked(folder, stamp)


def test_a_folder_settles_when_two_looks_settle_seconds_apart_see_the_same_stamp_and_no_event_came() -> None:
    clock = FakeClock()
    intake = Intake(settle_seconds=5, clock=clock)
    intake.activity(("in", "A"))
    assert intake.due_to_check() == []
    assert intake.next_deadline() == clock.now + LOOK_DELAY  # the first look soon after the events pause
    clock.advance(LOOK_DELAY)
    assert intake.due_to_check() == [("in", "A")]
    assert intake.due_to_check() == []  # being looked at: not handed out twice
    assert intake.next_deadline() is None  # nothing timed while the look runs
    assert not intake.checked(("in", "A"), "s1")  # first look: the quiet period starts now
    assert intake.next_deadline() == clock.now + 5
    clock.advance(4.9)
    assert intake.due_to_check() == []
    assert look(intake, clock, ("in", "A"), "s1")
    assert intake.pending == 0 and intake.looks == {}


def test_new_activity_restarts_the_quiet_period() -> None:
    clock = FakeClock()
    intake = Intake(settle_seconds=10, clock=clock)
    intake.activity(("in", "A"))
    assert not look(intake, clock, ("in", "A"), "s1")
    clock.advance(9)
    intake.activity(("in", "A"))  # an event counts as a change even if the stamp comes out the same
    assert not look(intake, clock, ("in", "A"), "s1")
    assert intake.next_deadline() == clock.now - LOOK_DELAY + 10  # 10 s after the event
    assert look(intake, clock, ("in", "A"), "s1")


def test_a_changed_stamp_restarts_the_quiet_period_however_old_the_timestamps_look() -> None:
    clock = FakeClock()
    intake = Intake(settle_seconds=30, clock=clock)
    intake.activity(("in", "A"))
    assert not look(intake, clock, ("in", "A"), "s1")
    assert not look(intake, clock, ("in", "A"), "s2")  # changed without an event (NFS, an unwatched folder)
    assert intake.next_deadline() == clock.now + 30
    assert look(intake, clock, ("in", "A"), "s2")


def test_activity_during_the_look_wins_over_its_answer() -> None:
    clock = FakeClock()
    intake = Intake(settle_seconds=5, clock=clock)
    intake.activity(("in", "A"))
    assert not look(intake, clock, ("in", "A"), "s1")
    clock.now = intake.settling[("in", "A")]
    assert intake.due_to_check() == [("in", "A")]
    clock.advance(1)
    intake.activity(("in", "A"))  # a file arrived while the stat walk ran
    assert not intake.checked(("in", "A"), "s1")
    assert intake.next_deadline() == clock.now + LOOK_DELAY


def test_a_vanished_settling_folder_is_forgotten() -> None:
    clock = FakeClock()
    intake = Intake(settle_seconds=1, clock=clock)
    intake.activity(("in", "gone"))
    assert not look(intake, clock, ("in", "gone"), None)
    assert intake.pending == 0 and intake.looks == {}


@given(st.lists(st.tuples(st.floats(0, 20), st.booleans(), st.booleans()), max_size=30), st.floats(0.5, 10))
def test_settled_only_after_settle_seconds_without_a_seen_change_and_always_then(
        steps: list[tuple[float, bool, bool]], settle: float) -> None:
    """Property: whatever the events and stamp changes, a folder settles at a look exactly when neither an
    event nor a stamp change has been seen for settle_seconds (by this clock), and a folder that stops changing
    always settles within settle_seconds + LOOK_DELAY + one look."""
    clock = FakeClock()
    intake = Intake(settle_seconds=settle, clock=clock)
    folder = ("in", "A")
    intake.activity(folder)
    last_change, stamp, seen = clock.now, 0, None
    for wait, event, change in steps:
        clock.advance(wait)
        if change:
            stamp += 1
        if event:
            intake.activity(folder)
            last_change = clock.now
        if folder in intake.settling and intake.settling[folder] <= clock.now:
            assert intake.due_to_check() == [folder]
            if seen != stamp:
                last_change = max(last_change, clock.now)  # what a look can see: a change before it
            seen = stamp
            settled = intake.checked(folder, str(stamp))
            assert settled == (clock.now >= last_change + settle)
            if settled:
                return
    quiet_from = clock.now
    for _ in range(3):
        if look(intake, clock, folder, str(stamp)):
            assert clock.now <= quiet_from + settle + LOOK_DELAY + settle
            return
    raise AssertionError("a folder that stopped changing never settled")


def test_a_file_with_a_future_timestamp_does_not_hold_the_folder_up(tmp_path: Path) -> None:
    """Clock skew: a folder whose file is dated an hour ahead settles after settle_seconds of this clock, like
    any other. The settle rule compares no timestamp with any clock (a ctime in the future is the same case; a
    test cannot set a ctime, so the mtime stands in for it): a look's stamp only has to equal the last one's."""
    folder = tmp_path / "A"
    folder.mkdir()
    (folder / "skewed").write_bytes(b"x")
    future = time.time() + 3600
    os.utime(folder / "skewed", (future, future))
    clock = FakeClock()
    intake = Intake(settle_seconds=5, clock=clock)
    intake.activity(("in", "A"))
    assert not look(intake, clock, ("in", "A"), change_stamp(str(folder)))
    assert look(intake, clock, ("in", "A"), change_stamp(str(folder)))


def test_the_change_stamp_sees_every_change_even_one_dated_in_the_past(tmp_path: Path) -> None:
    folder = tmp_path / "A"
    (folder / "s1" / "s2").mkdir(parents=True)
    (folder / "s1" / "s2" / "f").write_bytes(b"x")
    first = change_stamp(str(folder))
    assert first is not None and change_stamp(str(folder)) == first
    os.utime(folder / "s1" / "s2" / "f", (0, 0))  # an mtime stepped back: still a change (and a new ctime)
    second = change_stamp(str(folder))
    assert second != first
    (folder / "s1" / "s2" / "f").write_bytes(b"y")  # same size, rewritten
    os.utime(folder / "s1" / "s2" / "f", (0, 0))
    assert change_stamp(str(folder)) != second
    os.symlink("/usr", folder / "s1" / "link")  # a link is an entry, never followed
    assert change_stamp(str(folder)) not in (first, second)
    assert change_stamp(str(tmp_path / "missing")) is None


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
    assert not look(intake, clock, ("in", "A"), "s1")
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


def test_a_young_folder_only_a_scan_found_keeps_the_scan_time_until_it_settles_unless_it_changes() -> None:
    """Settled without a change this service saw, a folder a scan found young is queued as that scan found it
    (its time): before, its youth dropped the time, and a batch that failed after the scan read it was queued
    again with nothing changed."""
    began = datetime(2026, 1, 1, tzinfo=UTC)
    clock = FakeClock()
    intake = Intake(settle_seconds=5, clock=clock)
    quiet, looked_changed, evented, in_hand = ("in", "Q"), ("in", "L"), ("in", "E"), ("in", "H")
    intake.activity(in_hand)  # an event first: the scan does not weaken it
    for folder in (quiet, looked_changed, evented, in_hand):
        intake.young(folder, began)
    assert intake.scanned == {quiet: began, looked_changed: began, evented: began}
    intake.activity(evented)
    stamps = {quiet: "sss", looked_changed: "stt", evented: "sss", in_hand: "sss"}
    for turn in range(3):  # every folder looked at, in step, until each has settled
        clock.now = max([clock.now, *intake.settling.values()])
        for folder in intake.due_to_check():
            if intake.checked(folder, stamps[folder][turn]):
                intake.finished(folder, intake.scan_time(folder))  # what the service does with a settled folder
    assert not intake.settling and set(stamps) <= set(intake.ready)
    assert intake.scanned == {quiet: began}
