#!/bin/bash
# debian/tests through autopkgtest, in this booted container with autopkgtest-virt-null. virt-null cannot know what
# it runs in (trixie's claims no isolation at all, bookworm's claims isolation-machine), so the restrictions this
# testbed does satisfy are declared: isolation-container (this is a booted systemd-nspawn container),
# breaks-testbed (it is a throwaway --volatile=overlay boot) and isolation-machine as far as pytest-suite needs a
# machine of its own: root, tmpfs mounts, and fs.inotify.* sysctls it lowers for a moment (made writable below;
# they are the host kernel's, as when packaging/dev/test runs the suite on the host).
set -u
. /e2e-in/lib.sh

check "apt-get update" quietly apt-get update
# The container shares the host's network, where the host's PostgreSQL listens on 127.0.0.1:5432. The testbed's
# own cluster must then listen on its Unix socket only, on port 5432 as the shipped `dsn = dbname=sendit`
# expects: pg_createcluster takes postgresql.conf defaults from createcluster.d. That is this testbed's quirk, not
# the package's, so PostgreSQL is installed here (before autopkgtest, which finds it installed) and the
# drop-in removed again. pg_virtualenv picks a port that nothing listens on in the shared network (and that no
# cluster here is configured with): command-line's cluster listens on localhost there, pytest-suite's on its Unix
# socket only.
mkdir -p /etc/postgresql-common/createcluster.d
printf "listen_addresses = ''\nport = 5432\n" > /etc/postgresql-common/createcluster.d/e2e-unix-socket-only.conf
check "testbed: apt-get install postgresql autopkgtest" quietly apt-get install -y -q postgresql autopkgtest
rm /etc/postgresql-common/createcluster.d/e2e-unix-socket-only.conf
check "testbed: the cluster listens on /var/run/postgresql/.s.PGSQL.5432 only" bash -c \
  "test -S /var/run/postgresql/.s.PGSQL.5432 && [ \"\$(runuser -u postgres -- psql -XAtc 'show listen_addresses')\" = '' ]"

# systemd-nspawn mounts /proc/sys read-only: pytest-suite's sysctls, and no other, are made writable.
check "testbed: /proc/sys/fs/inotify writable (pytest-suite lowers its limits for a moment)" bash -c \
  'mount --bind /proc/sys/fs/inotify /proc/sys/fs/inotify && mount -o remount,bind,rw /proc/sys/fs/inotify &&
   cat /proc/sys/fs/inotify/max_queued_events > /proc/sys/fs/inotify/max_queued_events'
# pytest-suite pip-installs pynetdicom (needs-internet); this container's pip cannot reach PyPI by itself on every
# host that runs this, so tests/e2e/run hands it the wheels, fetched by the host's pip.
check "testbed: pynetdicom's wheels for pip: $(ls /e2e-in/wheels | paste -sd' ')" test -f /e2e-in/wheels/pynetdicom-*

mkdir -p /e2e-out/autopkgtest
started=$SECONDS
rc=0
# The tests tests/e2e/run chose for this suite (pytest-suite where the host's test runs do not cover its world).
selected=(); for test in $AUTOPKGTESTS; do selected+=("--test-name=$test"); done
echo "   autopkgtest of: $AUTOPKGTESTS${PYTEST_MARKERS:+ (pytest -m \"$PYTEST_MARKERS\")}"
autopkgtest --output-dir /e2e-out/autopkgtest/out --summary-file /e2e-out/autopkgtest/summary \
  --ignore-restrictions=isolation-container,isolation-machine,breaks-testbed \
  --env=PIP_NO_INDEX=1 --env=PIP_FIND_LINKS=/e2e-in/wheels --env="SENDIT_TEST_MARKERS=$PYTEST_MARKERS" \
  "${selected[@]}" "/e2e-in/build/sendit-watcher_${VERSION}_all.deb" /e2e-in/src/ -- null \
  >/e2e-out/autopkgtest/log 2>&1 || rc=$?
echo "   autopkgtest exit status $rc after $((SECONDS - started)) s; summary:"
sed 's/^/   /' /e2e-out/autopkgtest/summary
for test in $AUTOPKGTESTS; do
  log=/e2e-out/autopkgtest/out/$test-stdout
  if [ "$test" = pytest-suite ]; then
    # Its own lines, pytest's header (what was tested, with what), every skip and failure, and the counts.
    [ -f "$log" ] && grep -E '^(pytest-suite: |platform |sendit_watcher |pydicom |SKIPPED|XFAIL|XPASS|FAILED|ERROR)' \
      "$log" | sed "s/^\($test: \)\?/   $test: /"
    total=$(grep -E '^=+ .*[0-9]+ (passed|failed|errors?|skipped).* in [0-9.]+s' "$log" 2>/dev/null | tail -n 1 |
      tr -d '=' | sed 's/^ *//; s/ *$//')
    count() { local n; n=$(grep -oE "[0-9]+ $1" <<<"$total" | cut -d' ' -f1); echo "${n:-0}"; }
    echo "   $test: $(count passed) passed, $(count skipped) skipped, $(count failed) failed" \
      "(${total:-no pytest summary line})"
    grep -Eq "^$test +PASS" /e2e-out/autopkgtest/summary || grep -E '^(E |____)' "$log" 2>/dev/null | head -n 40 |
      sed "s/^/   $test: /"
    [ -s "/e2e-out/autopkgtest/out/$test-stderr" ] && head -n 10 "/e2e-out/autopkgtest/out/$test-stderr" |
      sed "s/^/   $test (stderr): /"
  else
    [ -f "$log" ] && sed "s/^/   $test: /" "$log"
  fi
  check "autopkgtest $test: PASS" grep -Eq "^$test +PASS" /e2e-out/autopkgtest/summary
done
[[ " $AUTOPKGTESTS " != *" pytest-suite "* ]] ||
check "autopkgtest pytest-suite tested /usr/lib/python3/dist-packages/sendit_watcher" \
  grep -q "^sendit_watcher $VERSION from /usr/lib/python3/dist-packages/sendit_watcher\$" \
  /e2e-out/autopkgtest/out/pytest-suite-stdout
check "autopkgtest exit status 0 (no test failed or skipped)" [ "$rc" = 0 ]
[ "$rc" = 0 ] || tail -n 60 /e2e-out/autopkgtest/log
finish
