#!/bin/bash
# Upgrade from 1.0.0-1 as an operator meets it: installed, configured (the conffile changed), folders queued
# and one imported; then `apt-get install -o Dpkg::Options::=--force-confold ./new.deb`, non-interactively.
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
# upgraded service runs on the operator's conffile again.
sed 's/^\[watcher\]$/[watcher]\nrole = watcher/' $conf > /etc/sendit-watcher/queue-only.conf
mkdir -p /etc/systemd/system/sendit-watcher.service.d
printf '[Service]\nEnvironment=SENDIT_WATCHER_CONFIG=/etc/sendit-watcher/queue-only.conf\n' \
  > /etc/systemd/system/sendit-watcher.service.d/queue-only.conf
systemctl daemon-reload
check "1.0.0 restarted as a watcher only" systemctl restart sendit-watcher
drop /data/incoming B; drop /data/incoming C; drop /data/incoming D
check "B, C and D queued, not imported" wait_for 30 bash -c '. /e2e-in/env; '"$(declare -f q status_is)"'; status_is B queued && status_is C queued && status_is D queued'
sleep 3
check "still queued 3 s later (nothing imports them)" bash -c '. /e2e-in/env; '"$(declare -f q status_is)"'; status_is B queued && status_is C queued && status_is D queued'
rm -r /etc/systemd/system/sendit-watcher.service.d; systemctl daemon-reload
pid=$(main_pid)
old_started=$(systemctl show -p ExecMainStartTimestampMonotonic --value sendit-watcher)

check "apt-get install ./sendit-watcher_${VERSION}_all.deb --force-confold, non-interactive" quietly \
  apt-get install -y -q -o Dpkg::Options::=--force-confold "/e2e-in/build/sendit-watcher_${VERSION}_all.deb" </dev/null
check "installed version is $VERSION" [ "$(dpkg-query -W -f='${Version}' sendit-watcher)" = "$VERSION" ]
check "the changed conffile is kept" [ "$(md5sum < $conf)" = "$conf_sum" ]
check "the new default conffile is beside it as watcher.conf.dpkg-dist" test -f $conf.dpkg-dist
check "the service was restarted on upgrade (new main process)" bash -c \
  "[ \"\$(systemctl show -p MainPID --value sendit-watcher)\" != '$pid' ] && [ \"\$(systemctl show -p ExecMainStartTimestampMonotonic --value sendit-watcher)\" != '$old_started' ] && systemctl is-active -q sendit-watcher"
check "the upgraded unit is in effect (KillMode=mixed)" [ "$(systemctl show -p KillMode --value sendit-watcher)" = mixed ]
shipped=$(ls /usr/lib/python3/dist-packages/sendit_watcher/migrations/ | grep -c '^[0-9].*\.sql$')
check "migrations: all $shipped shipped by $VERSION applied" wait_for 30 bash -c \
  ". /e2e-in/env; $(declare -f q); [ \"\$(q 'select count(*) from sendit.schema_migration')\" = $shipped ]"
check "nothing queued was lost: B, C and D imported after the upgrade" wait_for 60 bash -c \
  ". /e2e-in/env; $(declare -f q batch_is); batch_is B done:$FILES && batch_is C done:$FILES && batch_is D done:$FILES"
check "A not imported twice" [ "$(q "select count(*) from sendit.instance i join sendit.batch b on b.id = i.batch where b.path = 'A'")" = "$FILES" ]
check "each folder one batch row" [ "$(q "select count(*) from sendit.batch")" = 4 ]
drop /data/incoming E
check "$VERSION imports a new folder" wait_for 30 batch_is E done:$FILES
finish
