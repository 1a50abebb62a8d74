"""Prometheus text-format metrics, read from the database (the one source of truth for every host)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sendit_watcher.batches import BatchStatus
from sendit_watcher.db import Connection
from sendit_watcher.roots import records
from sendit_watcher.status import by_status_and_host, last_success

__all__ = ["render", "render_down", "write_textfile"]

_UP = ("# HELP sendit_watcher_up 1 when this reading of the metrics reached the database, 0 when it could not "
       "(then no other metric is written)", "# TYPE sendit_watcher_up gauge")

def _labels(**labels: str) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{key}="{escape(value)}"' for key, value in labels.items()) + "}"


def render(conn: Connection) -> str:
    """The metrics as Prometheus text exposition format."""
    series: dict[str, list[str]] = {
        "sendit_batches": [], "sendit_files": [], "sendit_instances": [], "sendit_rejected_files": [],
        "sendit_import_seconds": [], "sendit_import_failures": [],
    }
    queued = 0
    for row in by_status_and_host(conn):
        labels = _labels(status=row.status, host=row.host)
        series["sendit_batches"].append(f"sendit_batches{labels} {row.batches}")
        series["sendit_files"].append(f"sendit_files{labels} {row.files}")
        series["sendit_instances"].append(f"sendit_instances{labels} {row.instances}")
        series["sendit_rejected_files"].append(f"sendit_rejected_files{labels} {row.rejected}")
        series["sendit_import_seconds"].append(f"sendit_import_seconds{labels} {row.seconds:.3f}")
        series["sendit_import_failures"].append(f"sendit_import_failures{labels} {row.attempts}")
        queued += row.batches if row.status == BatchStatus.QUEUED else 0
    lines = []
    for name, samples in series.items():
        lines += [f"# HELP {name} {_HELP[name]}", f"# TYPE {name} gauge", *samples]
    lines += ["# HELP sendit_queue_depth batches waiting for a worker", "# TYPE sendit_queue_depth gauge",
              f"sendit_queue_depth {queued}"]
    lines += ["# HELP sendit_root_lost 1 while a watch root is not itself on a host (unmounted, another file system,"
              " missing): its rows are kept, its batches wait", "# TYPE sendit_root_lost gauge"]
    lines += [f"sendit_root_lost{_labels(root=r.root, host=r.host)} {0 if r.lost_reason is None else 1}"
              for r in records(conn)]
    success = last_success(conn)
    stamp = 0 if success is None else round(success.timestamp(), 3)
    lines += ["# HELP sendit_watcher_last_success_timestamp_seconds when the last import that succeeded (done or empty)"
              " committed, in seconds since the epoch (0: none yet)",
              "# TYPE sendit_watcher_last_success_timestamp_seconds gauge",
              f"sendit_watcher_last_success_timestamp_seconds {stamp}"]
    return "\n".join([*_UP, "sendit_watcher_up 1", *lines]) + "\n"


def render_down() -> str:
    """What a textfile says when the database could not be read: up 0 and nothing else, so that no count of an
    earlier reading passes for a current one."""
    return "\n".join([*_UP, "sendit_watcher_up 0"]) + "\n"


_HELP = {
    "sendit_batches": "folders by their batch status and the host that last handled them",
    "sendit_files": "files in those folders at their last import",
    "sendit_instances": "instance rows of those folders",
    "sendit_rejected_files": "rejected_file rows of those folders",
    "sendit_import_seconds": "seconds the last import of those folders took, summed",
    "sendit_import_failures": "failed attempts since the last success, summed",
}


def write_textfile(path: Path, text: str) -> None:
    """Write for node_exporter's textfile collector: atomically, via a temporary file in the same directory."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as out:
        out.write(text)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)
