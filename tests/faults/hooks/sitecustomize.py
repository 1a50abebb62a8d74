"""Loaded by a service under test whose PYTHONPATH starts with this directory: widens one race window so that a
test meets it every time (what load does once in a while). SENDIT_TEST_RACE_FOLDER names the folder:

- the catch-up scan lists a root only once that folder is there (it was renamed in after the scan began);
- the main loop's first enqueue of that folder waits a second before it writes: the scan reads the batch rows
  before that folder has one.
"""

from __future__ import annotations

import os
import time
from typing import Any

from sendit_watcher import batches, catchup

FOLDER = os.environ.get("SENDIT_TEST_RACE_FOLDER", "")
_list_root = catchup._list_root
_enqueue = batches.enqueue
_delayed: list[str] = []


def _list_once_there(watch: Any) -> list[str] | None:
    deadline = time.monotonic() + 30
    while not (watch.path / FOLDER).is_dir() and time.monotonic() < deadline:
        time.sleep(0.01)
    return _list_root(watch)


def _enqueue_late(conn: Any, root: str, path: str, *args: Any, **kwargs: Any) -> int | None:
    if path == FOLDER and not _delayed:
        _delayed.append(path)
        time.sleep(1.0)
    return _enqueue(conn, root, path, *args, **kwargs)


if FOLDER:
    catchup._list_root = _list_once_there
    batches.enqueue = _enqueue_late
