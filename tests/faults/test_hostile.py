"""Hostile inputs (over 200 distinct files and names), imported by an unprivileged user: each is rejected
with a reason or imported verbatim; nothing crashes, hangs, or is read outside the folder."""

from __future__ import annotations

import io
import json
import os
import random
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from sendit_watcher.config import DatabaseConfig
from sendit_watcher.db import Connection
from sendit_watcher.names import to_text
from tests.fix_service import REPO
from tests.helpers import pydicom_test_files, write_config

KNOWN_REASONS = {"not-dicom", "dicomdir", "no-sop-instance-uid", "missing-uid", "duplicate", "truncated",
                 "invalid-dicom", "empty-file", "symlink", "not-a-regular-file", "unreadable", "too-deep",
                 "oversized-value", "invalid-uid", "vanished", "unreadable-directory"}
HOSTILE_VALUES = ["O'Brien\"; DROP TABLE sendit.batch; --", "Robert'); DELETE FROM instance;--", "a\\b\\c",
                  "tab\there", "new\nline", "esc\x1b[31mred", "bell\x07", "$$dollar$$", "%s %(name)s {0}",
                  "ünïcödé^名前"]


def ct_bytes(**values: str) -> bytes:
    ds = pydicom.dcmread(pydicom_test_files() / "CT_small.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def nested(depth: int) -> bytes:
    ds = Dataset()
    inner = ds
    for level in range(depth):
        item = Dataset()
        item.add_new(0x00081150, "UI", f"1.2.3.{level}")
        inner.ReferencedSeriesSequence = Sequence([item])
        inner = item
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    buffer = io.BytesIO()
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, depth * 20))
    try:
        pydicom.dcmwrite(buffer, ds, **({"enforce_file_format": True} if pydicom.__version__ >= "3" else
                                        {"write_like_original": False}))
    finally:
        sys.setrecursionlimit(limit)
    return buffer.getvalue()


def hostile_files(base: bytes, rng: random.Random) -> Iterator[tuple[str, bytes]]:
    for offset in list(range(0, 400, 5)) + list(range(400, len(base) - 1, max(1, len(base) // 40))):
        yield f"truncated-{offset:06d}.dcm", base[:offset]
    uid_at = base.index(b"\x08\x00\x18\x00")
    for n, at in enumerate(range(132, uid_at + 200, 8)):  # huge declared lengths at many places
        if n >= 30:
            break
        yield f"huge-length-{n:02d}.dcm", base[:at] + b"\xf0\xff\xff\xff" + base[at + 4:]
    for n, vr in enumerate((b"XX", b"UN", b"SQ", b"OB", b"US", b"FD", b"\x00\x00", b"  ")):
        for m, tag in enumerate((b"\x08\x00\x18\x00", b"\x10\x00\x10\x00", b"\x20\x00\x0d\x00")):
            at = base.index(tag) + 4
            yield f"wrong-vr-{n}-{m}.dcm", base[:at] + vr + base[at + 2:]
    for depth in (10, 200, 2000):
        yield f"nested-{depth}.dcm", nested(depth)
    for n in range(20):
        garbage = rng.randbytes(rng.randint(1, 5000))
        yield f"garbage-{n:02d}.bin", (b"\0" * 128 + b"DICM" + garbage) if n % 2 else garbage
    for n in range(5):
        yield f"empty-{n}.dcm", b""


def build_tree(root: Path, outside: Path) -> dict[str, str]:
    """Write the hostile tree; returns the expected outcome of the special entries by path."""
    rng = random.Random(7)
    base = ct_bytes()
    expected: dict[str, str] = {}
    for name, data in hostile_files(base, rng):
        (root / name).write_bytes(data)
    for n, value in enumerate(HOSTILE_VALUES):
        (root / f"value-{n}.dcm").write_bytes(ct_bytes(SpecificCharacterSet="ISO_IR 192", PatientName=value,
                                                       PatientID=f"ID{n}"))
        expected[f"value-{n}.dcm"] = "instance"
    for n in range(5):
        os.mkfifo(root / f"fifo-{n}")
        expected[f"fifo-{n}"] = "not-a-regular-file"
    for n in range(3):
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(root / f"socket-{n}"))
        server.close()
        expected[f"socket-{n}"] = "not-a-regular-file"
    for n, (major, minor) in enumerate(((1, 3), (1, 5), (1, 8))):
        os.mknod(root / f"device-{n}", stat.S_IFCHR | 0o666, os.makedev(major, minor))
        expected[f"device-{n}"] = "not-a-regular-file"
    (outside / "outside.dcm").write_bytes(ct_bytes())
    links = {"shadow": "/etc/shadow", "passwd": "/etc/passwd", "loop-a": "loop-b", "loop-b": "loop-a",
             "self": "self", "parent": "..", "outside-dicom": str(outside / "outside.dcm"), "dangling": "/nope",
             "outside-dir": str(outside)}
    for name, target in links.items():
        os.symlink(target, root / f"link-{name}")
        expected[f"link-{name}"] = "symlink"
    for n in range(5):
        (root / f"unreadable-{n}.dcm").write_bytes(ct_bytes())
        (root / f"unreadable-{n}.dcm").chmod(0)
        expected[f"unreadable-{n}.dcm"] = "unreadable"
    (root / "locked-dir").mkdir()
    (root / "locked-dir" / "inside.dcm").write_bytes(ct_bytes())
    (root / "locked-dir").chmod(0)
    expected["locked-dir"] = "unreadable-directory"
    for n in range(5):  # names that are not UTF-8: stored escaped, and read like any other file
        name = b"latin1-\xe9\xff-" + str(n).encode()
        os.close(os.open(os.fsencode(root) + b"/" + name, os.O_CREAT | os.O_WRONLY))
        expected[to_text(os.fsdecode(name))] = "empty-file"
    for name in ("new\nline.dcm", "tab\tname.dcm", "-dash.dcm", " spaces .dcm", "quote'\"name.dcm",
                 "x" * 250 + ".dcm", "back\\slash.dcm", "semi;colon $(id).dcm"):
        (root / name).write_bytes(ct_bytes())
        expected[to_text(name)] = "instance"  # a backslash is stored doubled
    deep = root
    for level in range(15):  # a path of some 3,800 characters
        deep = deep / (f"{level:02d}" + "d" * 240)
        deep.mkdir()
    (deep / "deep.dcm").write_bytes(ct_bytes())
    expected[str((deep / "deep.dcm").relative_to(root))] = "instance"
    return expected


@pytest.fixture
def unprivileged_tree() -> Iterator[tuple[Path, Path]]:
    """A world-traversable directory under /var/tmp, so that 'nobody' can import from it."""
    top = Path(tempfile.mkdtemp(prefix="sendit-hostile-", dir="/var/tmp"))
    top.chmod(0o755)
    (top / "in").mkdir()
    (top / "outside").mkdir()
    yield top / "in", top / "outside"
    subprocess.run(["chmod", "-R", "u+rwx", str(top)], check=False)
    subprocess.run(["rm", "-rf", str(top)], check=False)


def test_hostile_inputs_are_rejected_with_reasons_or_imported_verbatim(
        unprivileged_tree: tuple[Path, Path], database: DatabaseConfig, conn: Connection,
        figures: Callable[[str], None]) -> None:
    root, outside = unprivileged_tree
    expected = build_tree(root, outside)
    config = write_config(root.parent / "watcher.conf", database, {})
    (root.parent / "watcher.conf").chmod(0o644)
    result = subprocess.run(
        # Debian's interpreter and python3-* packages: the test's virtualenv under /root is closed to 'nobody'.
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3", "-m", "sendit_watcher",
         "--config", str(config), "import", "--json", "--processes", "2", str(root)],
        capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(REPO), "PATH": os.environ["PATH"]})
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout)
    rejected = dict(conn.execute("SELECT path, reason FROM rejected_file").fetchall())
    details = conn.execute("SELECT count(*) FROM rejected_file WHERE detail = ''").fetchone()
    imported = {str(p) for (p,) in conn.execute("SELECT path FROM instance")}
    conn.rollback()
    reasons: dict[str, int] = {}
    for reason in rejected.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    figures(f"hostile inputs: {outcome['files']} entries -> {outcome['instances']} imported, "
            f"{outcome['rejected']} rejected {dict(sorted(reasons.items()))}")
    assert outcome["files"] >= 200 and outcome["instances"] + outcome["rejected"] == outcome["files"]
    assert set(reasons) <= KNOWN_REASONS and details == (0,)
    for path, what in expected.items():
        assert (path in imported) if what == "instance" else rejected.get(path) == what, (path, what)
    assert sum(1 for p in rejected if p.startswith("latin1-")) == 5
    stored = {str(name) for (name,) in conn.execute("SELECT patient_name FROM patient")}
    assert set(HOSTILE_VALUES) <= stored  # verbatim, quotes, backslashes and control characters included
    outside_uid = pydicom.dcmread(outside / "outside.dcm").SOPInstanceUID
    assert conn.execute("SELECT count(*) FROM instance WHERE sop_instance_uid = %s", (outside_uid,)).fetchone() == (0,)
