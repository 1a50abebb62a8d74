"""Property-based tests (hypothesis) of generated folder trees, through the public `import` command.

Generated folder trees (deep, wide, names that are not UTF-8 or collide once escaped, symlinks at every level to
inside and outside, FIFOs, files changing during the import): every entry one row, no two names one row, and
nothing outside the folder is ever read (an outside DICOM canary, an outside FIFO nobody may open, atimes).

Hypothesis shares the test's schema between examples; each example imports a folder of its own and compares the
rows of that folder's batch only. helpers.examples says how many examples run and how to soak or shrink them.
"""

from __future__ import annotations

import contextlib
import errno
import io
import itertools
import os
import stat
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from sendit_watcher import names
from sendit_watcher.config import DatabaseConfig
from sendit_watcher.db import Connection
from tests.helpers import (
    BatchRows,
    check_accounting,
    dataset_bytes,
    examples,
    import_and_check_accounting,
    import_by_command,
    rows_of,
    run_import,
    uid,
    write_config,
)

_example = itertools.count(1)

NAME_PIECES = [b"a", b"IM0001.dcm", b"\xff\xfe", b"\xff", b"\\xff", b"\\", b"\\\\", b"\n", b"x\ny", b"\xe9t\xe9",
               b"caf\xc3\xa9", b"\xed\xa0\x80", b" ", b"-", b"..x", b"\\x", b"\\xFF", b"\x01"]


@dataclass
class Tree:
    """What a generated folder holds, by relative path (bytes): 'dicom', 'junk', 'empty', 'fifo', 'symlink'."""

    entries: dict[bytes, str] = field(default_factory=dict)
    sops: dict[bytes, str] = field(default_factory=dict)
    dirs: list[bytes] = field(default_factory=list)


@dataclass
class Outside:
    """What lies next to the batch folder, outside it: a DICOM canary, a directory holding one, a FIFO."""

    dicom: Path
    directory: Path
    fifo: Path
    sop: str
    inner_sop: str


def name_strategy() -> st.SearchStrategy[bytes]:
    return st.lists(st.sampled_from(NAME_PIECES), min_size=1, max_size=3).map(b"".join).filter(
        lambda n: n not in (b".", b"..") and len(n) < 200)


@st.composite
def tree_specs(draw: st.DrawFn, depth: int = 3) -> list[tuple[bytes, Any]]:
    """A directory: (name, kind) with kind a string, or a nested list for a sub-directory."""
    names_ = draw(st.lists(name_strategy(), min_size=0, max_size=6, unique=True))
    entries: list[tuple[bytes, Any]] = []
    for name in names_:
        kinds = ["dicom", "dicom", "junk", "empty", "fifo", "link-file", "link-dir", "link-outside-file",
                 "link-outside-dir", "link-outside-fifo", "link-dangling", "link-parent"]
        if depth > 0:
            kinds += ["dir", "dir"]
        kind = draw(st.sampled_from(kinds))
        entries.append((name, draw(tree_specs(depth - 1)) if kind == "dir" else kind))
    return entries


def small_dicom(sop: str) -> bytes:
    """A small valid instance with this SOPInstanceUID (explicit VR little endian), fresh study and series."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid(1), uid(2)
    ds.PatientID = "TREE"
    ds.Modality = "OT"
    return dataset_bytes(ds, implicit=False)


def build_tree(top: bytes, spec: list[tuple[bytes, Any]], outside: Outside, tree: Tree, rel: bytes = b"",
               chain: int = 0) -> None:
    """Create the generated entries under the directory ``top`` (bytes path), recording what each one is."""
    previous_dir: bytes | None = None
    previous_file: bytes | None = None
    for name, kind in spec:
        path, key = top + b"/" + name, (rel + b"/" + name).lstrip(b"/")
        if isinstance(kind, list):
            os.mkdir(path)
            tree.dirs.append(key)
            build_tree(path, kind, outside, tree, key)
            previous_dir = name
            continue
        if kind == "dicom":
            sop = uid(4)
            with open(path, "wb") as f:
                f.write(small_dicom(sop))
            tree.entries[key], tree.sops[key] = "dicom", sop
            previous_file = name
        elif kind == "junk":
            with open(path, "wb") as f:
                f.write(b"not DICOM at all " + name)
            tree.entries[key] = "junk"
            previous_file = name
        elif kind == "empty":
            open(path, "wb").close()
            tree.entries[key] = "empty"
        elif kind == "fifo":
            os.mkfifo(path)
            tree.entries[key] = "fifo"
        else:
            target = {"link-file": previous_file or b"nowhere", "link-dir": previous_dir or b".",
                      "link-outside-file": os.fsencode(outside.dicom),
                      "link-outside-dir": os.fsencode(outside.directory),
                      "link-outside-fifo": os.fsencode(outside.fifo),
                      "link-dangling": b"/nonexistent/sendit-watcher", "link-parent": b".."}[kind]
            os.symlink(target, path)
            tree.entries[key] = "symlink"


def build_chain(top: bytes, depth: int, outside: Outside, tree: Tree) -> None:
    """A single chain of ``depth`` directories (created by directory fd, so no path is ever too long), with a
    DICOM file and a symlink out of the folder at the bottom."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    rel = b""
    try:
        for level in range(depth):
            name = b"d" if level % 7 else b"\xff" + str(level).encode()
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
            rel = (rel + b"/" + name).lstrip(b"/")
            tree.dirs.append(rel)
        sop = uid(5)
        file_fd = os.open(b"bottom.dcm", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(file_fd, small_dicom(sop))
        os.close(file_fd)
        tree.entries[(rel + b"/bottom.dcm").lstrip(b"/")] = "dicom"
        tree.sops[(rel + b"/bottom.dcm").lstrip(b"/")] = sop
        os.symlink(os.fsencode(outside.directory), b"escape", dir_fd=fd)
        tree.entries[(rel + b"/escape").lstrip(b"/")] = "symlink"
    finally:
        os.close(fd)


def make_outside(base: Path) -> Outside:
    """Canaries next to the batch folders: a DICOM file, a directory with one, a FIFO; atimes set behind the
    mtimes, so that any read of them moves the atime even on a relatime mount."""
    area = base / f"outside-{next(_example):04d}"
    (area / "dir").mkdir(parents=True)
    outside = Outside(area / "canary.dcm", area / "dir", area / "canary.fifo", uid(6), uid(7))
    outside.dicom.write_bytes(small_dicom(outside.sop))
    (outside.directory / "inner.dcm").write_bytes(small_dicom(outside.inner_sop))
    os.mkfifo(outside.fifo)
    for path in (outside.dicom, outside.directory / "inner.dcm", outside.directory):
        info = os.stat(path)
        os.utime(path, ns=(info.st_mtime_ns - 10**12, info.st_mtime_ns))
    return outside


def atimes(outside: Outside) -> dict[str, int]:
    return {str(p): os.stat(p).st_atime_ns for p in (outside.dicom, outside.directory / "inner.dcm",
                                                        outside.directory)}


class FifoSentry:
    """Notices anyone opening one of the given FIFOs for reading: a writer's O_NONBLOCK open succeeds only when
    a reader has it open (ENXIO otherwise). The sentry then writes nothing and closes, so the reader sees EOF
    instead of hanging the test."""

    def __init__(self, fifos: list[bytes]) -> None:
        self.fifos = fifos
        self.opened: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            for fifo in self.fifos:
                try:
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                except OSError as exc:
                    if exc.errno not in (errno.ENXIO, errno.ENOENT):
                        raise
                    continue
                self.opened.append(fifo)
                os.close(fd)
            self._stop.wait(0.005)

    def __enter__(self) -> FifoSentry:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def expected_rows(tree: Tree) -> dict[str, str]:
    """Each entry's stored path: names the os module decodes (undecodable bytes as lone surrogates) as
    the product's documented reversible text."""
    return {names.to_text(os.fsdecode(path)): kind for path, kind in tree.entries.items()}


def short(paths: set[str]) -> list[str]:
    return [p if len(p) < 150 else f"...({len(p)} chars){p[-100:]}" for p in sorted(paths)[:10]]


def check_tree_rows(rows: BatchRows, tree: Tree, outside: Outside, folder: bytes) -> None:
    expected = expected_rows(tree)
    assert len(expected) == len(tree.entries), "two generated names share one stored text"
    stored = set(rows.instances) | set(rows.rejected)
    missing, extra = set(expected) - stored, stored - set(expected)
    found = [(p[-150:], rows.rejected.get(p), rows.rejected_detail.get(p)) for p in sorted(extra)[:10]]
    assert not missing and not extra, f"rows differ from the entries: missing {short(missing)}, extra {found}"
    for path in stored:  # every stored path names the entry on disk (reversible)
        assert os.path.lexists(folder + b"/" + os.fsencode(names.to_disk(path))), f"stored {path!r} is on no disk entry"
    for path, kind in expected.items():
        if kind == "dicom":
            assert path in rows.instances, f"{path!r} is a valid instance, rejected as {rows.rejected.get(path)}"
        elif kind == "symlink":
            assert rows.rejected.get(path) == "symlink", f"{path!r} is a symlink, got {rows.rejected.get(path)!r}"
        elif kind == "fifo":
            assert rows.rejected.get(path) == "not-a-regular-file", (path, rows.rejected.get(path))
        else:
            assert path in rows.rejected, f"{path!r} ({kind}) imported as an instance"
    sops = {row["sop"] for row in rows.instances.values()}
    assert outside.sop not in sops and outside.inner_sop not in sops, "a file outside the folder was imported"
    by_path = {names.to_text(os.fsdecode(p)): sop for p, sop in tree.sops.items()}
    for path, row in rows.instances.items():
        assert row["sop"] == by_path.get(path), f"{path!r} holds {row['sop']}, written as {by_path.get(path)}"


def import_tree(conn: Connection, conffile: Path, folder: Path, tree: Tree, outside: Outside,
                fifos: list[bytes]) -> BatchRows:
    before = atimes(outside)
    with FifoSentry(fifos) as sentry:
        outcome, rows = import_by_command(conffile, folder, conn)
    assert not sentry.opened, f"FIFOs opened for reading by the import: {sentry.opened}"
    assert atimes(outside) == before, "a file or directory outside the folder was read (its atime moved)"
    check_tree_rows(rows, tree, outside, os.fsencode(folder))
    check_accounting(outcome, rows, len(tree.entries))
    return rows


def fifos_of(folder: Path, tree: Tree, outside: Outside) -> list[bytes]:
    return [os.fsencode(outside.fifo)] + [os.fsencode(folder) + b"/" + p for p, k in tree.entries.items()
                                          if k == "fifo"]


@pytest.fixture
def tree_conffile(database: DatabaseConfig, tmp_path: Path) -> Path:
    return write_config(tmp_path / "watcher.conf", database, {}, full_header="no", parse_processes=1)


def tree_property(conn: Connection, conffile: Path, base: Path, spec: list[tuple[bytes, Any]], chain: int) -> None:
    outside = make_outside(base)
    folder = base / f"tree-{next(_example):04d}"
    folder.mkdir()
    tree = Tree()
    build_tree(os.fsencode(folder), spec, outside, tree)
    try:
        if chain:
            build_chain(os.fsencode(folder), chain, outside, tree)
        import_tree(conn, conffile, folder, tree, outside, fifos_of(folder, tree, outside))
    finally:
        if chain > 100:  # pytest's own clean-up of old tmp dirs recurses, and would die on this chain
            subprocess.run(["rm", "-rf", "--one-file-system", str(folder)], check=True)


@examples(40)
@given(spec=tree_specs(), chain=st.sampled_from([0, 0, 0, 2, 30]))
@example(spec=[(b"\\xff", "dicom"), (b"\xff", "dicom"), (b"\\\\xff", "junk"), (b"\\", "dicom"), (b"\\\\", "dicom")],
         chain=0)
def test_generated_trees_one_row_per_entry_and_nothing_outside_read(
        spec: list[tuple[bytes, Any]], chain: int, conn: Connection, tree_conffile: Path, tmp_path: Path) -> None:
    tree_property(conn, tree_conffile, tmp_path, spec, chain)


def test_a_500_level_chain_is_walked_to_its_bottom(conn: Connection, tree_conffile: Path, tmp_path: Path) -> None:
    """500 nested folders (a recursive walk dies near 1,000), a non-UTF-8 name every 7 levels, an
    instance and a link out at the bottom: instance imported, link rejected, nothing outside read."""
    tree_property(conn, tree_conffile, tmp_path, [(b"sub", [(b"\xff\xfe", "dicom"), (b"a\nb", "link-outside-dir")])],
                  500)


def test_a_1200_level_chain_is_one_too_deep_row_and_nothing_else_fails(conn: Connection, tree_conffile: Path,
                                                                       tmp_path: Path) -> None:
    """1,200 nested folders: beyond the README's limit (512 levels) the rest of the chain is one `too-deep`
    rejection; the folder is not failed, everything above the limit is imported, nothing outside is read."""
    outside = make_outside(tmp_path)
    folder = tmp_path / "chain-1200"
    folder.mkdir()
    tree = Tree()
    build_tree(os.fsencode(folder), [(b"top.dcm", "dicom"), (b"\xff", "link-outside-file")], outside, tree)
    try:
        build_chain(os.fsencode(folder), 1200, outside, tree)
        before = atimes(outside)
        with FifoSentry([os.fsencode(outside.fifo)]) as sentry:
            outcome, rows = import_by_command(tree_conffile, folder, conn)
        assert not sentry.opened and atimes(outside) == before, "something outside the folder was read"
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(folder)], check=True)
    deep = {path: reason for path, reason in rows.rejected.items() if reason == "too-deep"}
    assert len(deep) == 1, f"expected one too-deep row, got {short(set(deep))}"
    (cut,) = deep
    levels = cut.count("/") + 1
    assert 500 <= levels <= 520 and os.fsencode(names.to_disk(cut)) in {d for d in tree.dirs}, (levels, cut[-80:])
    below = os.fsencode(names.to_disk(cut)) + b"/"
    expected = expected_rows(Tree(entries={p: k for p, k in tree.entries.items() if not p.startswith(below)}))
    assert set(rows.instances) | set(rows.rejected) == set(expected) | {cut}
    assert "top.dcm" in rows.instances and rows.rejected.get(names.to_text(os.fsdecode(b"\xff"))) == "symlink"
    check_accounting(outcome, rows, len(expected) + 1)


@examples(200)
@given(raw_names=st.lists(name_strategy(), min_size=1, max_size=8, unique=True))
def test_stored_names_are_reversible_and_never_collide(raw_names: list[bytes]) -> None:
    texts = [names.to_text(os.fsdecode(n)) for n in raw_names]
    assert len(set(texts)) == len(texts), f"two names, one text: {raw_names} -> {texts}"
    for name, text in zip(raw_names, texts, strict=True):
        text.encode("utf-8")  # storable as PostgreSQL text
        assert "\x00" not in text
        assert os.fsencode(names.to_disk(text)) == name, (name, text)


# Files changing between the walk and the read --------------------------------------------------------------------

MUTATIONS = ["delete", "replace", "chmod", "truncate", "swap-dir-for-outside-link", "add"]


@st.composite
def mutation_plans(draw: st.DrawFn) -> tuple[int, list[tuple[str, int, float]]]:
    files = draw(st.integers(20, 60))
    plan = draw(st.lists(st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 10**6), st.floats(0, 0.02)),
                         min_size=1, max_size=12))
    return files, plan


def mutate(folder: Path, plan: list[tuple[str, int, float]], outside: Outside, started: threading.Event,
           changed: list[str]) -> None:
    started.wait(10)
    for step, (action, pick, pause) in enumerate(plan):
        time.sleep(pause)
        files = sorted(p for p in inside(folder) if stat.S_ISREG(p.lstat().st_mode))
        subdirs = sorted(p for p in folder.iterdir() if stat.S_ISDIR(p.lstat().st_mode))
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError):
            if action == "swap-dir-for-outside-link" and subdirs:
                victim = subdirs[pick % len(subdirs)]
                # a name of its own per step: a plan may draw the same pick twice (hypothesis 6.1xx does)
                victim.rename(folder.parent / f"{folder.name}-moved-{step}-{pick}")
                os.symlink(outside.directory, victim)
                changed.append(f"{action} {victim.name}")
            elif action == "add":
                (folder / f"added-{pick}.dcm").write_bytes(small_dicom(uid(8)))
                changed.append(f"{action} added-{pick}.dcm")
            elif files:
                victim = files[pick % len(files)]
                if action == "delete":
                    victim.unlink()
                elif action == "replace":
                    fresh = victim.with_name(victim.name + ".new")
                    fresh.write_bytes(small_dicom(uid(8)))
                    fresh.replace(victim)
                elif action == "chmod":
                    victim.chmod(0)
                elif action == "truncate":
                    victim.write_bytes(small_dicom(uid(8))[:200])
                changed.append(f"{action} {victim.relative_to(folder)}")


def inside(folder: Path) -> list[Path]:
    """Every entry under ``folder``, never through a symlink (the test must not read outside either)."""
    found = []
    for top, dirs, files in os.walk(folder):
        found += [Path(top) / name for name in dirs + files]
    return found


def is_whole_instance(path: bytes) -> bool:
    try:
        return bool(pydicom.dcmread(io.BytesIO(Path(os.fsdecode(path)).read_bytes())).SOPInstanceUID)
    except Exception:  # noqa: BLE001 - anything pydicom cannot read is not a whole instance
        return False


def current_tree(folder: Path) -> Tree:
    """The folder as it is now, walked by the test without following links: what the rows must mirror."""
    tree = Tree()
    for top, dirs, files, _ in os.fwalk(os.fsencode(folder)):
        rel = os.path.relpath(top, os.fsencode(folder))
        for name in files + [d for d in dirs if os.path.islink(top + b"/" + d)]:
            key = name if rel == b"." else rel + b"/" + name
            info = os.lstat(top + b"/" + name)
            tree.entries[key] = ("symlink" if stat.S_ISLNK(info.st_mode) else
                                 "fifo" if stat.S_ISFIFO(info.st_mode) else "file")
    return tree


@examples(20)
@given(plan=mutation_plans())
def test_files_changing_during_the_import_never_fail_the_folder_nor_reach_outside(
        plan: tuple[int, list[tuple[str, int, float]]], conn: Connection, tree_conffile: Path,
        tmp_path: Path) -> None:
    files, mutations = plan
    outside = make_outside(tmp_path)
    folder = tmp_path / f"moving-{next(_example):04d}"
    for n in range(files):
        sub = folder / f"series{n % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"IM{n:04d}.dcm").write_bytes(small_dicom(uid(9)))
    started, changed = threading.Event(), []
    before = atimes(outside)
    mutator = threading.Thread(target=mutate, args=(folder, mutations, outside, started, changed), daemon=True)
    mutator.start()
    started.set()
    with FifoSentry([os.fsencode(outside.fifo)]) as sentry:
        code, outcomes = run_import(tree_conffile, folder)
    mutator.join(30)
    assert not mutator.is_alive()
    assert code == 0 and outcomes and outcomes[0]["status"] != "failed", (outcomes, changed)
    rows = rows_of(conn, outcomes[0]["batch_id"])
    assert len(rows.instances) + len(rows.rejected) == rows.batch["files"] == outcomes[0]["files"], rows.batch
    sops = {row["sop"] for row in rows.instances.values()}
    assert outside.inner_sop not in sops, f"read through a swapped symlink: {changed}"
    # Put permissions back and import again: now the rows mirror the folder exactly (retries included).
    for path in inside(folder):
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode):
            path.chmod(0o755 if stat.S_ISDIR(mode) else 0o644)
    now = current_tree(folder)
    rows = import_and_check_accounting(conn, tree_conffile, folder, len(now.entries))
    assert not sentry.opened and atimes(outside) == before, "something outside the folder was read"
    assert set(rows.instances) | set(rows.rejected) == {names.to_text(os.fsdecode(p)) for p in now.entries}
    for path, kind in now.entries.items():
        text = names.to_text(os.fsdecode(path))
        if kind == "symlink":
            assert rows.rejected.get(text) == "symlink", (text, changed)
        elif kind == "file" and is_whole_instance(os.fsencode(folder) + b"/" + path):
            assert text in rows.instances, f"{text} is a whole instance now, still {rows.rejected.get(text)}: {changed}"
    assert outside.inner_sop not in {row["sop"] for row in rows.instances.values()}
