"""A private PostgreSQL cluster that a test may stop and start (never the machine's shared one), as a fixture."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "packaging" / "dev" / "postgres"


class PrivateCluster:
    """initdb + pg_ctl in a directory of its own, on a Unix socket only."""

    def __init__(self) -> None:
        # Under /var/tmp, readable by the postgres user that runs the server when we are root.
        self.directory = Path(tempfile.mkdtemp(prefix="sendit-pg-", dir="/var/tmp"))
        os.chmod(self.directory, 0o755)
        self.dsn = ""

    def start(self) -> str:
        self.dsn = subprocess.run([str(SCRIPT), "private", str(self.directory)], check=True,
                                  capture_output=True, text=True).stdout.strip()
        return self.dsn

    def stop(self) -> None:
        subprocess.run([str(SCRIPT), "stop", str(self.directory)], check=True, capture_output=True)

    def destroy(self) -> None:
        subprocess.run([str(SCRIPT), "stop", str(self.directory)], capture_output=True)
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def private_cluster() -> Iterator[PrivateCluster]:
    """A PrivateCluster (not started yet), destroyed after the test whatever happened."""
    cluster = PrivateCluster()
    try:
        yield cluster
    finally:
        cluster.destroy()
