"""Allow ``python -m sendit_watcher``."""

from sendit_watcher.cli import main

raise SystemExit(main())
