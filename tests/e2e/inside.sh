#!/bin/bash
# Runs inside the booted Debian container as a oneshot unit; its exit status is the container's.
# Reads /e2e-in (the .deb, env, sample studies); writes its log to /e2e-out/log.
set -u
exec > >(tee /e2e-out/log) 2>&1
. /e2e-in/env
failures=0
ok() { echo "ok - $*"; }
fail() { echo "FAIL - $*"; failures=$((failures + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else fail "$what"; fi; }
quietly() { "$@" >/tmp/quietly.log 2>&1 || { cat /tmp/quietly.log; return 1; }; }
q() { python3 -c 'import sys, psycopg; print(psycopg.connect(sys.argv[1]).execute(sys.argv[2]).fetchone()[0])' "$DSN" "$1" 2>/dev/null; }
wait_for() { # wait_for SECONDS COMMAND...: true once COMMAND succeeds
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do [ $SECONDS -ge $deadline ] && return 1; sleep 0.5; done
}
batch_is() { [ "$(q "select status || ':' || instances from sendit.batch where path = '$1'")" = "$2" ]; }
drop() { cp -r "/e2e-in/studies/$2" "$1/$2.tmp" && mv "$1/$2.tmp" "$1/$2"; }
main_pid() { systemctl show -p MainPID --value sendit-watcher; }
restarts() { systemctl show -p NRestarts --value sendit-watcher; }

echo "== $(. /etc/os-release; echo "$PRETTY_NAME"), $(python3 --version)"
check "apt install ./sendit-watcher_*.deb" quietly apt-get install -y -q /e2e-in/sendit-watcher_*_all.deb
check "enabled on install" [ "$(systemctl is-enabled sendit-watcher)" = enabled ]
check "system user exists" id sendit-watcher
check "active without a database (READY degraded)" wait_for 30 systemctl is-active -q sendit-watcher
status=$(systemctl show -p StatusText --value sendit-watcher)
echo "   StatusText: $status"
check "status says it waits for the database" grep -q "^waiting for database" <<<"$status"

mkdir -p /data/incoming /data/second
cat > /etc/sendit-watcher/watcher.conf <<CONF
[database]
dsn = $DSN
[watcher]
settle_seconds = 2
[watch:incoming]
path = /data/incoming
CONF
check "systemctl restart returns after READY" systemctl restart sendit-watcher
status=$(systemctl show -p StatusText --value sendit-watcher)
echo "   StatusText: $status"
check "status is meaningful" grep -q "^watching /data/incoming; .* folders imported" <<<"$status"

drop /data/incoming A
check "rename A.tmp -> A: rows in PostgreSQL" wait_for 30 batch_is A done:$FILES
check "journal has SENDIT_* fields" bash -c "journalctl -u sendit-watcher -o json | grep -q '\"SENDIT_BATCH_ID\"' && journalctl -u sendit-watcher -o json | grep -q '\"SENDIT_INSTANCES\" *: *\"$FILES\"'"

cat >> /etc/sendit-watcher/watcher.conf <<CONF
[watch:second]
path = /data/second
CONF
pid=$(main_pid)
check "systemctl reload" systemctl reload sendit-watcher
drop /data/second B
check "reload picked up a new watch root" wait_for 30 batch_is B done:$FILES
check "reload kept the main process" [ "$(main_pid)" = "$pid" ]

check "systemctl stop" systemctl stop sendit-watcher
drop /data/incoming C
check "systemctl start" systemctl start sendit-watcher
check "stopped, dropped, started: caught up" wait_for 30 batch_is C done:$FILES

before=$(restarts)
drop /data/incoming D
kill -9 "$(main_pid)"
check "kill -9: systemd restarts it" wait_for 40 bash -c "[ \$(systemctl show -p NRestarts --value sendit-watcher) -gt $before ] && systemctl is-active -q sendit-watcher"
check "kill -9: nothing lost" wait_for 30 batch_is D done:$FILES

mkdir -p /etc/systemd/system/sendit-watcher.service.d
printf '[Service]\nWatchdogSec=6\n' > /etc/systemd/system/sendit-watcher.service.d/watchdog.conf
systemctl daemon-reload && systemctl restart sendit-watcher
before=$(restarts); pid=$(main_pid)
kill -STOP "$pid"
check "SIGSTOP: the watchdog kills and restarts it" wait_for 60 bash -c "[ \$(systemctl show -p NRestarts --value sendit-watcher) -gt $before ] && systemctl is-active -q sendit-watcher"
journalctl -u sendit-watcher | grep -i watchdog | tail -n 2
drop /data/incoming E
check "after the watchdog restart: imported" wait_for 30 batch_is E done:$FILES
rm -r /etc/systemd/system/sendit-watcher.service.d; systemctl daemon-reload

exposure=$(systemd-analyze security sendit-watcher | sed -n 's/.*Overall exposure level for sendit-watcher.service: \([0-9.]*\).*/\1/p')
echo "   systemd-analyze security sendit-watcher: exposure $exposure"
check "exposure <= 1.5" python3 -c "import sys; sys.exit(not float('$exposure') <= 1.5)"
check "runs as its own unprivileged user" [ "$(ps -o user= -p "$(main_pid)")" = sendit-watcher ]
check "no PHI in the journal" bash -c "! journalctl -u sendit-watcher | grep -q -e '$PATIENT_NAME' -e '$PATIENT_ID' -e '$PATIENT_BIRTH_DATE'"

check "apt remove" quietly apt-get remove -y -q sendit-watcher
check "remove keeps the conffile" [ -f /etc/sendit-watcher/watcher.conf ]
check "apt purge" quietly apt-get purge -y -q sendit-watcher
check "purge removes the conffile" [ ! -e /etc/sendit-watcher/watcher.conf ]

echo "== $failures failure(s)"
echo "$failures" > /e2e-out/failures
[ "$failures" = 0 ]
