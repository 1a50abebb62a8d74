"""Render sendit-watcher(8) from the option schema, the exit codes and the command line:
``"$DEBIAN_VENV/bin/python" packaging/manpage.py`` (any Python with the runtime packages: it reads the parser).

The output is committed as packaging/sendit-watcher.8, the one reference of the options; a test checks it is current.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sendit_watcher import __version__  # noqa: E402
from sendit_watcher.cli import build_parser  # noqa: E402
from sendit_watcher.config import SCHEMA, Option  # noqa: E402
from sendit_watcher.errors import EXIT_CODES  # noqa: E402

TARGET = Path(__file__).resolve().parent / "sendit-watcher.8"
DATE = "2026-12-04"  # of the text below; change it with the text


def escape(text: str) -> str:
    return text.replace("\\", "\\e").replace("-", "\\-").replace("'", "\\(aq")


HEAD = r""".TH SENDIT\-WATCHER 8 "{date}" "sendit\-watcher {version}" "System Administration"
.SH NAME
sendit\-watcher \- import finished DICOM folders from watched directories into PostgreSQL
.SH SYNOPSIS
.B sendit\-watcher
[\fB\-\-config\fR \fIPATH\fR] [\fB\-\-dsn\fR \fIDSN\fR] [\fB\-\-log\-level\fR \fILEVEL\fR] [\fB\-\-as\-root\fR]
\fICOMMAND\fR [\fIARGS\fR]
.SH DESCRIPTION
sendit\-watcher watches incoming directories with inotify and imports every finished DICOM folder into
PostgreSQL. A batch is a directory directly under a watch root. Upload tools write \fINAME\fR.tmp/ and rename
it to \fINAME\fR/ when done: the rename finishes the folder. A folder created under its final name is imported
once nothing in it has changed for \fBsettle_seconds\fR. Folders with a temporary suffix are never imported.
At start, after an inotify queue overflow and every \fBrescan_interval\fR, the roots are reconciled with the
database by stat alone.
.PP
Each folder is imported in one transaction: every file becomes an instance row or a rejected_file row with
its reason, and importing again adds only what is new. When a batch ends, \fBNOTIFY sendit_batch\fR carries
its id.
.PP
Typed by root, every command but \fBrun\fR runs as the service's user \fBsendit\-watcher\fR (when it exists), so
that it reaches the database as the service does (peer authentication with the packaged \fBdsn\fR). The
configuration is read first, as root. \fB\-\-as\-root\fR stays root; \fBSENDIT_WATCHER_USER\fR names another
user, and empty keeps root.
.SH COMMANDS
.TP
.B run \fR[\fB\-\-demo\fR]
The service in the foreground, as systemd starts it (Type=notify). \fB\-\-demo\fR drops sample studies into
the first watch root. SIGHUP re\-reads the configuration and applies all of it or none of it (a new
database must answer and be migrated first; a new role needs a restart); SIGTERM drains and stops.
.TP
.B import \fIFOLDER\fR... \fR[\fB\-\-json\fR] [\fB\-\-processes\fR \fIN\fR] [\fB\-\-no\-progress\fR] [\fB\-\-force\fR]
Import folders now, each as one batch, printing one summary line (or JSON object) per folder.
\fB\-\-force\fR reads every file again, also those recorded unchanged since the last import.
.TP
.B status \fR[\fB\-\-json\fR] [\fB\-\-limit\fR \fIN\fR] [\fB\-\-failed\fR]
Recent batches and totals; \fB\-\-failed\fR: every failed batch, each with its error.
.TP
.B rejected \fR[\fIFOLDER\fR] [\fB\-\-json\fR]
The rejected files of a folder (its path, or \fIROOT\fR:\fIFOLDER\fR as \fBstatus\fR shows it), or of every
folder, with their reasons.
.TP
.B listen \fR[\fB\-\-since\fR \fISEQ\fR] [\fB\-\-count\fR \fIN\fR]
Print each finished batch as a JSON line, in commit order, as it happens; \fB\-\-since\fR first replays
the batches finished after \fISEQ\fR.
A lost connection is said on stderr, reconnected and replayed from the last seq printed (no gap, no
duplicate); SIGTERM or a closed stdout ends it with status 0.
.TP
.B retry \fR[\fIBATCH\fR...]
Queue failed batches again; without an id, every failed batch.
.TP
.B metrics \fR[\fB\-\-textfile\fR \fIPATH\fR]
Prometheus text\-format metrics, on stdout or written atomically to \fIPATH\fR (as root, when root typed
it): \fBsendit_watcher_up\fR, \fBsendit_watcher_last_success_timestamp_seconds\fR, batches by status and
host, the queue depth and the lost roots. A textfile that cannot be filled (the database not reached or
not readable, a configuration with errors) says \fBsendit_watcher_up 0\fR alone, and the command fails. \fBsendit\-watcher\-metrics.timer\fR (shipped, not enabled) writes
/var/lib/prometheus/node\-exporter/sendit\-watcher.prom every minute.
.TP
.B adopt\-root \fR[\fB\-\-force\fR] \fINAME\fR
Accept the watch root \fINAME\fR as it is now on this host, after a deliberate change (a new share, a root
made anew). A root that is not the file system it was at first sight (unmounted, another file system, a file
system mounted over the folders it held) is lost: none of its rows is removed until it is back or adopted. A
host removes the rows of a folder only if it saw that folder itself, or if it was recorded more than 10 minutes
ago and the root has shown this host it is the share. Refused without \fB\-\-force\fR where the root looks like a
share not mounted (a mount point at first sight, not one now; or none of the folders imported last there): every
folder this host saw that is missing from it would lose its rows.
.TP
.B migrate
Create or upgrade the database schema.
.TP
.B check\-config \fR[\fB\-\-reload\fR]
Validate the configuration and print it, passwords hidden. With \fB\-\-reload\fR (what the unit's ExecReload
runs before it signals the service, so that \fBsystemctl reload\fR fails and the service keeps its running
configuration): the database must answer (else exit 69) and be migrated, or be migrated by the service (else
exit 78); a watch root that does not exist now is only a warning.
.SH CONFIGURATION
The INI file named by \fB\-\-config\fR, else \fB$SENDIT_WATCHER_CONFIG\fR, else /etc/sendit\-watcher/watcher.conf; then
every \fB*.conf\fR file of the \fBconf.d\fR directory beside it, in name order. An option set in a later file
replaces the earlier value; a \fB[watch:NAME]\fR section in a conf.d file adds a root (or changes that root's
options). Every problem names the file it is in. The Debian package writes watcher.conf once, at the first
installation, and never changes it on upgrade: put site settings there or in conf.d.
Every option, by section:
"""

TAIL = r""".SH ENVIRONMENT
.TP
.B SENDIT_WATCHER_CONFIG
the configuration file, when \fB\-\-config\fR is not given
.TP
.B SENDIT_WATCHER_USER
the user a command typed by root switches to (default \fBsendit\-watcher\fR; empty: stay root)
.TP
.B CREDENTIALS_DIRECTORY
set by systemd for \fBLoadCredential=\fR; a credential named \fBpgpass\fR there (libpq's pgpass format) is read
by sendit\-watcher and its password handed to libpq when the \fBdsn\fR, \fBPGPASSWORD\fR and \fBpassfile\fR give
none (libpq itself refuses the group\-readable file systemd 257 mounts)
.TP
.BR PGHOST ", " PGPORT ", " PGDATABASE ", " PGUSER ", " PGPASSFILE ", " PGSERVICE ", ..."
libpq's own variables, used for whatever the \fBdsn\fR leaves out
.TP
.BR NOTIFY_SOCKET ", " WATCHDOG_USEC ", " JOURNAL_STREAM
set by systemd: sd_notify (READY, STATUS, WATCHDOG, EXTEND_TIMEOUT_USEC, STOPPING, RELOADING) and journald
logging
.SH FILES
.TP
/etc/sendit\-watcher/watcher.conf
the configuration
.TP
/etc/sendit\-watcher/conf.d/*.conf
read after it, in name order
.TP
/usr/share/sendit\-watcher/watcher.conf
the file the package installs as /etc/sendit\-watcher/watcher.conf at its first installation
.TP
/var/spool/sendit\-watcher/incoming
the default watch root (members of group sendit\-watcher may write; the service only reads)
.TP
/usr/lib/systemd/system/sendit\-watcher.service
the unit; add drop\-ins (\fBRequiresMountsFor=\fR, \fBProtectHome=\fR, \fBLoadCredential=\fR) in
/etc/systemd/system/sendit\-watcher.service.d/
.TP
/usr/lib/systemd/system/sendit\-watcher\-metrics.timer
every minute, \fBmetrics \-\-textfile\fR into node\-exporter's textfile directory; not enabled by the package
.SH JOURNAL FIELDS
Under systemd every line goes to the journal with \fBSYSLOG_IDENTIFIER=sendit\-watcher\fR; a batch line also
carries \fBSENDIT_BATCH_ID\fR, \fBSENDIT_FOLDER\fR, \fBSENDIT_FILES\fR, \fBSENDIT_INSTANCES\fR,
\fBSENDIT_REJECTED\fR, \fBSENDIT_SECONDS\fR and \fBSENDIT_STATUS\fR. \fBjournalctl \-x\fR explains these
\fBMESSAGE_ID\fRs from the package's catalog:
.TP
.B 5e4d1800a1b24c0e9c3f6b2d8e7a0001
a batch failed (its folder is kept; \fBsendit\-watcher retry\fR)
.TP
.B 5e4d1800a1b24c0e9c3f6b2d8e7a0002
the database is unavailable (nothing is lost; retried)
.TP
.B 5e4d1800a1b24c0e9c3f6b2d8e7a0003
a watch root is lost or missing (watched again once it is back)
.PP
Patient names, IDs, birth dates and any other value read from a file are never logged; database errors are
logged by SQLSTATE and the names of the constraint, table or column.
.SH SEE ALSO
.BR systemctl (1),
.BR journalctl (1),
.BR psql (1)
"""


def options_section() -> list[str]:
    """The OPTIONS section: every option before the command, from the parser that --help prints."""
    lines = [".SH OPTIONS"]
    for action in build_parser()._actions:  # argparse has no public list of its options
        if not action.option_strings or action.dest in ("help", "command"):
            continue
        value = f" \\fI{escape(action.metavar or action.dest.upper())}\\fR" if action.nargs != 0 else ""
        choices = f" (one of {', '.join(action.choices)})" if action.choices else ""
        text = (action.help or "").replace("%(prog)s", "sendit-watcher")
        lines += [".TP", f".B {escape(', '.join(action.option_strings))}{value}", escape(text + choices) + "."]
    return lines


def render() -> str:
    head, commands = HEAD.format(version=__version__, date=DATE).split(".SH COMMANDS\n", 1)
    lines = [head.rstrip("\n"), *options_section(), ".SH COMMANDS", commands]
    for section, options in SCHEMA.items():
        lines.append(f".SS [{escape(section)}]")
        for option in options:
            lines += [".TP", f".B {escape(option.key)}", f"{escape(option.help)}. Default: {escape(_default(option))}."]
    lines.append(".SH EXIT STATUS")
    for code, meaning in EXIT_CODES.items():
        lines += [".TP", f".B {code}", escape(meaning)]
    lines.append(TAIL)
    return "\n".join(lines)


def _default(option: Option) -> str:
    return "(required)" if option.default is None else (option.default or "(empty)")


if __name__ == "__main__":
    TARGET.write_text(render())
