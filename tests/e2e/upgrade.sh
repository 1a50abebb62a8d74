#!/bin/bash
# Upgrade from 1.0.0-1 as an operator meets it: installed, configured (its conffile edited), folders queued and
# one imported; then a plain `apt-get install -y ./new.deb </dev/null`, as an unattended upgrade runs it: no
# --force-conf* option, no terminal. Then the move to the new default root, as debian/NEWS describes it.
set -u
. /e2e-in/lib.sh

conf=/etc/sendit-watcher/watcher.conf
check "apt install sendit-watcher 1.0.0-1" quietly apt-get install -y -q /e2e-in/v1/sendit-watcher_1.0.0-1_all.deb
mkdir -p /data/incoming
cat > $conf <<CONF
; changed by the operator (e2e upgrade test)
[database]
dsn = $DSN
[watcher]
settle_seconds = 2
[watch:incoming]
path = /data/incoming
CONF
conf_sum=$(md5sum < $conf)
check "1.0.0 restarted on the changed conffile" systemctl restart sendit-watcher
drop /data/incoming A
check "1.0.0 imports A" wait_for 30 batch_is A done:$FILES
echo "   1.0.0 applied $(q "select string_agg(version::text, ',' order by version) from sendit.schema_migration") migration(s)"

# Folders queued but not imported: 1.0.0 runs as a watcher only (role = watcher, from a second configuration
# given by a drop-in), so its batch rows wait in the queue. The drop-in goes before the upgrade, so the
# upgraded service runs on the operator's watcher.conf again.
sed 's/^\[watcher\]$/[watcher]\nrole = watcher/' $conf > /etc/sendit-watcher/queue-only.conf
mkdir -p /etc/systemd/system/sendit-watcher.service.d
printf '[Service]\nEnvironment=SENDIT_WATCHER_CONFIG=/etc/sendit-watcher/queue-only.conf\n' \
  > /etc/systemd/system/sendit-watcher.service.d/queue-only.conf
systemctl daemon-reload
check "1.0.0 restarted as a watcher only" systemctl restart sendit-watcher
drop /data/incoming B; drop /data/incoming C; drop /data/incoming D
check "B, C and D queued, not imported" wait_for 30 bash -c '. /e2e-env; '"$(declare -f q status_is)"'; status_is B queued && status_is C queued && status_is D queued'
sleep 3
check "still queued 3 s later (nothing imports them)" bash -c '. /e2e-env; '"$(declare -f q status_is)"'; status_is B queued && status_is C queued && status_is D queued'
rm -r /etc/systemd/system/sendit-watcher.service.d; systemctl daemon-reload
pid=$(main_pid)
old_started=$(systemctl show -p ExecMainStartTimestampMonotonic --value sendit-watcher)

catch_ups() { journalctl -u sendit-watcher -o cat --no-pager | grep -c '^catch-up scan:'; }
scans=$(catch_ups)
upgrade() {
  apt-get install -y -q "/e2e-in/build/sendit-watcher_${VERSION}_all.deb" </dev/null >/tmp/upgrade.log 2>&1
  local rc=$?; echo "   apt-get install exit status: $rc"; [ $rc = 0 ] || { tail -n 20 /tmp/upgrade.log; return 1; }
}
check "apt-get install ./sendit-watcher_${VERSION}_all.deb </dev/null, no --force-conf*: exit 0" upgrade
check "installed version is $VERSION, configured" [ "$(dpkg-query -W -f='${Version} ${Status}' sendit-watcher)" = "$VERSION install ok installed" ]
check "no conffile prompt" bash -c '! grep -qi "conffile\|configuration file" /tmp/upgrade.log'
check "the operator's watcher.conf is untouched, nothing beside it (.dpkg-dist, .dpkg-new, .dpkg-old)" bash -c \
  "[ \"\$(md5sum < $conf)\" = '$conf_sum' ] && ! compgen -G '$conf.*'"
check "the unit is at /usr/lib/systemd/system after the move from /lib (no file lost across the alias)" bash -c \
  'dpkg -L sendit-watcher | grep -qx /usr/lib/systemd/system/sendit-watcher.service && [ -f /usr/lib/systemd/system/sendit-watcher.service ] && ! dpkg -L sendit-watcher | grep -q "^/lib/"'
check "no StateDirectory= in effect" [ -z "$(systemctl show -p StateDirectory --value sendit-watcher)" ]
check "the service was restarted on upgrade (new main process)" bash -c \
  "[ \"\$(systemctl show -p MainPID --value sendit-watcher)\" != '$pid' ] && [ \"\$(systemctl show -p ExecMainStartTimestampMonotonic --value sendit-watcher)\" != '$old_started' ] && systemctl is-active -q sendit-watcher"
check "the upgraded unit is in effect (KillMode=mixed)" [ "$(systemctl show -p KillMode --value sendit-watcher)" = mixed ]
shipped=$(ls /usr/lib/python3/dist-packages/sendit_watcher/migrations/ | grep -c '^[0-9].*\.sql$')
check "migrations: all $shipped shipped by $VERSION applied" wait_for 30 bash -c \
  ". /e2e-env; $(declare -f q); [ \"\$(q 'select count(*) from sendit.schema_migration')\" = $shipped ]"
check "nothing queued was lost: B, C and D imported after the upgrade" wait_for 60 bash -c \
  ". /e2e-env; $(declare -f q batch_is); batch_is B done:$FILES && batch_is C done:$FILES && batch_is D done:$FILES"
check "A not imported twice" [ "$(q "select count(*) from sendit.instance i join sendit.batch b on b.id = i.batch where b.path = 'A'")" = "$FILES" ]
# The fingerprint of 1.0.0 lacks the files' ctime: the upgraded service must still know A as unchanged.
last_scan() { # last_scan AFTER: the first catch-up line after the AFTER-th one
  wait_for 30 bash -c "[ \$(journalctl -u sendit-watcher -o cat --no-pager | grep -c '^catch-up scan:') -gt $1 ]" || return 1
  journalctl -u sendit-watcher -o cat --no-pager | grep '^catch-up scan:' | sed -n "$(($1 + 1))p"
}
scan=$(last_scan "$scans"); echo "   after the upgrade: $scan"
check "the upgraded service's catch-up has 0 to import (A, imported by 1.0.0, is not read again)" grep -q '; 0 to import' <<<"$scan"
check "A imported once (imports = 1)" [ "$(q "select imports from sendit.batch where path = 'A'")" = 1 ]
check "each folder one batch row" [ "$(q "select count(*) from sendit.batch")" = 4 ]

# debian/NEWS: moving the root to the new default, /var/spool/sendit-watcher/incoming, reads nothing again.
move_root() {
  local n; systemctl stop sendit-watcher || return 1
  [ "$(stat -c '%a %U:%G' /var/spool/sendit-watcher/incoming)" = "2770 root:sendit-watcher" ] || { echo "   no default root"; return 1; }
  mv /data/incoming/* /var/spool/sendit-watcher/incoming/ || return 1
  sed -i 's|^path = /data/incoming$|path = /var/spool/sendit-watcher/incoming|' $conf
  sendit-watcher adopt-root incoming | sed 's/^/   /' || return 1
  n=$(catch_ups); systemctl start sendit-watcher || return 1
  scan=$(last_scan "$n") || return 1; echo "   after the move: $scan"
  grep -q '; 0 to import' <<<"$scan"
}
check "the root moved to /var/spool/sendit-watcher/incoming as debian/NEWS says: catch-up has 0 to import" move_root
check "every folder still imported once (4 batches, 4 imports)" [ "$(q "select count(*) || ':' || sum(imports) from sendit.batch")" = 4:4 ]
drop /var/spool/sendit-watcher/incoming E
check "$VERSION imports a new folder into the moved root" wait_for 30 batch_is E done:$FILES
finish
