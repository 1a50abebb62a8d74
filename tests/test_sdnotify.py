"""sd_notify against a real AF_UNIX datagram socket passed as NOTIFY_SOCKET, as systemd binds it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sendit_watcher.sdnotify import SdNotifier
from tests.fix_service import NotifySocket
from tests.helpers import wait_until


@pytest.fixture
def socket_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> NotifySocket:
    sock = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock.path))
    yield sock  # type: ignore[misc]
    sock.close()


def test_ready_status_reloading_stopping_reach_the_socket(socket_path: NotifySocket,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    notifier = SdNotifier()
    notifier.ready("watching /in")
    notifier.status("watching /in")  # unchanged: not sent again
    notifier.status("watching /in; 1 queued")
    notifier.reloading()
    notifier.stopping("stopping")
    wait_until(lambda: any(f.startswith("STOPPING=1") for f in socket_path.fields()), 5, "STOPPING=1")
    fields = socket_path.fields()
    assert fields[:3] == ["READY=1", "STATUS=watching /in", "STATUS=watching /in; 1 queued"]
    assert fields[3] == "RELOADING=1" and fields[4].startswith("MONOTONIC_USEC=")
    assert fields[5:] == ["STOPPING=1", "STATUS=stopping"]


def test_watchdog_pings_at_half_the_interval_for_our_pid_only(socket_path: NotifySocket,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = SdNotifier()
    assert notifier.watchdog_interval == 0.1
    notifier.watchdog()
    notifier.watchdog()  # too soon: not sent
    wait_until(lambda: "WATCHDOG=1" in socket_path.fields(), 5, "WATCHDOG=1")
    assert socket_path.fields().count("WATCHDOG=1") == 1
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert SdNotifier().watchdog_interval is None


def test_without_notify_socket_every_call_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SdNotifier()
    assert not notifier.enabled
    notifier.ready("x")
    notifier.watchdog()
    notifier.stopping("y")


def test_abstract_socket_names_are_supported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    name = f"sendit-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        SdNotifier().ready("abstract")
        assert sock.recv(4096).decode().splitlines() == ["READY=1", "STATUS=abstract"]
    finally:
        sock.close()


def test_a_socket_that_refuses_is_logged_once_and_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    import socket

    stale = tmp_path / "stale.sock"
    gone = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    gone.bind(str(stale))
    gone.close()  # the path stays, nobody listens: ConnectionRefusedError
    monkeypatch.setenv("NOTIFY_SOCKET", str(stale))
    monkeypatch.setenv("WATCHDOG_USEC", "2")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = SdNotifier()
    with caplog.at_level("WARNING", logger="sendit_watcher.sdnotify"):
        notifier.ready("x")
        notifier.status("y")
        notifier.watchdog()
        with notifier.extending(0.03):
            wait_until(lambda: True, 1, "a moment")
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "sd_notify" in caplog.records[0].message
