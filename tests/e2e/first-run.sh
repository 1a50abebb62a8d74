#!/bin/bash
# README's first command on a fresh Debian 12, as its reader meets it: root, a checkout under /root (which the
# postgres user cannot enter), nothing installed but a minbase bookworm and ca-certificates. tests/e2e/run starts
# this in a non-booted systemd-nspawn container of the bookworm build image (a throwaway overlay, the tracked files
# of the checkout bound read-only at /root/sendit-watcher, its report directory at /out) and prints what it says.
#   packaging/dev/run in the background: it installs Debian's packages only (setup --debian-only), starts a
#   private PostgreSQL on a Unix socket, goes READY and drops three sample studies through .tmp renames;
#   `packaging/dev/run status` until they are done (bounded); SIGTERM, exit status 0; no "could not change
#   directory" and no Traceback in anything it printed. Exits 0 when all of that holds.
set -u
checkout=/root/sendit-watcher
dev=/var/tmp/sendit-watcher-dev   # packaging/dev/run's default SENDIT_DEV_DIR
ready_within=180 done_within=180 stop_within=45
export HOME=/root
mkdir -p /out/status
runlog=/out/run.log               # packaging/dev/run's stdout and stderr
failures=0
ok() { echo "ok - $*"; }
fail() { echo "FAIL - $*"; failures=$((failures + 1)); }
finish() {
  if [ $failures != 0 ]; then
    echo "   packaging/dev/run's output (last 40 lines of $runlog):"; tail -n 40 "$runlog" | sed 's/^/   | /'
    [ ! -f "$dev/postgres/server.log" ] || { echo "   server.log:"; tail -n 10 "$dev/postgres/server.log" | sed 's/^/   | /'; }
  fi
  echo "== $failures failure(s)"
  exit $((failures != 0))
}
elapsed() { local ms=$((($(date +%s%N) - start_ns) / 1000000)); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }
demo_done() { # how many of the sample studies `packaging/dev/run status` shows done (its output kept in /out/status)
  local n=$1
  packaging/dev/run status >"/out/status/$n.out" 2>"/out/status/$n.err" || return 1
  grep -cE '^[0-9]+ +done +incoming:demo-[^ ]+ +20 ' "/out/status/$n.out"
}
echo "== $(. /etc/os-release; echo "$PRETTY_NAME") (non-booted systemd-nspawn): packaging/dev/run as root in $checkout"

# Test-bed quirk, not the reader's: the container shares the host's network, whose PostgreSQL listens on
# 127.0.0.1:5432. Debian's postgresql package creates (and may start) a cluster "main" of its own on install; here
# it listens on its Unix socket only (postgresql-common's createcluster.d), as in autopkgtest.sh.
mkdir -p /etc/postgresql-common/createcluster.d
printf "listen_addresses = ''\n" >/etc/postgresql-common/createcluster.d/e2e-unix-socket-only.conf

cd "$checkout" || { fail "no checkout at $checkout"; finish; }
start_ns=$(date +%s%N)
packaging/dev/run >"$runlog" 2>&1 </dev/null &
pid=$!

# Where the time goes until READY: the first line of each stage, as packaging/dev/run prints it.
stages=("setup: installing Debian packages" "setup: creating" "postgres: initdb" "sendit-watcher: watching")
names=("apt-get (setup)" "the venv" "initdb" "the service")
declare -A seen_at
ready_at=
deadline=$((SECONDS + ready_within))
while [ $SECONDS -lt $deadline ] && kill -0 $pid 2>/dev/null; do
  for stage in "${stages[@]}"; do
    [ -n "${seen_at[$stage]:-}" ] || ! grep -qF "$stage" "$runlog" || seen_at[$stage]=$(elapsed)
  done
  if grep -qE 'ready: |READY' "$runlog"; then ready_at=$(elapsed); break; fi
  sleep 0.1
done
starts=; for i in "${!stages[@]}"; do starts+="${starts:+, }${names[i]} at ${seen_at[${stages[i]}]:-?} s"; done
echo "   started: $starts"
if [ -z "$ready_at" ]; then
  if kill -0 $pid 2>/dev/null; then fail "packaging/dev/run not ready within $ready_within s"
  else wait $pid; fail "packaging/dev/run exited with status $? before it was ready"; fi
  kill -TERM $pid 2>/dev/null; finish
fi
ok "packaging/dev/run ready after $ready_at s: $(grep -m1 -E 'ready: |READY' "$runlog")"

done_at= n=0 seen=0
deadline=$((SECONDS + done_within))
while [ $SECONDS -lt $deadline ] && kill -0 $pid 2>/dev/null; do
  n=$((n + 1)); seen=$(demo_done $n) || seen=0
  if [ "$seen" -ge 3 ]; then done_at=$(elapsed); break; fi
  sleep 1
done
if [ -n "$done_at" ]; then
  ok "packaging/dev/run status: the three sample studies done after $done_at s ($n status calls)"
  sed 's/^/   /' "/out/status/$n.out"
else
  fail "packaging/dev/run status: ${seen:-0} of the three sample studies done within $done_within s"
  cat "/out/status/$n.out" "/out/status/$n.err" 2>/dev/null | sed 's/^/   status: /'
fi

if kill -TERM $pid 2>/dev/null; then
  deadline=$((SECONDS + stop_within))
  while [ $SECONDS -lt $deadline ] && kill -0 $pid 2>/dev/null; do sleep 0.2; done
  if kill -0 $pid 2>/dev/null; then
    fail "SIGTERM: still running after $stop_within s"; kill -KILL $pid
  else
    wait $pid; rc=$?
    if [ $rc = 0 ]; then ok "SIGTERM: exit status 0"; else fail "SIGTERM: exit status $rc (0 expected)"; fi
  fi
else
  wait $pid; fail "packaging/dev/run exited by itself (status $?) before SIGTERM"
fi

printed=$(cat "$runlog" /out/status/*.out /out/status/*.err 2>/dev/null)
if grep -q 'could not change directory' <<<"$printed"; then
  fail 'no "could not change directory" noise:'; grep 'could not change directory' <<<"$printed" | sort | uniq -c | sed 's/^/   /'
else ok 'no "could not change directory" noise (run and status)'; fi
if grep -q 'Traceback' <<<"$printed"; then fail "no Traceback:"; grep -A 12 -m 1 Traceback <<<"$printed" | sed 's/^/   /'
else ok "no Traceback (run and status)"; fi
dropped=$(grep -c 'demo: dropped' "$runlog")
if [ "$dropped" = 3 ]; then ok "three sample studies dropped through .tmp renames"; else fail "demo: $dropped drops (3 expected)"; fi

# What README says of it: a private cluster on a Unix socket only, Debian's packages only (no PyPI venv).
listen=$(psql "host=$dev/postgres port=5432 user=postgres dbname=postgres" -XAtc 'show listen_addresses' 2>&1)
if [ -z "$listen" ]; then ok "the private cluster in $dev/postgres listens on its Unix socket only"
else fail "the private cluster's listen_addresses: $listen (empty expected)"; fi
venvs=$(ls ~/.cache/sendit-watcher | paste -sd' ')
if [ "$venvs" = venv-debian ]; then ok "Debian's packages only: ~/.cache/sendit-watcher holds venv-debian alone"
else fail "~/.cache/sendit-watcher holds: $venvs (venv-debian alone expected)"; fi
if out=$(packaging/dev/postgres stop "$dev/postgres" 2>&1) && [ -z "$out" ]; then ok "packaging/dev/postgres stop: quiet"
else fail "packaging/dev/postgres stop: $out"; fi
echo "   first run: ready after $ready_at s, three sample studies done after ${done_at:-?} s"
finish
