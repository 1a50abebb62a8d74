"""Commands typed by root run as the service's user (here 'nobody', by SENDIT_WATCHER_USER), except ``run`` and
with ``--as-root``; ``metrics --textfile`` writes as root what it read as that user. The suite itself runs as root
with SENDIT_WATCHER_USER empty (conftest)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sendit_watcher import privileges
from sendit_watcher.cli import main
from sendit_watcher.config import DatabaseConfig
from sendit_watcher.db import Connection
from tests.fix_service import REPO
from tests.helpers import make_study, write_config


@pytest.fixture
def world_readable() -> Iterator[Path]:
    """A directory under /var/tmp that 'nobody' can traverse (pytest's tmp_path is root's)."""
    top = Path(tempfile.mkdtemp(prefix="sendit-privileges-", dir="/var/tmp"))
    top.chmod(0o755)
    yield top
    subprocess.run(["rm", "-rf", str(top)], check=False)


def typed_by_root(*args: str, user: str | None = "nobody") -> subprocess.CompletedProcess[str]:
    """``sendit-watcher ARGS`` as root, with Debian's interpreter: the test's virtualenv under /root is closed to
    'nobody', and the command imports modules after the switch."""
    env = {"PYTHONPATH": str(REPO), "PATH": os.environ["PATH"]}
    if user is not None:
        env[privileges.USER_VARIABLE] = user
    return subprocess.run(["/usr/bin/python3", "-m", "sendit_watcher", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_import_typed_by_root_reads_as_the_service_user_and_as_root_with_as_root(
        world_readable: Path, tmp_path: Path, database: DatabaseConfig, conn: Connection) -> None:
    folder = world_readable / "ST"
    make_study(folder, 2)
    folder.chmod(0o755)
    first, second = sorted(folder.iterdir())
    first.chmod(0o644)
    second.chmod(0o600)  # root's alone: 'nobody' cannot read it
    config = write_config(tmp_path / "watcher.conf", database, {})  # root's, 0600 under root's tmp_path: read first
    config.chmod(0o600)

    as_user = typed_by_root("--config", str(config), "import", "--json", str(folder))
    assert as_user.returncode == 0, as_user.stderr
    assert json.loads(as_user.stdout)["instances"] == 1
    assert conn.execute("SELECT path, reason FROM rejected_file").fetchall() == [(second.name, "unreadable")]
    conn.rollback()

    as_root = typed_by_root("--config", str(config), "--as-root", "import", "--json", str(folder))
    assert as_root.returncode == 0, as_root.stderr
    assert json.loads(as_root.stdout)["instances"] == 2  # an unreadable file is read again at every import


def test_an_empty_user_keeps_root_and_an_unknown_one_is_a_usage_error(world_readable: Path, tmp_path: Path,
                                                                      database: DatabaseConfig) -> None:
    folder = world_readable / "ST"
    make_study(folder, 1)
    next(folder.iterdir()).chmod(0o600)
    config = write_config(tmp_path / "watcher.conf", database, {})
    kept = typed_by_root("--config", str(config), "import", "--json", str(folder), user="")
    assert kept.returncode == 0 and json.loads(kept.stdout)["instances"] == 1, kept.stderr
    unknown = typed_by_root("--config", str(config), "status", user="no-such-user-here")
    assert unknown.returncode == 64
    assert "SENDIT_WATCHER_USER=no-such-user-here: no such user" in unknown.stderr


def test_run_and_as_root_stay_root_and_a_missing_package_user_is_no_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(privileges.USER_VARIABLE, "nobody")
    assert privileges.service_user("status", as_root=False) is not None
    assert privileges.service_user("run", as_root=False) is None
    assert privileges.service_user("status", as_root=True) is None
    monkeypatch.delenv(privileges.USER_VARIABLE)
    missing = privileges.service_user("status", as_root=False)  # the package's user, where it is installed
    assert missing is None or missing.pw_name == privileges.SERVICE_USER


def test_metrics_textfile_is_written_by_root_from_what_the_service_user_read(tmp_path: Path,
                                                                             database: DatabaseConfig) -> None:
    target = tmp_path / "metrics" / "sendit-watcher.prom"
    target.parent.mkdir(mode=0o700)  # root's alone, as node-exporter's directory may be
    config = write_config(tmp_path / "watcher.conf", database, {})
    written = typed_by_root("--config", str(config), "metrics", "--textfile", str(target))
    assert written.returncode == 0, written.stderr
    text = target.read_text()
    assert "sendit_watcher_up 1\n" in text and "sendit_watcher_last_success_timestamp_seconds 0\n" in text
    assert target.stat().st_uid == 0 and target.stat().st_mode & 0o777 == 0o644

    make_study(tmp_path / "ST", 1)
    assert main(["--config", str(config), "import", "--no-progress", str(tmp_path / "ST")]) == 0
    imported = time.time()
    assert typed_by_root("--config", str(config), "metrics", "--textfile", str(target)).returncode == 0
    [success] = [float(line.split()[1]) for line in target.read_text().splitlines()
                 if line.startswith("sendit_watcher_last_success_timestamp_seconds ")]
    assert imported - 30 < success <= imported

    down = write_config(tmp_path / "down.conf", DatabaseConfig(dsn="host=127.0.0.1 port=9 dbname=x",
                                                               schema=database.schema), {}, connect_timeout=1)
    failed = typed_by_root("--config", str(down), "metrics", "--textfile", str(target))
    assert failed.returncode == 69 and "cannot connect to PostgreSQL" in failed.stderr
    assert target.read_text().splitlines()[-1] == "sendit_watcher_up 0"  # no stale count passes for a current one
    assert "sendit_batches" not in target.read_text()


def test_a_metrics_textfile_says_up_0_when_the_configuration_is_broken_or_the_database_cannot_be_read(
        tmp_path: Path, database: DatabaseConfig, capsys: pytest.CaptureFixture[str]) -> None:
    """Every run that could not fill the textfile leaves ``up 0`` behind, atomically, and still fails with its
    error: a file with errors (typed by root, and not), a database without the schema (read, or not)."""
    target = tmp_path / "metrics" / "sendit-watcher.prom"
    target.parent.mkdir(mode=0o700)
    good = write_config(tmp_path / "watcher.conf", database, {})

    def fresh() -> None:  # the last reading that worked: up 1
        assert main(["--config", str(good), "metrics", "--textfile", str(target)]) == 0
        assert target.read_text().count("sendit_watcher_up 1\n") == 1

    def says_down() -> None:
        assert target.read_text().splitlines()[-1] == "sendit_watcher_up 0" and "sendit_batches" not in \
            target.read_text()
        assert target.stat().st_mode & 0o777 == 0o644 and [p.name for p in target.parent.iterdir()] == [target.name]

    broken = write_config(tmp_path / "broken.conf", database, {}, settle_seconds="soon")
    fresh()
    by_root = typed_by_root("--config", str(broken), "metrics", "--textfile", str(target))
    assert by_root.returncode == 78 and "settle_seconds" in by_root.stderr, by_root.stderr
    says_down()

    fresh()
    assert main(["--config", str(broken), "metrics", "--textfile", str(target)]) == 78
    assert "settle_seconds" in capsys.readouterr().err
    says_down()

    unmigrated = write_config(tmp_path / "unmigrated.conf", DatabaseConfig(dsn=database.dsn, schema="no_such_schema"),
                              {}, migrate_on_start="no")
    for command in (typed_by_root, lambda *a: main(list(a))):
        fresh()
        ended = command("--config", str(unmigrated), "metrics", "--textfile", str(target))
        code = ended if isinstance(ended, int) else ended.returncode
        said = capsys.readouterr().err if isinstance(ended, int) else ended.stderr
        assert code == 1 and "metrics: cannot read the database: database error 42P01" in said, said
        says_down()
