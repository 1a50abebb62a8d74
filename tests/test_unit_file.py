"""The systemd unit: the directives the service relies on, and its sandbox as systemd-analyze rates it."""

from __future__ import annotations

import configparser
import re
import subprocess

from sendit_watcher.config import WatcherConfig
from tests.helpers import UNIT, exec_reload


def service_section() -> dict[str, str]:
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return dict(parser["Service"])


def test_lifecycle_directives() -> None:
    service = service_section()
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["ExecStart"] == "/usr/bin/sendit-watcher run"
    # validate the file as `run` reads it, then signal: `systemctl reload` fails on an invalid file
    assert exec_reload() == ["/usr/bin/sendit-watcher check-config --reload", "/bin/kill -HUP $MAINPID"]
    assert service["Restart"] == "on-failure" and service["RestartPreventExitStatus"] == "78"
    assert int(service["WatchdogSec"]) > 0
    assert service["User"] == service["Group"] == "sendit-watcher"
    assert float(service["TimeoutStopSec"]) > WatcherConfig().drain_seconds


def test_exposure_rated_by_systemd_analyze_is_at_most_1_5() -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(UNIT)],
                            capture_output=True, text=True, check=False)
    match = re.search(r"Overall exposure level for sendit-watcher.service: ([0-9.]+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    print(f"systemd-analyze security --offline=true: exposure {match[1]}")
    assert float(match[1]) <= 1.5
