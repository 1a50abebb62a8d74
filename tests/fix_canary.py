"""The PHI canary over the whole suite: every fixture study carries marker values in PatientName, PatientID and
PatientBirthDate (tests.fix_dicom); when the session ends, no log line and no STATUS line of any service the
tests started, and nothing a test's schema would show an operator (last_error, `status`, `status --json`,
`listen`: tests.fix_database.SHOWN) may hold one. A leak fails the session, naming the line."""

from __future__ import annotations

import pytest

from tests.fix_database import SHOWN
from tests.fix_service import STARTED, ServiceProcess
from tests.helpers import PATIENT_BIRTH_DATE, PATIENT_ID, PATIENT_NAME

MARKERS = (PATIENT_NAME, PATIENT_ID, PATIENT_BIRTH_DATE, "Fixture^Jane", "4711-XYZ", "1961-04-17")


def leaks() -> list[str]:
    """Every service log line and sd_notify line of this session, and every text a test's schema showed, that
    holds a marker."""
    found = [f"{where}: {_around(text)!r}" for where, text in SHOWN if any(marker in text for marker in MARKERS)]
    for service in STARTED:
        lines = [("log", line) for line in _log(service).splitlines()]
        lines += [("sd_notify", line) for line in service.notify.fields()]
        found += [f"{where} of {service.log_path}: {line[:200]!r}" for where, line in lines
                  if any(marker in line for marker in MARKERS)]
    return found


def _around(text: str) -> str:
    """The first line of ``text`` that holds a marker, shortened."""
    return next(line for line in text.splitlines() if any(marker in line for marker in MARKERS))[:200]


def _log(service: ServiceProcess) -> str:
    try:
        return service.log
    except OSError:  # its directory is gone
        return ""


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    found = leaks()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"PHI canary: {len(STARTED)} service runs and {len(SHOWN)} texts"
                              f" of test schemas read, {len(found)} leaks", bold=True)
        for line in found[:20]:
            reporter.write_line(f"  PHI LEAK {line}", red=True)
    if found:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
