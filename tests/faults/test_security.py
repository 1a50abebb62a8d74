"""Security properties that need no booted system: only parameterised SQL, and no password in any output.

(The unprivileged user, the sandbox exposure and the PHI-free journal are checked in tests/e2e.)"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import sendit_watcher
from sendit_watcher.config import DatabaseConfig
from tests.fix_service import REPO, ServiceProcess
from tests.helpers import write_config

SQL_METHODS = {"execute", "executemany", "copy"}
# The one query text that is not a literal: a migration file shipped in the package, applied as a whole.
ALLOWED = {("migrate.py", "migration.text.encode('utf-8')")}


def _constants(tree: ast.Module) -> set[str]:
    """Module-level names bound to a literal or to a psycopg.sql composition (whose parts are quoted by psycopg)."""
    return {target.id for node in tree.body if isinstance(node, ast.Assign)
            and (isinstance(node.value, ast.Constant) or _is_sql_composition(node.value))
            for target in node.targets if isinstance(target, ast.Name)}


def _is_sql_composition(node: ast.expr) -> bool:
    """A psycopg.sql call chain whose sql.SQL text, if any, is a literal (sql.SQL(f"...") is string building)."""
    while isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if isinstance(node.func.value, ast.Name) and node.func.value.id == "sql":
            return node.func.attr != "SQL" or all(isinstance(arg, ast.Constant) for arg in node.args)
        node = node.func.value
    return False


def string_built_sql() -> list[str]:
    """Every call of execute/copy whose query is not a literal, a module constant or a psycopg.sql composition, in
    the package under test (the checkout's, or the installed one under autopkgtest, where the tests have no
    sendit_watcher/ beside them)."""
    found = []
    sources = sorted(Path(sendit_watcher.__file__).parent.glob("*.py"))
    assert len(sources) > 10, f"the lint found no source of sendit_watcher at {sendit_watcher.__file__}"
    for path in sources:
        tree = ast.parse(path.read_text())
        constants = _constants(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in SQL_METHODS and node.args):
                continue
            query = node.args[0]
            if isinstance(query, ast.Constant) or (isinstance(query, ast.Name) and query.id in constants):
                continue
            if _is_sql_composition(query) or (path.name, ast.unparse(query)) in ALLOWED:
                continue
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(query)}")
    return found


def test_only_parameterised_sql() -> None:
    assert string_built_sql() == []


def test_the_lint_finds_string_built_sql(tmp_path: Path) -> None:
    bad = ast.parse('conn.execute(f"SELECT {x}")\nconn.execute("SELECT " + x)\nconn.execute("%s" % x)\n'
                    'conn.execute(sql.SQL(f"SELECT {x}").format())\n')
    queries = [node.args[0] for node in ast.walk(bad) if isinstance(node, ast.Call)
               and isinstance(node.func, ast.Attribute) and node.func.attr == "execute"]
    assert len(queries) == 4 and not any(isinstance(q, ast.Constant) or _is_sql_composition(q) for q in queries)
    good = ast.parse('Q = sql.SQL("SELECT {}").format(sql.Identifier(x))\n')
    assert _constants(good) == {"Q"}


def test_the_password_never_shows_in_status_errors_or_the_service_log(tmp_path: Path) -> None:
    secret = "hunter2-s3cret"
    uri = f"postgresql://someone:{secret}@127.0.0.1:9/x"
    result = subprocess.run([sys.executable, "-m", "sendit_watcher", "--dsn", uri, "status"], capture_output=True,
                            text=True, timeout=60, env={"PYTHONPATH": str(REPO), "SENDIT_WATCHER_USER": ""})
    assert result.returncode == 69 and "cannot connect" in result.stderr
    assert secret not in result.stdout + result.stderr
    (tmp_path / "in").mkdir()
    database = DatabaseConfig(dsn=f"host=127.0.0.1 port=9 user=someone password={secret}", schema="s")
    service = ServiceProcess(write_config(tmp_path / "w.conf", database, {"in": tmp_path / "in"}), tmp_path)
    try:
        service.wait_ready()
        status = service.notify.wait_for(lambda line: line.startswith("STATUS=waiting for database"))
    finally:
        service.kill()
    assert "password=***" in status
    assert secret not in service.log and secret not in "\n".join(service.notify.fields())
