#!/usr/bin/env bash
# Builds the relay's Debian package, installs it with dpkg, runs the installed relay as its
# systemd unit would, checks that it serves and stops cleanly on SIGTERM, then removes and
# purges the package. Needs root, dpkg, curl and cargo-deb (cargo install cargo-deb --locked).
#
# The package holds the dev-profile binary: `cargo build -p fieldsync-relay --bin
# fieldsync-relay` is the build the process tests make anyway (tests/src/procs.rs), so CI pays
# only for packaging and installing, not for a release build. A release package for servers
# is `cargo deb -p fieldsync-relay`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
started=$SECONDS

fail() {
  echo "test-deb.sh: $*" >&2
  exit 1
}

[ "$(id -u)" -eq 0 ] || fail "needs root (dpkg -i)"
command -v cargo-deb >/dev/null || fail "needs cargo-deb: cargo install cargo-deb --locked"
if dpkg-query -W -f='${Status}' fieldsync-relay 2>/dev/null | grep -q ' installed$'; then
  fail "fieldsync-relay is installed on this machine already; not replacing it"
fi

work=$(mktemp -d)
relay_pid=
cleanup() {
  if [ -n "$relay_pid" ] && kill -0 "$relay_pid" 2>/dev/null; then
    kill -KILL "$relay_pid" 2>/dev/null || true
  fi
  if dpkg-query -W fieldsync-relay >/dev/null 2>&1; then
    dpkg -P fieldsync-relay >/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# --- Build the package -------------------------------------------------------------------
cargo build --locked --quiet -p fieldsync-relay --bin fieldsync-relay
target=${CARGO_TARGET_DIR:-$root/target}
# cargo-deb takes the binary from target/release/ of the target directory it is given (for
# the dev profile it warns that this will become an error): hand it the dev binary under a
# target directory of its own.
mkdir -p "$work/target/release"
cp "$target/debug/fieldsync-relay" "$work/target/release/"
# --strip: the dev binary's line tables have no place on a server; --fast: lighter
# compression, the package is installed once and thrown away.
CARGO_TARGET_DIR="$work/target" cargo deb -p fieldsync-relay --no-build --strip \
  --fast --output "$work/fieldsync-relay.deb"
echo "package: $(du -h "$work/fieldsync-relay.deb" | cut -f1) ($((SECONDS - started)) s)"

# --- Install -------------------------------------------------------------------------------
dpkg -i "$work/fieldsync-relay.deb" >/dev/null
unit=/usr/lib/systemd/system/fieldsync-relay.service
[ -x /usr/bin/fieldsync-relay ] || fail "/usr/bin/fieldsync-relay is not installed"
[ -f "$unit" ] || fail "$unit is not installed"
dpkg-query -W -f='${Conffiles}\n' fieldsync-relay | grep -q '^ /etc/fieldsync/relay.toml ' ||
  fail "/etc/fieldsync/relay.toml is not a conffile"
dpkg-query -W -f='${Depends}\n' fieldsync-relay | grep -q 'libc6' ||
  fail "the package's dependencies were not computed: $(dpkg-query -W -f='${Depends}' fieldsync-relay)"
getent passwd fieldsync >/dev/null || fail "the fieldsync user was not created"
[ -f /usr/share/doc/fieldsync-relay/relay.example.toml ] ||
  fail "the documented example configuration is not installed"
grep -q '^data_dir = "/var/lib/fieldsync/relay-data"' /etc/fieldsync/relay.toml ||
  fail "the installed relay.toml does not name an absolute data_dir"
[ "$(stat -c '%U:%G %a' /etc/fieldsync/relay.toml)" = "root:fieldsync 640" ] ||
  fail "/etc/fieldsync/relay.toml is $(stat -c '%U:%G %a' /etc/fieldsync/relay.toml), not root:fieldsync 640"
# The installed unit as it is: its ExecStart program exists now.
verify=$(systemd-analyze verify "$unit" 2>&1 || echo "systemd-analyze verify failed")
if printf '%s\n' "$verify" | grep -q 'fieldsync-relay\|failed'; then
  fail "systemd-analyze verify $unit: $verify"
fi

# --- Run it as the unit would ----------------------------------------------------------------
# The unit's user, working directory, umask, clean environment, no new privileges and no
# capabilities; on loopback with ports of its own and a data directory of its own (--data
# overrides the installed data_dir), so that nothing else on this machine is disturbed.
chmod 0755 "$work"
state="$work/state"
install -d -o fieldsync -g fieldsync -m 0700 "$state"
(
  cd "$state"
  umask 0077
  exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    setpriv --reuid=fieldsync --regid=fieldsync --init-groups --no-new-privs \
    --inh-caps=-all --bounding-set=-all \
    /usr/bin/fieldsync-relay serve --config /etc/fieldsync/relay.toml \
    --data "$state/relay-data" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0
) >"$work/stdout" 2>"$work/stderr" &
relay_pid=$!
as_relay_user() {
  (cd "$state" && env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    setpriv --reuid=fieldsync --regid=fieldsync --init-groups "$@")
}

for _ in $(seq 1 300); do
  grep -q '^listening on ' "$work/stdout" && break
  kill -0 "$relay_pid" 2>/dev/null || fail "the relay exited at start: $(cat "$work/stderr")"
  sleep 0.2
done
grep -q '^listening on ' "$work/stdout" || fail "the relay did not start: $(cat "$work/stderr")"
metrics=$(grep -o 'http://127\.0\.0\.1:[0-9]*/metrics' "$work/stderr" | head -n 1 || true)
[ -n "$metrics" ] || fail "the relay's log does not name its metrics address: $(cat "$work/stderr")"
health=${metrics%/metrics}/healthz

[ "$(curl -fsS "$health")" = ok ] || fail "$health did not answer ok"
# `status` as the relay's user, beside the running relay, shows the certificate it serves.
fingerprint=$(sed -n 's/^fingerprint: //p' "$work/stdout")
as_relay_user /usr/bin/fieldsync-relay status --config /etc/fieldsync/relay.toml --data "$state/relay-data" \
  >"$work/status" || fail "fieldsync-relay status failed"
grep -q "$fingerprint" "$work/status" || fail "status does not show the served fingerprint"
[ "$(stat -c '%U %a' "$state/relay-data")" = "fieldsync 700" ] ||
  fail "the data directory is $(stat -c '%U %a' "$state/relay-data")"
# Every relay metric the alerting rules use is exported (the fleet and disk gauges appear once
# the first count is done, right after the start). A family with labels, such as
# changes_refused{reason}, appears with its first sample: those must at least be registered
# under that name in the relay's source.
wanted=$(grep -o 'fieldsync_relay_[a-z_]*' packaging/prometheus/fieldsync-relay.rules.yml |
  sed 's/_total$//' | sort -u)
for _ in $(seq 1 50); do
  curl -fsS "$metrics" >"$work/metrics" || fail "$metrics did not answer"
  grep -q '^# TYPE fieldsync_relay_devices ' "$work/metrics" && break
  sleep 0.2
done
missing=
for name in $wanted; do
  grep -q "^# TYPE $name " "$work/metrics" || missing="$missing $name"
done
unknown=
for name in $missing; do
  grep -rqF "\"${name#fieldsync_relay_}\"" sync-server/src/metrics* || unknown="$unknown $name"
done
[ -z "$unknown" ] || fail "metrics used by the alerting rules are not exported:$unknown"

# SIGTERM, as systemctl stop sends it: the relay exits 0 well within the unit's TimeoutStopSec.
kill -TERM "$relay_pid"
for _ in $(seq 1 300); do
  kill -0 "$relay_pid" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$relay_pid" 2>/dev/null && fail "the relay did not stop within 30 s of SIGTERM"
status=0
wait "$relay_pid" || status=$?
relay_pid=
[ "$status" -eq 0 ] || fail "the relay exited with status $status on SIGTERM: $(cat "$work/stderr")"

# --- Remove ----------------------------------------------------------------------------------
dpkg -r fieldsync-relay >/dev/null
[ ! -e /usr/bin/fieldsync-relay ] || fail "dpkg -r left /usr/bin/fieldsync-relay"
[ -f /etc/fieldsync/relay.toml ] || fail "dpkg -r removed the conffile"
dpkg -P fieldsync-relay >/dev/null
[ ! -e /etc/fieldsync/relay.toml ] || fail "dpkg -P left /etc/fieldsync/relay.toml"
! dpkg-statoverride --list /etc/fieldsync/relay.toml >/dev/null || fail "dpkg -P left the stat override"
echo "package test passed in $((SECONDS - started)) s"
