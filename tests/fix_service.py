"""The service as a real subprocess: its conffile, a real AF_UNIX datagram NOTIFY_SOCKET, its log, signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sendit_watcher.config import DatabaseConfig

REPO = Path(__file__).resolve().parent.parent


def write_config(path: Path, database: DatabaseConfig, roots: dict[str, Path], *, settle: float = 1.0,
                 workers: int = 2, rescan: float = 0, extra: str = "", host: str = "test-host",
                 role: str = "all") -> Path:
    """A conffile for the service under test."""
    sections = [f"[database]\ndsn = {database.dsn}\nschema = {database.schema}\nretry_interval = 0.5\n"
                f"connect_timeout = 3\n",
                f"[import]\nworkers = {workers}\n",
                f"[watcher]\nsettle_seconds = {settle}\nrescan_interval = {rescan}\ndrain_seconds = 10\n"
                f"log_level = debug\nhost = {host}\nrole = {role}\n"]
    sections += [f"[watch:{name}]\npath = {root}\n" for name, root in roots.items()]
    path.write_text("\n".join(sections) + extra)
    return path


class NotifySocket:
    """A datagram socket bound like systemd's; collects every message the service sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
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
    """``python -m sendit_watcher --config FILE run`` with a NOTIFY_SOCKET of the test's."""

    def __init__(self, config: Path, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.notify = NotifySocket(workdir / f"notify-{time.monotonic_ns()}.sock")
        self.log_path = workdir / f"service-{time.monotonic_ns()}.log"
        environment = {**os.environ, "NOTIFY_SOCKET": str(self.notify.path), "PYTHONPATH": str(REPO),
                       **(env or {})}
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen([sys.executable, "-m", "sendit_watcher", "--config", str(config), "run"],
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
        return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
