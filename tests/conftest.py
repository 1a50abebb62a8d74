"""The test suite's plugins (fixtures live in the fix_* modules, as psycopg's do) and its figures section."""

from __future__ import annotations

from collections.abc import Callable

import pytest

pytest_plugins = [
    "tests.fix_database", "tests.fix_dicom", "tests.fix_postgres", "tests.fix_service", "tests.fix_canary",
]

_FIGURES: list[str] = []


@pytest.fixture
def figures() -> Callable[[str], None]:
    """Record a line of figures (counts, timings) to print at the end of the run."""
    return _FIGURES.append


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)
