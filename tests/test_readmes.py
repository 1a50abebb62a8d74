"""The three READMEs stay current: README.md (for the people who run it), tests/README.md (what proves each promise,
how the suite runs) and tests/bench/README.md (the benchmarks): each link leads to a file of the repository, each
test the promise table names exists, and each benchmark the figures come from is a module."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
READMES = [REPO / "README.md", REPO / "tests" / "README.md", REPO / "tests" / "bench" / "README.md"]


@pytest.mark.parametrize("readme", READMES, ids=lambda path: str(path.relative_to(REPO)))
def test_every_link_leads_to_a_file_of_the_repository(readme: Path) -> None:
    links = re.findall(r"\]\(([^)]+)\)", readme.read_text())
    for link in links:
        target = (readme.parent / link).resolve()
        assert REPO in target.parents and target.is_file(), f"{readme.name}: link {link} leads to no file here"
    if readme == READMES[0]:
        assert {"tests/README.md", "tests/bench/README.md"} <= set(links), "the README links the other two"


def promise_table() -> list[tuple[str, list[str]]]:
    """Each row of tests/README.md's promise table: the promise and the tests its tests cell names in backquotes
    (``file``, ``file::test`` or ``::test`` of the file named last; other backquoted words are not tests)."""
    text = (REPO / "tests" / "README.md").read_text()
    table = text.split("| promise | tests |\n|---|---|\n", 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in table.splitlines():
        promise, tests = line.strip("|").split(" | ", 1)
        rows.append((promise.strip(), re.findall(r"`((?:[\w/.-]+\.(?:py|sh))?(?:::\w+)?)`", tests)))
    return rows


def test_every_test_the_promise_table_names_exists() -> None:
    rows = promise_table()
    assert len(rows) >= 20, "the promise table was not found whole"
    for promise, names in rows:
        assert names, f"promise {promise!r} names no test"
        module: Path | None = None
        for name in names:
            if name.startswith("::"):  # another test of the module named last
                assert module is not None, f"{promise!r}: {name} follows no module"
                test = name[2:]
            else:
                path, _, test = name.partition("::")
                module = next((p for p in (REPO / "tests" / path, REPO / path) if p.is_file()), None)
                assert module is not None, f"{promise!r}: {path} is no file of the tests"
            if test:
                assert re.search(rf"^def {re.escape(test)}\(", module.read_text(), re.M), (
                    f"{promise!r}: {module.relative_to(REPO)} has no test {test}")


def test_every_benchmark_the_figures_come_from_is_a_module() -> None:
    text = (REPO / "tests" / "bench" / "README.md").read_text()
    modules = set(re.findall(r"python -m (tests\.bench\.\w+)", text))
    assert {"tests.bench.run", "tests.bench.bench_history"} <= modules, modules
    for module in modules:
        assert (REPO / (module.replace(".", "/") + ".py")).is_file(), f"tests/bench/README.md names {module}"
