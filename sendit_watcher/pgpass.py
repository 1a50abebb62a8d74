"""The password of a pgpass file passed as a systemd credential, read by us and handed to libpq as ``password=``.

libpq reads a pgpass file only when no one but its owner may read it: systemd 257 (Debian 13) mounts a
``LoadCredential=`` file 0440 with an ACL for the service's user, and libpq refuses it ("has group or world
access"). So the credential named ``pgpass`` is read here, in libpq's own format and with its matching rules
(``host:port:database:user:password``, ``\\`` escaping ``:`` and ``\\``, a field ``*`` matching anything, the
first matching line winning), for the host, port, database and user the connection will use.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from sendit_watcher.errors import DatabaseUnavailable

__all__ = ["CREDENTIAL", "Target", "credential_file", "entries", "lookup", "password_for", "targets"]

CREDENTIAL = "pgpass"
"""The credential's name: ``LoadCredential=pgpass:/etc/sendit-watcher/pgpass``."""


@dataclass(frozen=True)
class Target:
    """What a pgpass line is matched against: the host (``localhost`` for libpq's default socket directory),
    port, database and user of one host of the connection."""

    host: str
    port: str
    dbname: str
    user: str


def credential_file() -> Path | None:
    """The pgpass credential systemd passed (``$CREDENTIALS_DIRECTORY/pgpass``), or None."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / CREDENTIAL
    return path if path.is_file() else None


def password_for(dsn: str) -> str | None:
    """The credential's password for this DSN, or None when libpq should decide alone: no credential, a
    password already given (in the DSN or PGPASSWORD), a ``passfile`` the operator named, or no matching line."""
    path = credential_file()
    if path is None:
        return None
    params = conninfo_to_dict(dsn) if dsn.strip() else {}
    if params.get("password") or params.get("passfile") or os.environ.get("PGPASSWORD"):
        return None
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise DatabaseUnavailable(f"cannot read the pgpass credential {path}: {exc.strerror}; check the unit's "
                                  "LoadCredential=pgpass:FILE and that FILE exists") from exc
    found = {password for target in targets(params) if (password := lookup(entries(text), target)) is not None}
    if len(found) > 1:
        raise DatabaseUnavailable(f"the pgpass credential {path} gives the hosts of the dsn different passwords; "
                                  "give every host of a dsn the same one (or write one line with host *)")
    return found.pop() if found else None


def targets(params: dict[str, str | int | None]) -> list[Target]:
    """One Target per host of the connection, with libpq's defaults (PG* variables, then compiled) for what the
    DSN leaves out."""
    defaults = _defaults()

    def value(key: str) -> str:
        given = params.get(key)
        return str(given) if given not in (None, "") else defaults.get(key, "")

    user = value("user")
    dbname = value("dbname") or user
    hosts = (value("host") or value("hostaddr")).split(",")
    ports = value("port").split(",")
    if len(ports) == 1:
        ports *= len(hosts)
    if len(ports) != len(hosts):
        return []  # libpq refuses such a dsn itself, and says why
    return [Target(_pgpass_host(host), port or "5432", dbname, user) for host, port in zip(hosts, ports, strict=True)]


def _pgpass_host(host: str) -> str:
    """libpq matches a connection through its default socket directory (or with no host) as ``localhost``."""
    return "localhost" if not host or host == _default_socket_directory() else host


def _defaults() -> dict[str, str]:
    """libpq's value of each option when the DSN leaves it out (its PG* variable, else its compiled default)."""
    return {option.keyword.decode(): option.val.decode() for option in pq.Conninfo.get_defaults()
            if option.val is not None}


@functools.cache
def _default_socket_directory() -> str:
    """The socket directory libpq uses when no host is given (Debian's /var/run/postgresql), from libpq itself: a
    connection started without a host (to port 1, where nothing listens) and dropped at once."""
    conn = pq.PGconn.connect_start(b"host='' hostaddr='' port=1 dbname=x user=x")
    try:
        return (conn.host or b"").decode()
    finally:
        conn.finish()


@dataclass(frozen=True)
class Entry:
    """One line of a pgpass file: four patterns (None for ``*``) and a password."""

    host: str | None
    port: str | None
    dbname: str | None
    user: str | None
    password: str

    def matches(self, target: Target) -> bool:
        pairs = ((self.host, target.host), (self.port, target.port), (self.dbname, target.dbname),
                 (self.user, target.user))
        return all(pattern is None or pattern == value for pattern, value in pairs)


def entries(text: str) -> Iterator[Entry]:
    """The lines of a pgpass file as libpq reads them; comments, blank and incomplete lines skipped."""
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = _split(line)
        if len(fields) < 5:
            continue
        host, port, dbname, user = (None if raw == "*" else _unescape(raw) for raw in fields[:4])
        yield Entry(host, port, dbname, user, _unescape(fields[4]))


def lookup(lines: Iterable[Entry], target: Target) -> str | None:
    """The password of the first line that matches, or None."""
    return next((line.password for line in lines if line.matches(target)), None)


def _split(line: str) -> list[str]:
    """The fields of a line, split at each ``:`` that no backslash escapes (the escapes are kept)."""
    fields: list[str] = []
    current: list[str] = []
    escaped = False
    for char in line:
        if char == ":" and not escaped:
            fields.append("".join(current))
            current = []
            continue
        current.append(char)
        escaped = char == "\\" and not escaped
    fields.append("".join(current))
    return fields


def _unescape(field: str) -> str:
    r"""``\x`` is ``x``; a trailing lone backslash stays."""
    out: list[str] = []
    chars = iter(field)
    for char in chars:
        out.append(next(chars, "\\") if char == "\\" else char)
    return "".join(out)
