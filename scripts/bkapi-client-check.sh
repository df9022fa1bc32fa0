#!/usr/bin/env bash
# BlueKing's own client against the sandbox: installs bkapi-component-open in a virtualenv kept
# under the cargo target directory (reused when present), starts `ding-channel serve --sandbox`
# on a free port and a throw-away SQLite database, and runs scripts/bkapi_client_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGE="bkapi-component-open==2.1.0"
target="${CARGO_TARGET_DIR:-target}"
venv="$target/bkapi-venv"
if ! "$venv/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("bkapi-component-open") != "2.1.0")' 2>/dev/null; then
  echo "== creating $venv with $PACKAGE"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$PACKAGE"
fi

cargo build --locked --quiet --bin ding-channel
bin="$target/debug/ding-channel"

tmp="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

env -u DATABASE_URL DATABASE_URL="sqlite://$tmp/sandbox.db" DING_CHANNEL_BIND=127.0.0.1:0 \
  DING_CHANNEL_CONFIG="" DING_CHANNEL_LOG=info "$bin" serve --sandbox >"$tmp/server.log" 2>&1 &
pid=$!

# The banner names the simulator; the log line names the port.
port="" sim=""
for _ in $(seq 1 300); do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "FAIL: ding-channel serve --sandbox exited before it listened; its log:"; cat "$tmp/server.log"; exit 1
  fi
  port="$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/server.log" | head -n1)"
  sim="$(sed -n 's/.*DingTalk is simulated at \(http[^ ]*\).*/\1/p' "$tmp/server.log" | head -n1)"
  [ -n "$port" ] && [ -n "$sim" ] && break
  sleep 0.1
done
if [ -z "$port" ] || [ -z "$sim" ]; then
  echo "FAIL: expected the sandbox to print its port and simulator URL within 30 s; its log:"; cat "$tmp/server.log"; exit 1
fi

if ! "$venv/bin/python" scripts/bkapi_client_check.py "http://127.0.0.1:$port" "$sim"; then
  echo "== the sandbox's log:"; cat "$tmp/server.log"; exit 1
fi
