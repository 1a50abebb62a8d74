#!/bin/bash
# debian/tests through autopkgtest, in this booted container with autopkgtest-virt-null. virt-null cannot know what
# it runs in (trixie's claims no isolation at all, bookworm's claims isolation-machine), so the two restrictions
# this testbed does satisfy are declared: isolation-container (this is a booted systemd-nspawn container) and
# breaks-testbed (it is a throwaway --volatile=overlay boot).
set -u
. /e2e-in/lib.sh

check "apt-get update" quietly apt-get update
# The container shares the host's network, where the host's PostgreSQL listens on 127.0.0.1:5432. The testbed's
# own cluster must then listen on its Unix socket only, on port 5432 as the shipped `dsn = dbname=sendit`
# expects: pg_createcluster takes postgresql.conf defaults from createcluster.d. That is this testbed's quirk, not
# the package's, so PostgreSQL is installed here (before autopkgtest, which finds it installed) and the
# drop-in removed again; pg_virtualenv (test command-line) then picks a free port as it would anywhere.
mkdir -p /etc/postgresql-common/createcluster.d
printf "listen_addresses = ''\nport = 5432\n" > /etc/postgresql-common/createcluster.d/e2e-unix-socket-only.conf
check "testbed: apt-get install postgresql autopkgtest" quietly apt-get install -y -q postgresql autopkgtest
rm /etc/postgresql-common/createcluster.d/e2e-unix-socket-only.conf
check "testbed: the cluster listens on /var/run/postgresql/.s.PGSQL.5432 only" bash -c \
  "test -S /var/run/postgresql/.s.PGSQL.5432 && [ \"\$(runuser -u postgres -- psql -XAtc 'show listen_addresses')\" = '' ]"

mkdir -p /e2e-out/autopkgtest
started=$SECONDS
rc=0
autopkgtest --output-dir /e2e-out/autopkgtest/out --summary-file /e2e-out/autopkgtest/summary \
  --ignore-restrictions=isolation-container,breaks-testbed \
  "/e2e-in/build/sendit-watcher_${VERSION}_all.deb" /e2e-in/src/ -- null >/e2e-out/autopkgtest/log 2>&1 || rc=$?
echo "   autopkgtest exit status $rc after $((SECONDS - started)) s; summary:"
sed 's/^/   /' /e2e-out/autopkgtest/summary
for test in default-database command-line; do
  log=/e2e-out/autopkgtest/out/$test-stdout
  [ -f "$log" ] && sed "s/^/   $test: /" "$log"
  check "autopkgtest $test: PASS" grep -Eq "^$test +PASS" /e2e-out/autopkgtest/summary
done
check "autopkgtest exit status 0 (no test failed or skipped)" [ "$rc" = 0 ]
[ "$rc" = 0 ] || tail -n 60 /e2e-out/autopkgtest/log
finish
