"""Logging set-up: stderr lines outside systemd, journald when stderr is the journal, library loggers quiet."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from sendit_watcher import logs
from sendit_watcher.logs import batch_fields, under_journal
from tests.fix_service import REPO


def test_batch_fields_become_journal_field_names() -> None:
    assert batch_fields(batch_id=3, folder="A") == {"SENDIT_BATCH_ID": 3, "SENDIT_FOLDER": "A"}


def test_not_under_the_journal_without_journal_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    assert not under_journal()


def test_journal_stream_of_another_file_is_not_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "0:1")
    assert not under_journal()


def test_journal_stream_matching_stderr_is_the_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    info = os.fstat(sys.stderr.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
    assert under_journal()


def test_setup_writes_plain_lines_to_stderr_and_keeps_libraries_at_warning() -> None:
    code = ("import logging; from sendit_watcher.logs import setup; setup('debug');"
            "logging.getLogger('sendit_watcher.x').debug('hello %s', 1);"
            "logging.getLogger('psycopg').info('library chatter');"
            "logging.getLogger('pyinotify').warning('library warning')")
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**env, "PYTHONPATH": str(REPO)})
    assert result.stderr.splitlines() == ["DEBUG sendit_watcher.x: hello 1", "WARNING pyinotify: library warning"]


def test_setup_replaces_earlier_handlers() -> None:
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        logs.setup("info")  # not imported bare: pytest 7 would take a module-level setup() for a nose fixture
        logs.setup("warning")
        assert len(root.handlers) == 1 and root.level == logging.WARNING
        assert logging.getLogger("pydicom").level == logging.WARNING
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])


def test_a_newline_in_a_message_cannot_forge_a_line_on_stderr() -> None:
    code = ("import logging; from sendit_watcher.logs import setup; setup('info');"
            "logging.getLogger('sendit_watcher.x').info('queued %s', 'A\\nINFO sendit_watcher.x: forged\\rB')")
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**env, "PYTHONPATH": str(REPO)})
    assert result.stderr.splitlines() == ["INFO sendit_watcher.x: queued A\\nINFO sendit_watcher.x: forged\\rB"]
