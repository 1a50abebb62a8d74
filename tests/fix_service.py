"""The service as a real subprocess: its conffile, a real AF_UNIX datagram NOTIFY_SOCKET, its log, signals; and
``listen`` as a real subprocess (Listener)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sendit_watcher.config import DatabaseConfig
from tests.helpers import as_int, write_config

REPO = Path(__file__).resolve().parent.parent


STARTED: list[ServiceProcess] = []


class NotifySocket:
    """A datagram socket bound like systemd's; collects every message the service sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        path.chmod(0o666)  # a service run as another user (ServiceProcess's ``command``) may send too
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except (TimeoutError, OSError):
                continue

    def fields(self) -> list[str]:
        return [line for message in list(self.messages) for line in message.splitlines()]

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.fields():
                if predicate(line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no matching sd_notify message in {timeout} s; got {self.fields()[-20:]}")

    def close(self) -> None:
        self._closed = True
        self.sock.close()


class ServiceProcess:
    """``python -m sendit_watcher --config FILE run`` with a NOTIFY_SOCKET of the test's. Every one started in
    a session is kept in STARTED, for the PHI canary (fix_canary) to read their logs and STATUS lines at the end."""

    def __init__(self, config: Path, workdir: Path, env: dict[str, str] | None = None,
                 command: list[str] | None = None) -> None:
        self.notify = NotifySocket(workdir / f"notify-{time.monotonic_ns()}.sock")
        self.log_path = workdir / f"service-{time.monotonic_ns()}.log"
        environment = {**os.environ, "NOTIFY_SOCKET": str(self.notify.path), "PYTHONPATH": str(REPO),
                       **(env or {})}
        self._log = self.log_path.open("wb")
        STARTED.append(self)  # once it has a log (a socket path too long for AF_UNIX fails the test, not the run)
        python = command or [sys.executable]  # e.g. setpriv ... /usr/bin/python3, to run as another user
        self.process = subprocess.Popen([*python, "-m", "sendit_watcher", "--config", str(config), "run"],
                                        env=environment, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60.0) -> None:
        self.notify.wait_for(lambda line: line == "READY=1", timeout)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self._log.close()
        self.notify.close()
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()
        self.notify.close()

    def worker_pids(self) -> list[int]:
        """The worker processes this service spawned (not multiprocessing's resource tracker)."""
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [int(c) for c in children if b"spawn_main" in _cmdline(int(c))]

    def descendants(self) -> list[int]:
        """Every process below the service: workers, their parse pools and forkservers, at any depth."""
        parents: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # ended meanwhile
                continue
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        found, below = [], [self.process.pid]
        while below:
            children = parents.get(below.pop(), [])
            found += children
            below += children
        return found

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Callable[[Path], ServiceProcess]]:
    """Start the service on a conffile, each run in a work directory of its own, READY before it returns;
    every one is killed after the test whatever happened."""
    started: list[ServiceProcess] = []

    def start(config: Path) -> ServiceProcess:
        workdir = tmp_path / f"service{len(started)}"
        workdir.mkdir()
        service = ServiceProcess(config, workdir)
        started.append(service)
        service.wait_ready()
        return service

    yield start
    for service in started:
        service.kill()


@pytest.fixture
def start_service(tmp_path: Path, database: DatabaseConfig, incoming: Path,
                  services: Callable[[Path], ServiceProcess]) -> Callable[..., ServiceProcess]:
    """Start the service watching ``incoming`` with these options (any schema key) and ``extra`` conffile
    text, as ``services`` does."""
    def start(extra: str = "", **options: object) -> ServiceProcess:
        return services(write_config(tmp_path / "watcher.conf", database, {"incoming": incoming}, extra=extra,
                                     **options))

    return start


def _cmdline(pid: int) -> bytes:
    """The command line of a process, or nothing for one that has exited since it was listed."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""


class Listener:
    """``sendit-watcher listen`` as a subprocess, its stdout lines and stderr collected by threads."""

    def __init__(self, config: Path, *args: str, read_stdout: bool = True) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sendit_watcher", "--config", str(config), "listen", *args],
            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.errors: list[str] = []
        assert self.process.stdout is not None and self.process.stderr is not None
        streams = [(self.process.stderr, self.errors)] + [(self.process.stdout, self.lines)] * read_stdout
        for stream, into in streams:
            threading.Thread(target=lambda s=stream, i=into: i.extend(iter(s.readline, "")), daemon=True).start()

    def seqs(self) -> list[int]:
        return [as_int(json.loads(line)["seq"]) for line in list(self.lines)]

    @property
    def stderr(self) -> str:
        return "".join(self.errors)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
