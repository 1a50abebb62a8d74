# Helpers of the scenarios that run inside the booted container (sourced; not a scenario itself).
# Each scenario writes its log to /e2e-out/log and its failure count to /e2e-out/failures.
exec > >(tee /e2e-out/log) 2>&1
. /e2e-env
export DEBIAN_FRONTEND=noninteractive
failures=0
ok() { echo "ok - $*"; }
fail() {
  echo "FAIL - $*"; failures=$((failures + 1))
  if [ $failures = 1 ]; then journalctl -u sendit-watcher -n 25 -o cat --no-pager | sed 's/^/   journal: /'; fi
}
check() { local what=$1; shift; if "$@"; then ok "$what"; else fail "$what"; fi; }
quietly() { "$@" >/tmp/quietly.log 2>&1 || { tail -n 30 /tmp/quietly.log; return 1; }; }
q() { python3 -c 'import sys, psycopg; print(psycopg.connect(sys.argv[1]).execute(sys.argv[2]).fetchone()[0])' "$DSN" "$1" 2>/dev/null; }
wait_for() { # wait_for SECONDS COMMAND...: true once COMMAND succeeds
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do [ $SECONDS -ge $deadline ] && return 1; sleep 0.5; done
}
batch_is() { [ "$(q "select status || ':' || instances from sendit.batch where path = '$1'")" = "$2" ]; }
status_is() { [ "$(q "select status from sendit.batch where path = '$1'")" = "$2" ]; }
importing() { # a worker holds the batch's advisory lock (what `sendit-watcher status` shows as importing): the
  # two-key form, class 1582104577 (locks.BATCH_CLASS) and up, see sendit_watcher/locks.py
  [ "$(q "select count(*) from sendit.batch b join pg_locks l on l.locktype = 'advisory' and l.granted
          and l.objsubid = 2 and l.database = (select oid from pg_database where datname = current_database())
          and l.classid::bigint >= 1582104577
          and ((l.classid::bigint - 1582104577) << 32 | l.objid::bigint) = b.id where b.path = '$1'")" = 1 ]
}
drop() { cp -r "/e2e-in/studies/$2" "$1/$2.tmp" && mv "$1/$2.tmp" "$1/$2"; }
main_pid() { systemctl show -p MainPID --value sendit-watcher; }
restarts() { systemctl show -p NRestarts --value sendit-watcher; }
catalog_entries() { journalctl --list-catalog 5e4d1800a1b24c0e9c3f6b2d8e7a0001 5e4d1800a1b24c0e9c3f6b2d8e7a0002 \
  5e4d1800a1b24c0e9c3f6b2d8e7a0003 2>/dev/null | grep -c ' sendit-watcher: '; }
finish() {
  echo "== $failures failure(s)"
  echo "$failures" > /e2e-out/failures
  [ "$failures" = 0 ]
}
echo "== $(. /etc/os-release; echo "$PRETTY_NAME"), $(python3 --version): $(basename "$0")"
