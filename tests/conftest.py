"""The test suite's plugins (fixtures live in the fix_* modules, as psycopg's do) and its figures section."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import psycopg
import pydicom
import pytest

import sendit_watcher

pytest_plugins = [
    "tests.fix_database", "tests.fix_dicom", "tests.fix_postgres", "tests.fix_service", "tests.fix_canary",
    "tests.fix_processors",
]

# Typed by root, a command switches to the service's user (privileges.py); the suite runs its commands as it is
# (root, as packaging/dev/test and the autopkgtest run it). tests/test_privileges.py sets a user of its own.
os.environ["SENDIT_WATCHER_USER"] = ""

_FIGURES: list[str] = []


@pytest.fixture
def figures() -> Callable[[str], None]:
    """Record a line of figures (counts, timings) to print at the end of the run."""
    return _FIGURES.append


def pytest_report_header() -> list[str]:
    """Which sendit_watcher is under test (the checkout's, or the installed one under autopkgtest) and with what."""
    return [f"sendit_watcher {sendit_watcher.__version__} from {Path(sendit_watcher.__file__).parent}",
            f"pydicom {pydicom.__version__} from {Path(pydicom.__file__).parent}, "
            f"psycopg {psycopg.__version__} (libpq {psycopg.pq.version()}) from {Path(psycopg.__file__).parent}"]


def pytest_configure(config: pytest.Config) -> None:
    """SENDIT_TEST_PACKAGE names the sendit_watcher directory the tests must import (debian/tests/pytest-suite: the
    installed package); any other is a usage error, before any test runs."""
    expected = os.environ.get("SENDIT_TEST_PACKAGE")
    found = Path(sendit_watcher.__file__).resolve().parent
    if expected and found != Path(expected).resolve():
        raise pytest.UsageError(f"SENDIT_TEST_PACKAGE={expected} but the tests import sendit_watcher from {found}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)
