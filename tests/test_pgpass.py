"""The pgpass credential (``LoadCredential=pgpass:...``) against a real PostgreSQL that requires a password: a
private cluster whose pg_hba.conf asks every role but postgres for SCRAM, and a credential file mode 0440, as
systemd 257 mounts it, which libpq itself refuses to read."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from sendit_watcher import pgpass
from sendit_watcher.config import DatabaseConfig
from sendit_watcher.db import connect
from sendit_watcher.errors import DatabaseUnavailable
from tests.fix_postgres import PrivateCluster
from tests.helpers import write_config

ROLE = "sendit_pw"
PASSWORD = "se:cr\\et pass"  # a colon and a backslash, escaped in the file
ESCAPED = "se\\:cr\\\\et pass"


@pytest.fixture(scope="module")
def scram_cluster() -> Iterator[PrivateCluster]:
    """A private cluster on its own socket directory where ROLE must give its password (SCRAM)."""
    cluster = PrivateCluster()
    try:
        admin = cluster.start()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN")
            conn.execute(psycopg.sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                psycopg.sql.Identifier(ROLE), psycopg.sql.Literal(PASSWORD)))
            hba = conn.execute("SHOW hba_file").fetchone()
            assert hba is not None
            Path(hba[0]).write_text("local all postgres trust\nlocal all all scram-sha-256\n")
            conn.execute("SELECT pg_reload_conf()")
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$CREDENTIALS_DIRECTORY, as systemd sets it, with no other password source in the environment."""
    for name in ("PGPASSWORD", "PGPASSFILE", "PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATABASE", "PGSERVICE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    return tmp_path


def write_credential(directory: Path, text: str) -> Path:
    path = directory / pgpass.CREDENTIAL
    path.write_text(text)
    path.chmod(0o440)  # group-readable, as systemd 257 mounts it (0440 and an ACL): libpq refuses such a file
    return path


def role_dsn(cluster: PrivateCluster) -> str:
    return f"host={cluster.directory} port=5432 dbname=postgres user={ROLE}"


def test_the_server_refuses_a_missing_or_wrong_password(scram_cluster: PrivateCluster, credentials: Path) -> None:
    with pytest.raises(DatabaseUnavailable, match="no password supplied"):
        connect(DatabaseConfig(dsn=role_dsn(scram_cluster)))
    write_credential(credentials, f"{scram_cluster.directory}:5432:postgres:{ROLE}:wrong\n")
    with pytest.raises(DatabaseUnavailable, match="password authentication failed") as failure:
        connect(DatabaseConfig(dsn=role_dsn(scram_cluster)))
    assert "wrong" not in str(failure.value)


def test_a_group_readable_credential_that_libpq_refuses_connects(scram_cluster: PrivateCluster,
                                                                 credentials: Path) -> None:
    path = write_credential(credentials, f"{scram_cluster.directory}:5432:postgres:{ROLE}:{ESCAPED}\n")
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):  # libpq alone, as on Debian 13
        psycopg.connect(role_dsn(scram_cluster), passfile=str(path)).close()
    with connect(DatabaseConfig(dsn=role_dsn(scram_cluster))) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (ROLE,)


def test_lines_match_as_libpqs_do(scram_cluster: PrivateCluster, credentials: Path) -> None:
    directory = scram_cluster.directory
    write_credential(credentials, "\n".join([
        "# a comment, a blank line, an incomplete line and lines for others come first",
        "",
        f"{directory}:5432:postgres",
        f"localhost:5432:postgres:{ROLE}:wrong",  # localhost is libpq's default socket directory, not this one
        f"{directory}:5433:postgres:{ROLE}:wrong",
        f"{directory}:5432:other:{ROLE}:wrong",
        "*:*:*:someone_else:wrong",
        f"*:5432:*:{ROLE}:{ESCAPED}",  # the first that matches
        "*:*:*:*:wrong",
    ]) + "\n")
    with connect(DatabaseConfig(dsn=role_dsn(scram_cluster))) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (ROLE,)


def test_a_password_given_elsewhere_wins_over_the_credential(scram_cluster: PrivateCluster, credentials: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    write_credential(credentials, f"*:*:*:{ROLE}:wrong\n")
    with connect(DatabaseConfig(dsn=f"{role_dsn(scram_cluster)} password='{PASSWORD.replace(chr(92), chr(92) * 2)}'")):
        pass
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    with connect(DatabaseConfig(dsn=role_dsn(scram_cluster))):
        pass


def test_without_a_credential_nothing_is_read(credentials: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert pgpass.password_for("host=db.example.org user=u") is None  # no file named pgpass in the directory
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert pgpass.credential_file() is None


def test_the_targets_use_libpqs_defaults_for_what_the_dsn_leaves_out(credentials: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGUSER", "alice")
    [target] = pgpass.targets({})
    assert target == pgpass.Target("localhost", "5432", "alice", "alice")
    assert pgpass.targets({"host": pgpass._default_socket_directory()})[0].host == "localhost"
    assert pgpass.targets({"host": "a,b", "port": "5433", "dbname": "d"}) == [
        pgpass.Target("a", "5433", "d", "alice"), pgpass.Target("b", "5433", "d", "alice")]


def test_different_passwords_for_the_hosts_of_one_dsn_are_refused(credentials: Path) -> None:
    write_credential(credentials, "a:*:*:*:pw-first\nb:*:*:*:pw-second\n")
    with pytest.raises(DatabaseUnavailable, match="different passwords") as refused:
        pgpass.password_for("host=a,b user=u dbname=d")
    assert "pw-" not in str(refused.value)
    assert pgpass.password_for("host=a user=u dbname=d") == "pw-first"



def test_a_dsn_that_cannot_be_parsed_is_said_as_without_a_credential(credentials: Path) -> None:
    write_credential(credentials, "*:*:*:*:secret-pw\n")
    with pytest.raises(DatabaseUnavailable, match="cannot be parsed") as failure:
        connect(DatabaseConfig(dsn="host=db password=dsn-pw unquoted"))
    assert "secret-pw" not in str(failure.value) and "dsn-pw" not in str(failure.value)


def test_a_reload_check_without_the_credential_leaves_the_database_check_to_the_service(
        scram_cluster: PrivateCluster, credentials: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """systemd gives ExecReload no credentials (#35227): `check-config --reload` there cannot log in, and must not
    fail every `systemctl reload` for it; outside systemd the same failure is exit 69."""
    from sendit_watcher import cli
    (tmp_path / "incoming").mkdir()
    config = write_config(tmp_path / "watcher.conf", DatabaseConfig(dsn=role_dsn(scram_cluster)),
                          {"incoming": tmp_path / "incoming"})
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    assert cli.main(["--config", str(config), "check-config", "--reload"]) == 69
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef")  # what systemd sets for every process of a unit
    assert cli.main(["--config", str(config), "check-config", "--reload"]) == 0
    err = capsys.readouterr().err
    assert "no password supplied" in err and "ExecReload has no credentials" in err, err
