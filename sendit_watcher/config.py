"""The configuration: one declarative schema of every option, parsed and validated into typed objects.

The same schema drives validation, ``check-config`` output and the man page's option list.
"""

from __future__ import annotations

import configparser
import os
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sendit_watcher.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATH", "DROP_IN_DIRECTORY", "CONFIG_ENV", "Option", "SCHEMA", "WATCH_SECTION_PREFIX",
    "LOST_AND_FOUND", "LOG_LEVELS",
    "DatabaseConfig", "ImportConfig", "WatcherConfig", "RootConfig", "Config",
    "load", "config_path", "parse_event_mask", "redact_dsn", "effective_ini",
]

DEFAULT_CONFIG_PATH = Path("/etc/sendit-watcher/watcher.conf")
DROP_IN_DIRECTORY = "conf.d"  # beside the configuration file: *.conf read after it, in name order
CONFIG_ENV = "SENDIT_WATCHER_CONFIG"
WATCH_SECTION_PREFIX = "watch:"
DEFAULT_PROCESSOR = "sendit_watcher.processors.DicomFolderImporter"
LOST_AND_FOUND = "lost+found"  # a folder of this name directly in a root is never a batch
LOG_LEVELS = ("debug", "info", "warning", "error")  # [watcher] log_level and --log-level


# --- value parsers: each takes the raw string and returns the typed value or raises ValueError ---

def _text(raw: str) -> str:
    return raw.strip()


def _boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "yes", "true", "on"):
        return True
    if value in ("0", "no", "false", "off"):
        return False
    raise ValueError(f"{raw!r} is not a boolean; use yes or no")


def _count(raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"{raw!r} is not a whole number") from None
    if value < 0:
        raise ValueError(f"{value} is negative; use 0 or more")
    return value


def _seconds(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError(f"{raw!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{raw!r} is not a finite number of seconds of 0 or more")
    if value > MAX_SECONDS:  # timers and joins overflow at 2**31 ms
        raise ValueError(f"{raw!r} is more than {MAX_SECONDS:,} seconds (11.5 days)")
    return value


MAX_SECONDS = 1_000_000


def _identifier(raw: str) -> str:
    value = raw.strip()
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", value):
        raise ValueError(f"{value!r} is not a plain lower-case SQL identifier (letters, digits, _)")
    return value


def _suffixes(raw: str) -> tuple[str, ...]:
    values = tuple(s.lower() for s in raw.replace(",", " ").split())
    bad = [s for s in values if not s.startswith(".") or "/" in s]
    if bad:
        raise ValueError(f"{' '.join(bad)}: each suffix starts with '.' and holds no '/'")
    return values


def _absolute_path(raw: str) -> Path:
    value = raw.strip()
    if not value:
        raise ValueError("is empty; give the absolute path of the directory to watch")
    path = Path(value)
    if not path.is_absolute():
        raise ValueError(f"{value!r} is not an absolute path")
    return Path(os.path.normpath(path))


def parse_event_mask(raw: str) -> int:
    """Turn ``IN_CREATE|IN_MOVED_TO`` (or ``ALL_EVENTS``) into a pyinotify mask."""
    import pyinotify

    mask = 0
    for name in (part.strip() for part in raw.split("|")):
        if name == "ALL_EVENTS":
            mask |= pyinotify.ALL_EVENTS
        elif name in pyinotify.EventsCodes.ALL_FLAGS:
            mask |= pyinotify.EventsCodes.ALL_FLAGS[name]
        else:
            raise ValueError(f"{name!r} is not a pyinotify event name (e.g. IN_CREATE, IN_MOVED_TO, ALL_EVENTS)")
    return mask


def _dotted_path(raw: str) -> str:
    value = raw.strip()
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", value):
        raise ValueError(f"{value!r} is not a dotted path such as {DEFAULT_PROCESSOR}")
    return value


def _file_name(raw: str) -> str:
    value = raw.strip()
    if "/" in value or value in (".", ".."):
        raise ValueError(f"{value!r} is not a plain file name")
    return value


def _role(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("all", "watcher", "worker"):
        raise ValueError(f"{raw!r} is not one of all, watcher, worker")
    return value


def _log_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in (level.upper() for level in LOG_LEVELS):
        raise ValueError(f"{raw!r} is not one of {', '.join(LOG_LEVELS)}")
    return value


def redact_dsn(dsn: str) -> str:
    """The DSN with its password replaced by ``***``, found by parsing it as libpq does (conninfo or URI) and
    written back as a conninfo string; a DSN that cannot be parsed is not shown at all."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    if not dsn.strip():
        return ""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001 - libpq's parse error would echo a fragment of it
        return "(a dsn that cannot be parsed; not shown)"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo("", **params)


def _dsn(raw: str) -> str:
    value = raw.strip()
    if value and redact_dsn(value).startswith("(a dsn that cannot be parsed"):
        raise ValueError("is not a valid libpq conninfo string or URI; quote a value that holds spaces, "
                         "e.g. password='two words', or use a pgpass file")
    return value


@dataclass(frozen=True)
class Option:
    """One configuration option: its key, parser, default (None = required) and help text."""

    key: str
    parse: Callable[[str], Any]
    default: str | None
    help: str
    secret: bool = False


SCHEMA: dict[str, tuple[Option, ...]] = {
    "database": (
        Option("dsn", _dsn, "", "libpq conninfo or URI; empty uses libpq defaults (PG* variables, "
               "pgpass, service file)", secret=True),
        Option("schema", _identifier, "sendit", "schema that holds sendit-watcher's tables"),
        Option("migrate_on_start", _boolean, "yes", "apply pending schema migrations when the service starts"),
        Option("connect_timeout", _seconds, "10", "seconds to wait for one connection attempt"),
        Option("retry_interval", _seconds, "5", "seconds between attempts while the database is unreachable"),
    ),
    "import": (
        Option("full_header", _boolean, "yes", "store each instance's whole header (no bulk data) as JSONB "
               "in the DICOM JSON model; no keeps the main tags only"),
        Option("workers", _count, "0", "importer worker processes of the service; 0 = number of CPU cores"),
        Option("parse_processes", _count, "0", "processes that parse one large folder's files in parallel (the "
               "import command; a service worker for folders of 500 files or more); 0 = number of CPU cores"),
    ),
    "watcher": (
        Option("temp_suffixes", _suffixes, ".tmp .part", "folder-name suffixes (case-insensitive) that mark "
               "a folder still being written; such folders are never imported"),
        Option("settle_seconds", _seconds, "5", "a folder created under its final name is imported once "
               "nothing in it has changed for this long; a folder deleted or moved away loses its rows this long "
               "after (one renamed back by then is the same folder)"),
        Option("rescan_interval", _seconds, "300", "seconds between catch-up scans of every root "
               "(inotify sees nothing on NFS/CIFS); 0 = only at start and after a queue overflow"),
        Option("drain_seconds", _seconds, "30", "on stop, seconds an in-flight folder may take to commit "
               "before it is rolled back (it is imported again at the next start)"),
        Option("host", _text, "", "name recorded on the batches this host imports; empty = the hostname"),
        Option("role", _role, "all", "what `run` does on this host: all (watch and import), watcher (watch and "
               "queue only) or worker (import queued batches only; watches nothing)"),
        Option("linger_seconds", _seconds, "600", "a folder created under its final name stays watched this long "
               "after it settled, so files that arrive late (a modality pausing) are imported within "
               "settle_seconds, each time as a new finished batch; 0 = stop watching once it settled"),
        Option("linger_folders", _count, "1000", "at most this many folders linger at once (the oldest stop "
               "first), so inotify watches stay bounded"),
        Option("log_level", _log_level, "info", f"{', '.join(LOG_LEVELS[:-1])} or {LOG_LEVELS[-1]}"),
    ),
    WATCH_SECTION_PREFIX + "NAME": (
        Option("path", _absolute_path, None, "absolute path of a directory whose sub-folders are batches"),
        Option("events", parse_event_mask, "IN_CREATE|IN_MOVED_TO|IN_CLOSE_WRITE",
               "pyinotify event names joined by |, or ALL_EVENTS"),
        Option("processor", _dotted_path, DEFAULT_PROCESSOR,
               "dotted path of the pyinotify.ProcessEvent subclass that handles the events"),
        Option("finished_marker", _file_name, "", "for producers that can neither rename nor use a temporary "
               "suffix: a folder is finished when a file of this name appears directly in it (e.g. DONE); the "
               "marker is not imported; empty = the rename and settle rules"),
    ),
}


def _default(section: str, key: str) -> Any:
    """An option's default, parsed by its own parser: the schema is the one place defaults are declared."""
    option = next(o for o in SCHEMA[section] if o.key == key)
    assert option.default is not None, f"[{section}] {key} is required and has no default"
    return option.parse(option.default)


@dataclass(frozen=True)
class DatabaseConfig:
    """The [database] section."""

    dsn: str = _default("database", "dsn")
    schema: str = _default("database", "schema")
    migrate_on_start: bool = _default("database", "migrate_on_start")
    connect_timeout: float = _default("database", "connect_timeout")
    retry_interval: float = _default("database", "retry_interval")


@dataclass(frozen=True)
class ImportConfig:
    """The [import] section (``Config.importing``): how the service imports; zero counts are resolved to the number
    of CPU cores."""

    full_header: bool = _default("import", "full_header")
    workers: int = _default("import", "workers")
    parse_processes: int = _default("import", "parse_processes")

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    @property
    def parse_process_count(self) -> int:
        return self.parse_processes or os.cpu_count() or 1


@dataclass(frozen=True)
class WatcherConfig:
    """The [watcher] section."""

    temp_suffixes: tuple[str, ...] = _default("watcher", "temp_suffixes")
    settle_seconds: float = _default("watcher", "settle_seconds")
    rescan_interval: float = _default("watcher", "rescan_interval")
    drain_seconds: float = _default("watcher", "drain_seconds")
    linger_seconds: float = _default("watcher", "linger_seconds")
    linger_folders: int = _default("watcher", "linger_folders")
    host: str = _default("watcher", "host")
    role: str = _default("watcher", "role")
    log_level: str = _default("watcher", "log_level")

    @property
    def runs_watcher(self) -> bool:
        """This host watches roots and queues folders (role all or watcher)."""
        return self.role in ("all", "watcher")

    @property
    def runs_workers(self) -> bool:
        """This host imports queued batches (role all or worker)."""
        return self.role in ("all", "worker")

    @property
    def host_name(self) -> str:
        return self.host or socket.gethostname()

    def is_temporary(self, name: str) -> bool:
        """True when a folder name marks work in progress (``X.tmp``, ``X.PART``)."""
        lowered = name.lower()
        return any(lowered.endswith(suffix) for suffix in self.temp_suffixes)

    def is_ignored(self, name: str) -> bool:
        """True when a folder directly in a root is never a batch: a temporary name, or ``lost+found`` (the
        file system's own folder where a root is a mount point; fsck puts orphans there, not studies)."""
        return name == LOST_AND_FOUND or self.is_temporary(name)


@dataclass(frozen=True)
class RootConfig:
    """One ``[watch:NAME]`` section, a watch root: sendit's (path, events, processor) tuple (the [watcher] section,
    which holds the settings of every root, is WatcherConfig)."""

    name: str
    path: Path
    events: int
    processor: str
    finished_marker: str = _default(WATCH_SECTION_PREFIX + "NAME", "finished_marker")
    source: Path | None = field(default=None, compare=False)  # the file that names the section first


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    source: Path | None = None
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    importing: ImportConfig = field(default_factory=ImportConfig)
    watcher: WatcherConfig = field(default_factory=WatcherConfig)
    watches: tuple[RootConfig, ...] = ()
    files: tuple[Path, ...] = ()  # every file read: source, then its conf.d/*.conf

    def watch_named(self, name: str) -> RootConfig | None:
        return next((w for w in self.watches if w.name == name), None)


def config_path(explicit: str | None) -> tuple[Path, bool]:
    """The file to read and whether the user named it (a named file must exist)."""
    if explicit:
        return Path(explicit), True
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        return Path(from_env), True
    return DEFAULT_CONFIG_PATH, False


def load(explicit: str | None = None, *, dsn: str | None = None) -> Config:
    """Read and validate the configuration: the file, then each ``conf.d/*.conf`` beside it in name order, a
    later file's value of an option replacing an earlier one's; raise ConfigError listing every problem, each
    naming the file it is in."""
    path, named = config_path(explicit)
    drop_ins = _drop_ins(path)
    if not path.exists():
        if named:
            raise ConfigError([f"{path}: no such configuration file; create it or fix --config/{CONFIG_ENV}"])
        if drop_ins:
            raise ConfigError([f"{path}: no such configuration file, but {drop_ins[0].parent} holds "
                               f"{len(drop_ins)} file(s) to read after it; create it (it may be empty)"])
        return _with_dsn(Config(source=None), dsn)
    files = (path, *drop_ins)
    return _with_dsn(_validate(path, _merge_files(files), files), dsn)


def _drop_ins(path: Path) -> tuple[Path, ...]:
    """The ``*.conf`` files of the ``conf.d`` directory beside the configuration file, sorted by name."""
    folder = path.parent / DROP_IN_DIRECTORY
    try:
        return tuple(sorted(p for p in folder.iterdir() if p.name.endswith(".conf") and not p.is_dir()))
    except FileNotFoundError:
        return ()
    except OSError as exc:
        raise ConfigError([f"{folder}: cannot be listed: {exc.strerror or exc}"]) from None


def _with_dsn(config: Config, dsn: str | None) -> Config:
    if dsn is None:
        return config
    database = DatabaseConfig(**{**config.database.__dict__, "dsn": dsn})
    return Config(config.source, database, config.importing, config.watcher, config.watches, config.files)


def _read_ini(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), default_section="\0none")
    try:
        with path.open(encoding="utf-8") as handle:
            parser.read_file(handle)
    except (configparser.Error, UnicodeDecodeError, OSError) as exc:
        raise ConfigError([f"{path}: cannot be read: {exc}"]) from None
    return parser


# section -> key -> (raw value, the file it came from); a section's first file names it in its problems.
_Merged = dict[str, dict[str, tuple[str, Path]]]


def _merge_files(files: tuple[Path, ...]) -> tuple[_Merged, dict[str, Path]]:
    merged: _Merged = {}
    first_seen: dict[str, Path] = {}
    for path in files:
        parser = _read_ini(path)
        for section in parser.sections():
            first_seen.setdefault(section, path)
            values = merged.setdefault(section, {})
            for key in parser.options(section):
                values[key] = (parser.get(section, key), path)
    return merged, first_seen


def _validate(path: Path, merged: tuple[_Merged, dict[str, Path]], files: tuple[Path, ...]) -> Config:
    values_of, first_seen = merged
    problems: list[str] = []
    sections: dict[str, dict[str, Any]] = {}
    watches: list[RootConfig] = []
    for section, raw in values_of.items():
        where = first_seen[section]
        schema_key = _schema_key(section)
        if schema_key is None:
            known = ", ".join(f"[{s}]" for s in SCHEMA)
            problems.append(f"{where}: [{section}]: unknown section; known sections are {known}")
            continue
        values = dict(_section_values(where, section, raw, SCHEMA[schema_key], problems))
        if schema_key == section:
            sections[section] = values
        elif not problems:
            watches.append(_watch(section, values, where))
    if not problems and not all(s.name for s in watches):
        problems.append(f"{path}: [watch:]: a watch section needs a name, e.g. [watch:incoming]")
    problems.extend(_duplicate_roots(watches))
    if problems:
        raise ConfigError(problems)
    return Config(
        source=path,
        database=DatabaseConfig(**sections.get("database", {})),
        importing=ImportConfig(**sections.get("import", {})),
        watcher=WatcherConfig(**sections.get("watcher", {})),
        watches=tuple(watches),
        files=files,
    )


def _schema_key(section: str) -> str | None:
    if section.startswith(WATCH_SECTION_PREFIX):
        return WATCH_SECTION_PREFIX + "NAME"
    return section if section in SCHEMA else None


def _section_values(where: Path, section: str, raw: dict[str, tuple[str, Path]], options: tuple[Option, ...],
                    problems: list[str]) -> Iterator[tuple[str, Any]]:
    known = {option.key: option for option in options}
    for key, (_, path) in raw.items():
        if key not in known:
            problems.append(f"{path}: [{section}] {key}: unknown option; known options are {', '.join(known)}")
    for option in options:
        value, path = raw[option.key] if option.key in raw else (option.default, where)
        if value is None:
            problems.append(f"{where}: [{section}] {option.key}: required option is missing")
            continue
        try:
            yield option.key, option.parse(value)
        except ValueError as exc:
            problems.append(f"{path}: [{section}] {option.key}: {exc}")


def _watch(section: str, values: dict[str, Any], where: Path) -> RootConfig:
    return RootConfig(name=section[len(WATCH_SECTION_PREFIX):].strip(), source=where, **values)


def _duplicate_roots(watches: list[RootConfig]) -> Iterator[str]:
    """Roots that nest, as written or through symbolic links (compared where they lead now)."""
    for i, watch in enumerate(watches):
        for other in watches[:i]:
            if _nest(watch.path, other.path) or _nest(watch.path.resolve(), other.path.resolve()):
                yield (f"{watch.source}: [watch:{watch.name}] path: {watch.path} overlaps [watch:{other.name}] "
                       f"({other.path}, {other.source}); watch roots must not nest")


def _nest(one: Path, two: Path) -> bool:
    return one == two or two in one.parents or one in two.parents


def effective_ini(config: Config) -> Iterator[str]:
    """The effective configuration as INI lines, secrets redacted (for ``check-config``)."""
    read = ", ".join(str(path) for path in config.files) or config.source or "built-in defaults"
    yield f"; effective configuration from {read}"
    sections: list[tuple[str, object]] = [
        ("database", config.database), ("import", config.importing), ("watcher", config.watcher),
    ]
    for section, values in sections:
        yield f"[{section}]"
        for option in SCHEMA[section]:
            yield f"{option.key} = {_show(option, getattr(values, option.key))}"
        yield ""
    for watch in config.watches:
        yield f"[{WATCH_SECTION_PREFIX}{watch.name}]"
        for option in SCHEMA[WATCH_SECTION_PREFIX + "NAME"]:
            value = getattr(watch, option.key)
            if value or option.default != "":  # an optional option left empty (finished_marker) is not shown
                yield f"{option.key} = {_show(option, value)}"
        yield ""


def _show(option: Option, value: object) -> str:
    if option.secret and isinstance(value, str):
        return redact_dsn(value)
    if option.parse is parse_event_mask and isinstance(value, int):
        return _mask_names(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple):
        return " ".join(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).lower() if option.key == "log_level" else str(value)


def _mask_names(mask: int) -> str:
    import pyinotify

    if mask & pyinotify.ALL_EVENTS == pyinotify.ALL_EVENTS:
        return "ALL_EVENTS"
    names = [name for name, bit in pyinotify.EventsCodes.ALL_FLAGS.items() if bit & mask and bit.bit_count() == 1]
    return "|".join(sorted(set(names)))
