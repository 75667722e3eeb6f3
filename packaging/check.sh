#!/usr/bin/env bash
# The packaging checks, run by .ci/run: the systemd unit, the Prometheus alerting rules and
# their unit tests, and the Debian package (packaging/test-deb.sh: build, install, run,
# remove; needs root). Needs systemd-analyze, promtool (Debian: apt-get install prometheus),
# dpkg, curl and cargo-deb.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The unit. systemd-analyze verify refuses a unit whose ExecStart program does not exist, and
# /usr/bin/fieldsync-relay exists only where the package is installed: verify a copy whose
# program is replaced by one that exists (verify checks that it is executable, not what it
# does with the arguments). test-deb.sh verifies the installed unit unchanged. Unknown keys
# and bad values are only warnings (the exit status stays 0), so any line about the unit fails.
sed "s#^ExecStart=/usr/bin/fieldsync-relay #ExecStart=$(command -v true) #" \
  "$here/fieldsync-relay.service" >"$tmp/fieldsync-relay.service"
grep -q "^ExecStart=$(command -v true) serve " "$tmp/fieldsync-relay.service" ||
  { echo "check.sh: the unit's ExecStart is not /usr/bin/fieldsync-relay serve …" >&2; exit 1; }
out=$(systemd-analyze verify "$tmp/fieldsync-relay.service" 2>&1) ||
  { echo "$out" >&2; exit 1; }
if printf '%s\n' "$out" | grep 'fieldsync-relay'; then
  echo "check.sh: systemd-analyze verify warns about the unit" >&2
  exit 1
fi
echo "unit: ok"

# The alerting rules: syntax, then their tests.
(cd "$here/prometheus" && promtool check rules fieldsync-relay.rules.yml &&
  promtool test rules fieldsync-relay.rules.test.yml)

# The Debian package.
"$here/test-deb.sh"
