#!/bin/bash
# Runs inside the booted Debian container as a oneshot unit; its exit status is the container's.
# Reads /e2e-in (the clean build's .deb, sample studies) and /e2e-env; writes its log to /e2e-out/log.
set -u
. /e2e-in/lib.sh

check "apt install ./sendit-watcher_${VERSION}_all.deb (the clean build)" quietly apt-get install -y -q "/e2e-in/build/sendit-watcher_${VERSION}_all.deb"
check "enabled on install" [ "$(systemctl is-enabled sendit-watcher)" = enabled ]
check "system user exists" id sendit-watcher
check "the unit under /usr/lib/systemd/system, nothing of the package under /lib" bash -c \
  'dpkg -L sendit-watcher | grep -qx /usr/lib/systemd/system/sendit-watcher.service && ! dpkg -L sendit-watcher | grep -q "^/lib/"'
check "no StateDirectory= (the data is not the service's state)" [ -z "$(systemctl show -p StateDirectory --value sendit-watcher)" ]
check "watcher.conf written from the template at the first installation, not a dpkg conffile; conf.d/ beside it" \
  bash -c 'cmp -s /etc/sendit-watcher/watcher.conf /usr/share/sendit-watcher/watcher.conf && [ -d /etc/sendit-watcher/conf.d ] && [ -z "$(dpkg-query -W -f="\${Conffiles}" sendit-watcher)" ]'
check "the default root /var/spool/sendit-watcher/incoming: 2770 root:sendit-watcher, named by watcher.conf" bash -c \
  '[ "$(stat -c "%a %U:%G" /var/spool/sendit-watcher/incoming)" = "2770 root:sendit-watcher" ] && grep -qx "path = /var/spool/sendit-watcher/incoming" /etc/sendit-watcher/watcher.conf'
check "KillMode=mixed" [ "$(systemctl show -p KillMode --value sendit-watcher)" = mixed ]
check "README.md and README.Debian in /usr/share/doc/sendit-watcher" \
  bash -c 'compgen -G "/usr/share/doc/sendit-watcher/README.md*" && compgen -G "/usr/share/doc/sendit-watcher/README.Debian*"' 
check "journald catalog updated on install (systemd's trigger): 3 messages" [ "$(catalog_entries)" = 3 ]
journalctl --list-catalog 5e4d1800a1b24c0e9c3f6b2d8e7a0002 | sed 's/^/   /'
check "active without a database (READY degraded)" wait_for 30 systemctl is-active -q sendit-watcher
status=$(systemctl show -p StatusText --value sendit-watcher)
echo "   StatusText: $status"
check "status says it waits for the database" grep -q "^waiting for database" <<<"$status"
# The "database unavailable" line carries the catalog's MESSAGE_ID, and journalctl -x explains it from the catalog.
check "journal: 'database unavailable' with MESSAGE_ID=5e4d1800a1b24c0e9c3f6b2d8e7a0002" wait_for 10 bash -c \
  "journalctl -u sendit-watcher MESSAGE_ID=5e4d1800a1b24c0e9c3f6b2d8e7a0002 -o cat --no-pager | grep -q 'database unavailable'"
journalctl -u sendit-watcher MESSAGE_ID=5e4d1800a1b24c0e9c3f6b2d8e7a0002 -o cat --no-pager | head -n 1 | sed 's/^/   /'
explained() {
  local text; text=$(journalctl -x -u sendit-watcher --no-pager)
  grep -q 'Subject: the database is unavailable' <<<"$text" &&
    grep -q 'sendit-watcher cannot reach PostgreSQL (the \[database\] dsn of' <<<"$text" &&
    grep -q 'catch-up scan runs once the database answers. Nothing is lost.' <<<"$text"
}
check "journalctl -x -u sendit-watcher: the catalog's explanation of 'the database is unavailable'" explained

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

# A second root, the package's default one, from a conf.d file (read after watcher.conf).
spool=/var/spool/sendit-watcher/incoming
printf '[watch:second]\npath = %s\n' "$spool" > /etc/sendit-watcher/conf.d/50-second.conf
pid=$(main_pid)
check "systemctl reload" systemctl reload sendit-watcher
drop "$spool" B
check "reload picked up a new watch root from conf.d/50-second.conf (the default root)" wait_for 30 batch_is B done:$FILES
check "reload kept the main process" [ "$(main_pid)" = "$pid" ]

# The data is not the service's state: an operator's chgrp in the default root, tmpfiles as at
# boot and a restart change no file there (no chown by systemd: every ctime and owner as before), and the catch-up
# reads no folder again. The root is owned by root, not the service user: a StateDirectory= would chown it.
catch_ups() { journalctl -u sendit-watcher -o cat --no-pager | grep -c '^catch-up scan:'; }
no_reread() {
  chgrp adm "$spool/B" || return 1
  local before n; before=$(find /var/spool/sendit-watcher -printf '%p %C@ %u:%g %m\n' | sort); n=$(catch_ups)
  systemd-tmpfiles --create sendit-watcher.conf && systemctl restart sendit-watcher || return 1
  wait_for 30 bash -c "[ \$(journalctl -u sendit-watcher -o cat --no-pager | grep -c '^catch-up scan:') -gt $n ]" ||
    { echo "   no catch-up scan after the restart"; return 1; }
  journalctl -u sendit-watcher -o cat --no-pager | grep '^catch-up scan:' | tail -n 1 | sed 's/^/   /'
  journalctl -u sendit-watcher -o cat --no-pager | grep '^catch-up scan:' | tail -n 1 | grep -q '; 0 to import' || return 1
  [ "$(find /var/spool/sendit-watcher -printf '%p %C@ %u:%g %m\n' | sort)" = "$before" ] ||
    { echo "   a file under /var/spool/sendit-watcher changed:"; diff <(echo "$before") <(find /var/spool/sendit-watcher -printf '%p %C@ %u:%g %m\n' | sort) | head -n 5; return 1; }
  [ "$(q "select imports from sendit.batch where path = 'B'")" = 1 ]
}
check "chgrp in the default root, tmpfiles, restart: no ctime or owner changed, catch-up has 0 to import, B imported once" no_reread

check "systemctl stop" systemctl stop sendit-watcher
drop /data/incoming C
check "systemctl start" systemctl start sendit-watcher
check "stopped, dropped, started: caught up" wait_for 30 batch_is C done:$FILES

# A folder of 500+ files is parsed by a pool of processes; KillMode=mixed sends SIGTERM to the main process only,
# which stops its workers: the folder in hand commits within the drain instead of being rolled back.
big_stop() {
  cp -r /e2e-in/studies/BIG /data/incoming/BIG.tmp && mv /data/incoming/BIG.tmp /data/incoming/BIG || return 1
  wait_for 60 importing BIG || { echo "   BIG was never seen importing"; return 1; }
  local committed; committed=$(q "select status from sendit.batch where path = 'BIG'")
  echo "   stop arrives while a worker imports BIG ($BIG_FILES files); its committed status: $committed"
  [ "$committed" = queued ] || return 1
  stop_since=$(date '+%Y-%m-%d %H:%M:%S')
  unit_procs=$(ps -u sendit-watcher -o pid=,args= | sed 's/^ *//')   # the unit's processes, all of them its user's
  stop_db_now=$(q "select now()::text") || return 1   # the database's clock, which stamps finished_at
  local t0; t0=$(date +%s.%N)
  systemctl stop sendit-watcher || return 1
  stop_seconds=$(python3 -c "print(round($(date +%s.%N) - $t0, 1))")
  echo "   systemctl stop returned after $stop_seconds s"
}
stop_seconds=999 stop_since=now stop_db_now=infinity
check "systemctl stop while a $BIG_FILES-file folder is importing" big_stop
check "the $BIG_FILES-file folder committed (done, $BIG_FILES instances)" batch_is BIG done:$BIG_FILES
# Committed during the drain, not before the stop: its finished_at (clock_timestamp() at the commit) is later than
# the database's now() read just before `systemctl stop`.
committed_in_drain() {
  local after; after=$(q "select round(extract(epoch from finished_at - '$stop_db_now'::timestamptz)::numeric, 2)
                          from sendit.batch where path = 'BIG'")
  echo "   BIG's finished_at: ${after:-?} s after the database's now() just before systemctl stop ($stop_db_now)"
  python3 -c "import sys; sys.exit(not float(sys.argv[1]) > 0)" "${after:-nan}"
}
check "the $BIG_FILES-file folder committed during the drain (finished_at after the stop was issued)" committed_in_drain
check "stop took less than drain_seconds (30 s): $stop_seconds s" python3 -c "import sys; sys.exit(not $stop_seconds < 30)"
# When the main process has exited, KillMode=mixed SIGKILLs what is left of the unit. Only multiprocessing's
# resource tracker may be left (it exits by itself once the main process is gone); a worker or a parse process
# left behind would be killed in the middle of its work.
killed_ok() {
  local pid line bad=0
  journalctl -u sendit-watcher --since "$stop_since" | grep -qi 'timed out' && { echo "   stop timed out"; bad=1; }
  for pid in $(journalctl -u sendit-watcher --since "$stop_since" -o cat | sed -n 's/.*Killing process \([0-9]*\) .*SIGKILL.*/\1/p'); do
    line=$(grep "^$pid " <<<"$unit_procs")
    echo "   SIGKILLed after the main process exited: ${line:-$pid (not in the unit before the stop)}"
    grep -q 'multiprocessing.resource_tracker' <<<"$line" || bad=1
  done
  return $bad
}
check "stop: nothing but multiprocessing's resource tracker left to SIGKILL" killed_ok
check "stop result: success" [ "$(systemctl show -p Result --value sendit-watcher)" = success ]
journalctl -u sendit-watcher --since "$stop_since" -o cat | tail -n 6 | sed 's/^/   /'
check "systemctl start after the stop" systemctl start sendit-watcher

before=$(restarts)
drop /data/incoming D
kill -9 "$(main_pid)"
check "kill -9: systemd restarts it" wait_for 90 bash -c "[ \$(systemctl show -p NRestarts --value sendit-watcher) -gt $before ] && systemctl is-active -q sendit-watcher"
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

# --- An outside attack: a root closed to the service, a group joined after the start, a drain that
# runs out of time. Each is a lost root or a clean stop, never exit 78, never a silent root, never a journal warning.
drop_as() { cp -r "/e2e-in/studies/$2" "$1/$3.tmp" && mv "$1/$3.tmp" "$1/$3"; }  # drop_as ROOT STUDY NAME
status_text() { systemctl show -p StatusText --value sendit-watcher; }
journal_since() { journalctl -u sendit-watcher --since "$1" -o cat --no-pager; }
mkdir -p /data/closed && chmod 0755 /data/closed
printf '[watch:closed]\npath = /data/closed\n' > /etc/sendit-watcher/conf.d/60-closed.conf
systemctl restart sendit-watcher
drop_as /data/closed A H
check "a root from conf.d/60-closed.conf imports H while it is readable" wait_for 30 status_is H done
since=$(date '+%Y-%m-%d %H:%M:%S')  # before the chmod: the running service may see it before the restart
chmod 0700 /data/closed   # root's own now, as an unmounted 0700 mount point is
check "a root closed to the service at start: systemctl restart succeeds (no exit 78)" systemctl restart sendit-watcher
check "... the service stays active" bash -c 'sleep 2; systemctl is-active -q sendit-watcher'
check "... STATUS says LOST ROOT closed (not readable by user sendit-watcher)" wait_for 15 bash -c \
  '[[ $(systemctl show -p StatusText --value sendit-watcher) == *"LOST ROOT closed (not readable by user sendit-watcher"* ]]'
echo "   StatusText: $(status_text)"
check "... the journal says it once, naming the root and the fix" wait_for 15 bash -c \
  "[ \$(journalctl -u sendit-watcher --since '$since' -o cat --no-pager | grep -c 'watch root /data/closed (\[watch:closed\]).* is lost: not readable by user sendit-watcher.*give user sendit-watcher.*read and search access') = 1 ]"
journal_since "$since" | grep 'is lost: not readable' | sed 's/^/   /'
check "... sendit-watcher status (as the service user) lists it lost" bash -c \
  'runuser -u sendit-watcher -- sendit-watcher status | grep -A3 "LOST ROOTS:" | grep -q "closed"'
drop_as /data/incoming B F
check "... the other roots are served (F imported)" wait_for 30 status_is F done
check "... none of its rows is removed (H still done)" status_is H done
chmod 0755 /data/closed
check "readable again: picked up without a restart (no LOST ROOT)" wait_for 20 bash -c \
  '[[ $(systemctl show -p StatusText --value sendit-watcher) != *"LOST ROOT"* ]]'
drop_as /data/closed C G
imported_once() { wait_for 30 status_is G done && status_is H done && [ "$(q "select imports from sendit.batch where path = 'H'")" = 1 ]; }
check "... G imported from it, H imported once and still done" imported_once

# A root readable only by group pacs; `adduser sendit-watcher pacs` and `systemctl reload`: the running service cannot
# take the group; the reload says that a restart is needed, naming the root. The restart takes it.
groupadd -f pacs && mkdir -p /data/pacs && chgrp pacs /data/pacs && chmod 0750 /data/pacs
printf '[watch:pacs]\npath = /data/pacs\n' > /etc/sendit-watcher/conf.d/70-pacs.conf
check "systemctl reload adding a root of group pacs" systemctl reload sendit-watcher
check "... reported lost: not readable" wait_for 15 bash -c \
  '[[ $(systemctl show -p StatusText --value sendit-watcher) == *"LOST ROOT pacs (not readable"* ]]'
{ adduser -q sendit-watcher pacs 2>/dev/null || usermod -a -G pacs sendit-watcher; }
since=$(date '+%Y-%m-%d %H:%M:%S')
check "adduser sendit-watcher pacs; systemctl reload" systemctl reload sendit-watcher
restart_said() {
  journal_since "$since" | grep -q 'reload: \[watch:pacs\] path /data/pacs is not readable by this process.*user sendit-watcher is in group(s) pacs now.*restart the service (systemctl restart sendit-watcher)'
}
check "... the reload says a restart is needed to read /data/pacs" wait_for 15 restart_said
journal_since "$since" | grep 'reload: \[watch:pacs\]' | sed 's/^/   /'
check "... systemctl restart: the root of group pacs is watched" bash -c 'systemctl restart sendit-watcher && sleep 6 &&
  [[ $(systemctl show -p StatusText --value sendit-watcher) != *"LOST ROOT"* ]]'
echo "   StatusText: $(status_text)"
drop_as /data/pacs D P
check "... P imported from it" wait_for 30 status_is P done

# A drain that runs out of time (drain_seconds = 1, a 3,000-file folder in hand): the worker is told to abandon it,
# exits and releases its semaphores; no "leaked semaphore" warning of multiprocessing's resource tracker.
printf '[watcher]\ndrain_seconds = 1\n' > /etc/sendit-watcher/conf.d/80-drain.conf
systemctl restart sendit-watcher
drain_out() {
  drop_as /data/incoming BIG BIG2 || return 1
  wait_for 60 importing BIG2 || { echo "   BIG2 was never seen importing"; return 1; }
  since=$(date '+%Y-%m-%d %H:%M:%S'); systemctl stop sendit-watcher || return 1
  journal_since "$since" | tail -n 5 | sed 's/^/   /'
  journal_since "$since" | grep -q 'did not finish within 1 s; stopped' || { echo "   the drain did not run out"; return 1; }
  ! journal_since "$since" | grep -e 'leaked semaphore' -e 'resource_tracker' -e Traceback -e '; killed'
}
check "a drain that runs out of time ends without a 'leaked semaphore' warning, nothing killed" drain_out
check "... its folder rolled back (BIG2 still queued)" status_is BIG2 queued
rm /etc/sendit-watcher/conf.d/60-closed.conf /etc/sendit-watcher/conf.d/70-pacs.conf /etc/sendit-watcher/conf.d/80-drain.conf
check "... started again" systemctl start sendit-watcher
check "... BIG2 imported" wait_for 120 status_is BIG2 done
# --- (fixes) end

exposure=$(systemd-analyze security sendit-watcher | sed -n 's/.*Overall exposure level for sendit-watcher.service: \([0-9.]*\).*/\1/p')
echo "   systemd-analyze security sendit-watcher: exposure $exposure"
check "exposure <= 1.5" python3 -c "import sys; sys.exit(not float('$exposure') <= 1.5)"
check "runs as its own unprivileged user" [ "$(ps -o user= -p "$(main_pid)")" = sendit-watcher ]
check "no PHI in the journal" bash -c "! journalctl -u sendit-watcher | grep -q -e '$PATIENT_NAME' -e '$PATIENT_ID' -e '$PATIENT_BIRTH_DATE'"

# Commands typed by root, the metrics timer, the remote-database password recipe.
check "sendit-watcher status typed by root: runs as sendit-watcher, shows the batches" bash -c \
  'sendit-watcher status >/tmp/status.txt 2>&1 && grep -q "incoming:A" /tmp/status.txt || { cat /tmp/status.txt; false; }'
check "sendit-watcher status --failed and rejected typed by root" bash -c \
  'sendit-watcher status --failed >/dev/null && sendit-watcher rejected >/dev/null'
textfile=/var/lib/prometheus/node-exporter/sendit-watcher.prom
check "sendit-watcher-metrics.timer shipped, not enabled" [ "$(systemctl is-enabled sendit-watcher-metrics.timer)" = disabled ]
mkdir -p /var/lib/prometheus/node-exporter   # what prometheus-node-exporter creates
check "systemctl start sendit-watcher-metrics.timer" systemctl start sendit-watcher-metrics.timer
check "the timer's service wrote $textfile: up 1, a last success, the batches" wait_for 30 bash -c \
  "grep -qx 'sendit_watcher_up 1' $textfile && grep -q '^sendit_watcher_last_success_timestamp_seconds [1-9]' $textfile &&
   grep -q '^sendit_batches{status=\"done\"' $textfile"
grep -E '^sendit_watcher_(up|last_success)' "$textfile" | sed 's/^/   /'
check "$textfile is root's, 0644" [ "$(stat -c '%U %a' "$textfile")" = "root 644" ]

# The README's recipe for a database that asks for a password: the DSN without it, the password in a pgpass
# file handed to the service as a systemd credential. The host's cluster trusts loopback, so a cluster of this
# container, on its Unix socket only (the host's network is shared), asks sendit_pw for it (SCRAM).
pgpass_recipe() {
  mkdir -p /etc/postgresql-common/createcluster.d
  printf "listen_addresses = ''\nport = 5432\n" > /etc/postgresql-common/createcluster.d/e2e-unix-socket-only.conf
  quietly bash -c 'apt-get update -q && apt-get install -y -q postgresql' || return 1
  rm /etc/postgresql-common/createcluster.d/e2e-unix-socket-only.conf
  local hba; hba=$(runuser -u postgres -- psql -XAtc 'show hba_file') || return 1
  sed -i '1i local all sendit_pw scram-sha-256' "$hba"
  (cd / && runuser -u postgres -- psql -Xq -c "create role sendit_pw login password 'pw:with\\colon'" \
     -c 'select pg_reload_conf()' && runuser -u postgres -- createdb --owner=sendit_pw sendit_pw) >/dev/null || return 1
  # As README.md says, with the DSN of this cluster (a socket in libpq's default directory: host localhost).
  mkdir -p /data/pw
  printf '[database]\ndsn = dbname=sendit_pw user=sendit_pw\n[watcher]\nsettle_seconds = 2\n[watch:pw]\npath = /data/pw\n' \
    > /etc/sendit-watcher/watcher.conf
  install -m 0600 /dev/null /etc/sendit-watcher/pgpass
  echo 'localhost:5432:sendit_pw:sendit_pw:pw\:with\\colon' > /etc/sendit-watcher/pgpass
  mkdir -p /etc/systemd/system/sendit-watcher.service.d
  printf '[Service]\nLoadCredential=pgpass:/etc/sendit-watcher/pgpass\n' \
    > /etc/systemd/system/sendit-watcher.service.d/credentials.conf
  systemctl daemon-reload && systemctl restart sendit-watcher || return 1
  echo "   the credential as the service sees it: $(systemd-run -q --wait --pipe -p User=sendit-watcher \
    -p LoadCredential=pgpass:/etc/sendit-watcher/pgpass sh -c 'stat -c "%a %U" "$CREDENTIALS_DIRECTORY/pgpass"')"
  drop /data/pw A
  local pw_batch='select status || chr(58) || instances from sendit.batch where path = chr(65)'
  wait_for 30 bash -c "[ \"\$(runuser -u postgres -- psql -XAtd sendit_pw -c '$pw_batch')\" = done:$FILES ]" ||
    { echo "   StatusText: $(systemctl show -p StatusText --value sendit-watcher)"; return 1; }
  # Root has no credential: README's way for it is libpq's own pgpass file, read as root.
  PGPASSFILE=/etc/sendit-watcher/pgpass sendit-watcher --as-root status 2>&1 | grep -q 'pw:A' ||
    { echo "   PGPASSFILE=/etc/sendit-watcher/pgpass sendit-watcher --as-root status failed"; return 1; }
  # And the metrics service's drop-in of README.md: the same credential, and root (the DSN names the user).
  mkdir -p /etc/systemd/system/sendit-watcher-metrics.service.d
  printf '[Service]\nLoadCredential=pgpass:/etc/sendit-watcher/pgpass\nEnvironment=SENDIT_WATCHER_USER=\n' \
    > /etc/systemd/system/sendit-watcher-metrics.service.d/credentials.conf
  rm -f "$textfile"
  systemctl daemon-reload && systemctl start sendit-watcher-metrics.service &&
    grep -qx 'sendit_watcher_up 1' "$textfile" && grep -q '^sendit_batches{status="done",' "$textfile" ||
    { echo "   the metrics service with the credential:"; cat "$textfile"; return 1; }
}
check "LoadCredential=pgpass (README's recipe) against a PostgreSQL that asks for the password: imported" pgpass_recipe

check "apt remove" quietly apt-get remove -y -q sendit-watcher
check "apt remove stopped the metrics timer" bash -c '! systemctl is-active -q sendit-watcher-metrics.timer'
check "remove keeps watcher.conf" [ -f /etc/sendit-watcher/watcher.conf ]
check "journald catalog updated on remove: no sendit-watcher message left" [ "$(catalog_entries)" = 0 ]
check "apt purge" quietly apt-get purge -y -q sendit-watcher
check "apt purge: no 'not empty' warning from dpkg" bash -c '! grep -i "not empty" /tmp/quietly.log'
check "purge removes watcher.conf, and conf.d/ of which it removes no operator's file" bash -c \
  '[ ! -e /etc/sendit-watcher/watcher.conf ] && [ -f /etc/sendit-watcher/conf.d/50-second.conf ]'
check "purge leaves the data in the default root" [ -d "$spool/B" ]

finish
