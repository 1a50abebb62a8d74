"""Watches inside settling folders: every real directory of a settling folder is watched, no
symbolic link is ever watched nor entered, and nothing outside the root is watched, even for a moment. The watch
table is read from the kernel itself (/proc/self/fdinfo of the inotify descriptor: the inode of each watch)."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pyinotify
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendit_watcher.config import RootConfig, WatcherConfig
from sendit_watcher.db import Connection
from sendit_watcher.intake import LOOK_DELAY, Intake
from sendit_watcher.watcher import Watcher
from tests.fix_service import ServiceProcess
from tests.helpers import done, make_study, scalar, wait_until

EVENTS = pyinotify.IN_CREATE | pyinotify.IN_MOVED_TO | pyinotify.IN_CLOSE_WRITE
FOLDER = ("in", "A")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def kernel_watches(pid: int | str, inotify_fd: int | None = None) -> set[tuple[int, int]]:
    """(device, inode) of every inotify watch the process holds, as the kernel reports them."""
    fdinfos = [Path(f"/proc/{pid}/fdinfo/{inotify_fd}")] if inotify_fd is not None else \
        list(Path(f"/proc/{pid}/fdinfo").iterdir())
    found = set()
    for fdinfo in fdinfos:
        try:
            lines = fdinfo.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("inotify wd:"):
                fields = dict(part.split(":", 1) for part in line.split()[1:])
                sdev = int(fields["sdev"], 16)  # the kernel's dev_t: major << 20 | minor
                found.add((os.makedev(sdev >> 20, sdev & 0xFFFFF), int(fields["ino"], 16)))
    return found


def real_directories(root: Path) -> set[tuple[int, int]]:
    """(device, inode) of the root and of every directory below it, never through a link."""
    found = {(root.lstat().st_dev, root.lstat().st_ino)}
    for path, dirs, _ in os.walk(root):  # os.walk does not follow links by default
        for name in dirs:
            info = os.lstat(os.path.join(path, name))
            if stat.S_ISDIR(info.st_mode):
                found.add((info.st_dev, info.st_ino))
    return found


class Harness:
    """A Watcher on one root with the default processor, its intake on a fake clock."""

    def __init__(self, root: Path, settle: float = 5.0) -> None:
        self.root = root
        self.clock = FakeClock()
        self.intake = Intake(settle, clock=self.clock)
        self.watcher = Watcher(WatcherConfig(settle_seconds=settle), self.intake)
        self.watcher.add_root(RootConfig("in", root, EVENTS, "sendit_watcher.processors.DicomFolderImporter"))

    def drain(self) -> None:
        """Dispatch every event queued so far (the kernel queues them as the file operations happen)."""
        for _ in range(100):
            if not self.watcher.notifier.check_events(0):
                return
            self.watcher.poll(0)
        raise AssertionError("events kept coming")

    def watched(self) -> set[tuple[int, int]]:
        return kernel_watches("self", self.watcher.manager.get_fd())

    def close(self) -> None:
        self.watcher.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    root = tmp_path / "in"
    root.mkdir()
    made = Harness(root)
    yield made
    made.close()


def outside_directory(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    (outside / "one" / "two").mkdir(parents=True, exist_ok=True)
    return outside


def test_links_in_a_new_subfolder_of_a_settling_folder_are_never_watched(harness: Harness, tmp_path: Path) -> None:
    """The reported case: links to /usr and to a folder outside the root in a new sub-folder of a settling one."""
    folder = harness.root / "A"
    folder.mkdir()
    harness.drain()
    assert FOLDER in harness.intake.settling
    (folder / "sub").mkdir()
    os.symlink("/usr", folder / "sub" / "usr")
    os.symlink(outside_directory(tmp_path), folder / "sub" / "outside")
    (folder / "sub" / "file").write_bytes(b"x")
    harness.drain()
    assert harness.watched() == real_directories(harness.root)
    assert len(harness.watcher.manager.watches) == 3  # the root, A and A/sub: nothing else


def test_a_link_swapped_in_for_a_new_directory_before_its_watch_is_added_is_never_watched(harness: Harness,
                                                                                          tmp_path: Path) -> None:
    folder = harness.root / "A"
    folder.mkdir()
    harness.drain()
    (folder / "sub" / "deeper").mkdir(parents=True)  # its IN_CREATE is queued; the watch is added when it is read
    (folder / "sub" / "deeper").rmdir()
    (folder / "sub").rmdir()
    os.symlink("/usr", folder / "sub")  # same name, now a link to a large tree outside the root
    (folder / "other").mkdir()
    os.rename(folder / "other", tmp_path / "moved-away")
    os.symlink(tmp_path / "moved-away", folder / "other")
    harness.drain()
    assert harness.watched() == real_directories(harness.root)
    assert sorted(w.path for w in harness.watcher.manager.watches.values()) == [str(harness.root), str(folder)]


def test_a_deep_tree_made_at_once_is_watched_whole_and_late_files_deep_in_it_restart_the_quiet_period(
        harness: Harness) -> None:
    folder = harness.root / "A"
    folder.mkdir()
    harness.drain()
    deep = folder / "b" / "c" / "d" / "e"
    deep.mkdir(parents=True)  # mkdir -p: b is created before its watch exists, c before b's, ...
    (deep / "first").write_bytes(b"x")
    harness.drain()
    assert harness.watched() == real_directories(harness.root)
    assert len(harness.watched()) == 6
    harness.clock.now += 4  # quiet for 4 of the 5 seconds
    (deep / "late").write_bytes(b"x")
    (deep / "f" / "g").mkdir(parents=True)
    harness.drain()
    assert harness.intake.next_deadline() == harness.clock.now + LOOK_DELAY  # the late file restarts the quiet period
    assert harness.watched() == real_directories(harness.root)
    harness.clock.now += 4
    (deep / "f" / "g" / "later").write_bytes(b"x")  # in a folder made after the first listing
    harness.drain()
    assert harness.intake.next_deadline() == harness.clock.now + LOOK_DELAY


def test_a_subfolder_moved_out_of_the_root_is_watched_no_more_and_one_renamed_inside_keeps_its_events(
        harness: Harness, tmp_path: Path) -> None:
    folder = harness.root / "A"
    folder.mkdir()
    harness.drain()
    (folder / "away" / "below").mkdir(parents=True)
    (folder / "renamed" / "below").mkdir(parents=True)
    harness.drain()
    assert len(harness.watched()) == 6
    os.rename(folder / "away", tmp_path / "away")
    os.rename(folder / "renamed", folder / "new-name")
    harness.drain()
    assert harness.watched() == real_directories(harness.root)
    paths = sorted(w.path for w in harness.watcher.manager.watches.values())
    assert paths == [str(harness.root), str(folder), str(folder / "new-name"), str(folder / "new-name" / "below")]
    harness.clock.now += 4
    (folder / "new-name" / "below" / "late").write_bytes(b"x")
    harness.drain()
    assert harness.intake.next_deadline() == harness.clock.now + LOOK_DELAY
    harness.watcher.unwatch(str(folder))  # settled: every watch inside it goes
    assert harness.watched() == real_directories(harness.root) - real_directories(folder)


def test_a_settling_folder_found_with_links_in_it_watches_its_real_directories_only(harness: Harness,
                                                                                     tmp_path: Path) -> None:
    """watch_inside on a folder that already holds links (catch-up found it young, or a marker folder)."""
    folder = harness.root / "A"
    (folder / "x" / "y").mkdir(parents=True)
    os.symlink("/usr", folder / "x" / "usr")
    os.symlink(folder / "x", folder / "loop")
    os.symlink(outside_directory(tmp_path), folder / "x" / "y" / "out")
    harness.watcher.watch_inside(str(folder))
    assert harness.watched() == real_directories(harness.root)


# A generated tree: each entry is (parent index, kind), parent index into the directories made so far (0 = the
# settling folder); kinds: a directory, a file, or a link to /usr, outside, an ancestor, or a dangling target.
ENTRIES = st.lists(st.tuples(st.integers(0, 20), st.sampled_from(["dir", "dir", "file", "usr", "outside",
                                                                       "ancestor", "dangling"])),
                   min_size=1, max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=ENTRIES, drain_every=st.integers(1, 8))
def test_generated_trees_with_links_never_watch_outside_and_watch_every_real_directory(
        tmp_path_factory: pytest.TempPathFactory, entries: list[tuple[int, str]], drain_every: int) -> None:
    base = tmp_path_factory.mktemp("tree")
    root = base / "in"
    root.mkdir()
    outside = outside_directory(base)
    harness = Harness(root)
    try:
        folder = root / "A"
        folder.mkdir()
        harness.drain()
        directories = [folder]
        for number, (parent_index, kind) in enumerate(entries):
            parent = directories[parent_index % len(directories)]
            path = parent / f"e{number}"
            if kind == "dir":
                path.mkdir()
                directories.append(path)
            elif kind == "file":
                path.write_bytes(b"x")
            else:
                target = {"usr": Path("/usr"), "outside": outside, "ancestor": folder,
                          "dangling": base / "nowhere"}[kind]
                os.symlink(target, path)
            if number % drain_every == 0:  # events read now and then: some folders exist before their parent's watch
                harness.drain()
        harness.drain()
        watched = harness.watched()
        assert watched == real_directories(root)
        assert all(w.path == str(root) or w.path.startswith(str(root) + os.sep)
                   for w in harness.watcher.manager.watches.values())
    finally:
        harness.close()
        shutil.rmtree(base)


def test_the_reported_case_end_to_end(start_service: Callable[..., ServiceProcess], conn: Connection, incoming: Path,
                                      tmp_path: Path) -> None:
    """The service: a folder settling with links to /usr and outside in a new sub-folder is imported, its links
    recorded as `symlink` rejections, and the service holds one watch per real directory while it lingers."""
    service = start_service(settle_seconds=1)
    folder = incoming / "A"
    folder.mkdir()
    make_study(folder / "series1", 3)
    os.symlink("/usr", folder / "series1" / "usr")
    os.symlink(outside_directory(tmp_path), folder / "series1" / "outside")
    make_study(folder / "series1" / "more", 2)
    wait_until(done(conn, "A", 5), what="A imported")
    assert scalar(conn, "SELECT count(*) FROM rejected_file WHERE reason = 'symlink'") == 2
    assert kernel_watches(service.process.pid) == real_directories(incoming)
