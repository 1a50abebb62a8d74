"""Configuration: the schema, validation errors naming file/section/key, check-config and its exit code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyinotify
import pytest

from sendit_watcher import config as configuration
from sendit_watcher.cli import main
from sendit_watcher.errors import EXIT_CODES, EXIT_CONFIG, EXIT_USAGE, ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "watcher.conf"
    path.write_text(text)
    return path


def test_full_file_is_parsed_into_typed_values(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    path = write(tmp_path, f"""
[database]
dsn = dbname=sendit   ; a comment
schema = imaging
[import]
full_header = no
workers = 3
[watcher]
temp_suffixes = .tmp, .PART .incoming
settle_seconds = 2.5
[watch:incoming]
path = {tmp_path}/data/
events = IN_CREATE|IN_MOVED_TO
""")
    config = configuration.load(str(path))
    assert config.database.dsn == "dbname=sendit" and config.database.schema == "imaging"
    assert config.importing.full_header is False and config.importing.worker_count == 3
    assert config.watcher.temp_suffixes == (".tmp", ".part", ".incoming")
    assert config.watcher.is_temporary("Study.PART") and not config.watcher.is_temporary("Study")
    watch = config.watches[0]
    assert (watch.name, watch.path) == ("incoming", tmp_path / "data")
    assert watch.events == pyinotify.IN_CREATE | pyinotify.IN_MOVED_TO
    assert watch.processor == configuration.DEFAULT_PROCESSOR


def test_every_problem_names_file_section_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, """
[database]
shema = x
[import]
workers = many
[watcher]
settle_seconds = -1
[watch:a]
events = IN_CREATE|IN_BOGUS
[mystery]
""")
    with pytest.raises(ConfigError) as caught:
        configuration.load(str(path))
    problems = caught.value.problems
    expected = [f"{path}: [database] shema: unknown option", f"{path}: [import] workers: 'many' is not a whole",
                f"{path}: [watcher] settle_seconds: '-1' is not a finite", f"{path}: [watch:a] path: required",
                f"{path}: [watch:a] events: 'IN_BOGUS' is not a pyinotify event", f"{path}: [mystery]: unknown section"]
    for start in expected:
        assert any(p.startswith(start) for p in problems), (start, problems)


def test_nested_roots_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, f"[watch:a]\npath = {tmp_path}\n[watch:b]\npath = {tmp_path}/inner\n")
    with pytest.raises(ConfigError, match="must not nest"):
        configuration.load(str(path))
    (tmp_path / "a" / "sub").mkdir(parents=True)  # found by an outside attack: nested through a symbolic link
    (tmp_path / "link").symlink_to(tmp_path / "a" / "sub")
    path = write(tmp_path, f"[watch:a]\npath = {tmp_path}/a\n[watch:b]\npath = {tmp_path}/link\n")
    with pytest.raises(ConfigError, match="must not nest"):
        configuration.load(str(path))


def test_missing_named_file_is_an_error_but_missing_default_is_defaults(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        configuration.load(str(tmp_path / "nope.conf"))
    monkeypatch.setattr(configuration, "DEFAULT_CONFIG_PATH", tmp_path / "absent.conf")
    monkeypatch.delenv(configuration.CONFIG_ENV, raising=False)
    assert configuration.load(None).watches == ()


def test_environment_variable_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[database]\nschema = fromenv\n")
    monkeypatch.setenv(configuration.CONFIG_ENV, str(path))
    assert configuration.load(None).database.schema == "fromenv"


def test_check_config_exits_78_listing_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, f"[watch:x]\npath = {tmp_path}/missing\nprocessor = no.such.Processor\n")
    assert main(["--config", str(path), "check-config"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"[watch:x] path: {tmp_path}/missing is not an existing directory" in err
    assert "[watch:x] processor: cannot import module 'no.such'" in err


def test_seconds_beyond_what_a_timer_holds_are_a_config_error(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Found by an outside attack: drain_seconds = 3000000 passed check-config and crashed the stop
    (OverflowError in a join's timeout)."""
    path = write(tmp_path, "[watcher]\ndrain_seconds = 3000000\nsettle_seconds = 1e6\n")
    assert main(["--config", str(path), "check-config"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "[watcher] drain_seconds: '3000000' is more than 1,000,000 seconds" in err
    assert "settle_seconds" not in err  # 1,000,000 itself is allowed


def test_check_config_prints_effective_config_without_password(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, f"[database]\ndsn = host=db password='s3cr et' user=x\n[watch:in]\npath = {tmp_path}\n")
    assert main(["--config", str(path), "check-config"]) == 0
    out = capsys.readouterr().out
    assert "s3cr" not in out and "password=***" in out
    assert f"[watch:in]\npath = {tmp_path}\nevents = IN_CLOSE_WRITE|IN_CREATE|IN_MOVED_TO" in out
    assert main(["--config", str(path), "--dsn", "postgresql://u:hunter2@db/x", "check-config"]) == 0
    assert "hunter2" not in capsys.readouterr().out


def test_a_bad_command_line_exits_64_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["no-such-command"], ["import"], ["status", "--limit", "many"]):
        with pytest.raises(SystemExit) as raised:
            main(argv)
        assert raised.value.code == EXIT_USAGE, argv
        assert "usage: sendit-watcher" in capsys.readouterr().err


def test_an_unparsable_dsn_is_a_config_error_that_shows_no_fragment(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "w.conf"
    path.write_text("[database]\ndsn = host=db password=Tr0ub4dor horse-battery-staple\n")
    assert main(["--config", str(path), "check-config"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "[database] dsn" in err and "quote" in err
    assert "horse" not in err and "Tr0ub4dor" not in err


def test_redact_dsn_forms() -> None:
    from psycopg.conninfo import conninfo_to_dict

    assert conninfo_to_dict(configuration.redact_dsn("host=a password=x dbname=b")) == {
        "host": "a", "password": "***", "dbname": "b"}
    assert conninfo_to_dict(configuration.redact_dsn("postgresql://me:pw@h:5/d")) == {
        "user": "me", "password": "***", "host": "h", "port": "5", "dbname": "d"}
    assert configuration.redact_dsn("dbname=x") == "dbname=x"
    assert conninfo_to_dict(configuration.redact_dsn("password='Tr0ub4dor horse' dbname=x")) == {
        "password": "***", "dbname": "x"}
    unparsable = configuration.redact_dsn("password=Tr0ub4dor horse-battery-staple")
    assert "horse" not in unparsable and "Tr0ub4dor" not in unparsable


def test_every_schema_option_has_help_and_a_parsable_default() -> None:
    for section, options in configuration.SCHEMA.items():
        for option in options:
            assert option.help, (section, option.key)
            if option.default is not None:
                option.parse(option.default)


def _manpage() -> Any:
    """packaging/manpage.py, the generator of the man page."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "packaging" / "manpage.py"
    spec = importlib.util.spec_from_file_location("manpage", path)
    assert spec is not None and spec.loader is not None
    manpage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(manpage)
    return manpage


def test_the_readme_leaves_every_option_to_the_man_page() -> None:
    """The man page is the one reference of the options (the next test checks it is current and complete)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "sendit-watcher(8)" in readme and "man sendit-watcher" in readme
    for section, options in configuration.SCHEMA.items():
        for option in options:
            assert f"| `[{section}]` | `{option.key}` |" not in readme, f"[{section}] {option.key}: a second reference"


def test_man_page_is_current_and_lists_every_option() -> None:
    manpage = _manpage()
    committed = manpage.TARGET.read_text()
    assert committed == manpage.render(), "run packaging/manpage.py with the venv's Python and commit the result"
    for options in configuration.SCHEMA.values():
        for option in options:
            assert f".B {option.key}" in committed
    exit_status = committed.split(".SH EXIT STATUS\n", 1)[1].split(".SH ", 1)[0]
    assert [line[3:] for line in exit_status.splitlines() if line.startswith(".B ")] == [
        str(code) for code in EXIT_CODES]


def test_help_lists_every_exit_code_and_log_level(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["run", "--help"], ["check-config", "--help"]):
        with pytest.raises(SystemExit) as raised:
            main(argv)
        assert raised.value.code == 0
        out = capsys.readouterr().out
        codes = out.split("exit codes:\n", 1)[1].split("\n\n", 1)[0]
        assert [line.split()[0] for line in codes.splitlines() if not line.startswith("      ")] == [
            str(code) for code in EXIT_CODES], (argv, codes)
        assert "70  the service's main loop died" in codes
    with pytest.raises(SystemExit) as raised:
        main(["--log-level", "verbose", "check-config"])
    assert raised.value.code == EXIT_USAGE
    choices = capsys.readouterr().err.split("choose from", 1)[1]
    assert [level for level in choices.replace("'", " ").replace(",", " ").replace(")", " ").split()] == list(
        configuration.LOG_LEVELS)


def test_check_config_shows_every_option_of_a_watch_and_an_empty_marker_not_at_all(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, f"[watch:a]\npath = {tmp_path}/a\nevents = ALL_EVENTS\n"
                           f"[watch:b]\npath = {tmp_path}/b\nfinished_marker = DONE\n")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert main(["--config", str(path), "check-config"]) == 0
    out = capsys.readouterr().out
    processor = configuration.DEFAULT_PROCESSOR
    assert f"[watch:a]\npath = {tmp_path}/a\nevents = ALL_EVENTS\nprocessor = {processor}\n\n" in out
    assert (f"[watch:b]\npath = {tmp_path}/b\nevents = IN_CLOSE_WRITE|IN_CREATE|IN_MOVED_TO\n"
            f"processor = {processor}\nfinished_marker = DONE\n") in out


def test_conf_d_files_are_read_after_the_file_in_name_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "more").mkdir()
    path = write(tmp_path, f"[database]\nschema = first\nretry_interval = 7\n"
                           f"[watch:incoming]\npath = {tmp_path}/data\n")
    drop_ins = tmp_path / configuration.DROP_IN_DIRECTORY
    drop_ins.mkdir()
    (drop_ins / "20-late.conf").write_text("[database]\nschema = last\n")
    (drop_ins / "10-early.conf").write_text(f"[database]\nschema = middle\n[watch:more]\npath = {tmp_path}/more\n")
    (drop_ins / "30-ignored.conf.dpkg-old").write_text("[database]\nschema = never\n")
    config = configuration.load(str(path))
    assert config.database.schema == "last" and config.database.retry_interval == 7
    assert [(w.name, w.source) for w in config.watches] == [("incoming", path), ("more", drop_ins / "10-early.conf")]
    assert config.files == (path, drop_ins / "10-early.conf", drop_ins / "20-late.conf")
    assert main(["--config", str(path), "check-config"]) == 0
    assert f"; effective configuration from {path}, {drop_ins / '10-early.conf'}" in capsys.readouterr().out


def test_a_problem_in_a_conf_d_file_names_that_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "[database]\nschema = fine\n")
    drop_ins = tmp_path / configuration.DROP_IN_DIRECTORY
    drop_ins.mkdir()
    bad = drop_ins / "50-site.conf"
    bad.write_text(f"[database]\nschema = Not-OK\nshema = x\n[watch:gone]\npath = {tmp_path}/missing\n")
    with pytest.raises(ConfigError) as caught:
        configuration.load(str(path))
    assert caught.value.problems == [
        f"{bad}: [database] shema: unknown option; known options are dsn, schema, migrate_on_start, "
        "connect_timeout, retry_interval",
        f"{bad}: [database] schema: 'Not-OK' is not a plain lower-case SQL identifier (letters, digits, _)",
    ]
    bad.write_text(f"[watch:gone]\npath = {tmp_path}/missing\n")
    assert main(["--config", str(path), "check-config"]) == EXIT_CONFIG
    assert f"{bad}: [watch:gone] path: {tmp_path}/missing is not an existing directory" in capsys.readouterr().err
    bad.write_text("[database\n")
    with pytest.raises(ConfigError, match=f"^{bad}: cannot be read"):
        configuration.load(str(path))


def test_conf_d_without_its_file_is_an_error_naming_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(configuration, "DEFAULT_CONFIG_PATH", tmp_path / "watcher.conf")
    monkeypatch.delenv(configuration.CONFIG_ENV, raising=False)
    (tmp_path / configuration.DROP_IN_DIRECTORY).mkdir()
    assert configuration.load(None).watches == ()  # an empty conf.d changes nothing
    (tmp_path / configuration.DROP_IN_DIRECTORY / "site.conf").write_text("[database]\nschema = x\n")
    with pytest.raises(ConfigError, match=f"{tmp_path}/watcher.conf: no such configuration file, but "
                                          f"{tmp_path}/conf.d holds 1 file"):
        configuration.load(None)
