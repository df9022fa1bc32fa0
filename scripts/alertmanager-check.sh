#!/usr/bin/env bash
# A real Prometheus Alertmanager (Debian's prometheus-alertmanager) against the sandbox: its
# webhook receiver, with basic auth, points at ding-channel's /api/v1/alertmanager route.
#   1. an alert posted to Alertmanager's API reaches the simulated group robot;
#   2. with send_ding disabled, ding-channel answers 503, Alertmanager retries, and once it is
#      enabled again the alert arrives;
#   3. with ding-channel stopped, Alertmanager's notification fails; after ding-channel comes
#      back (same port, same database) Alertmanager's next attempt delivers it.
# Nothing may be lost, and no alert may arrive twice.
set -euo pipefail
cd "$(dirname "$0")/.."

AM=/usr/bin/prometheus-alertmanager
if [ ! -x "$AM" ]; then
  echo "FAIL: $AM is missing; install Debian's package: apt-get install prometheus-alertmanager (.ci/run does)"
  exit 1
fi

target="${CARGO_TARGET_DIR:-target}"
cargo build --locked --quiet --bin ding-channel
bin="$target/debug/ding-channel"

tmp="$(mktemp -d)"
dc_pid="" am_pid=""
cleanup() {
  for p in $dc_pid $am_pid; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*"
  echo "== ding-channel's log:"; cat "$tmp"/server*.log || true
  echo "== Alertmanager's log:"; tail -n 40 "$tmp/am.log" || true
  exit 1
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
dc_port="$(free_port)"
am_port="$(free_port)"
export DATABASE_URL="sqlite://$tmp/sandbox.db" DING_CHANNEL_CONFIG="" DING_CHANNEL_LOG=info

run=0 sim=""
start_ding_channel() {
  run=$((run + 1))
  DING_CHANNEL_BIND="127.0.0.1:$dc_port" "$bin" serve --sandbox >"$tmp/server$run.log" 2>&1 &
  dc_pid=$!
  sim=""
  for _ in $(seq 1 300); do
    kill -0 "$dc_pid" 2>/dev/null || fail "ding-channel exited at start"
    sim="$(sed -n 's/.*DingTalk is simulated at \(http[^ ]*\).*/\1/p' "$tmp/server$run.log" | head -n1)"
    [ -n "$sim" ] && grep -q "listening on 127.0.0.1:$dc_port" "$tmp/server$run.log" && return 0
    sleep 0.1
  done
  fail "ding-channel did not listen on $dc_port within 30 s"
}

stop_ding_channel() {
  kill "$dc_pid"; wait "$dc_pid" 2>/dev/null || true; dc_pid=""
}

# Short group timings so the check runs in seconds; each alertname is a group of its own.
cat >"$tmp/alertmanager.yml" <<EOF
route:
  receiver: ding-channel
  group_by: [alertname]
  group_wait: 1s
  group_interval: 2s
  repeat_interval: 1h
receivers:
  - name: ding-channel
    webhook_configs:
      - url: http://127.0.0.1:$dc_port/api/v1/alertmanager/ops-robot
        send_resolved: true
        http_config:
          basic_auth:
            username: demo
            password: demo-secret
EOF

start_ding_channel
"$AM" --config.file="$tmp/alertmanager.yml" --storage.path="$tmp/am-data" \
  --web.listen-address="127.0.0.1:$am_port" --cluster.listen-address="" --log.level=debug \
  >"$tmp/am.log" 2>&1 &
am_pid=$!
am="http://127.0.0.1:$am_port"
for _ in $(seq 1 100); do
  curl -fs "$am/-/ready" >/dev/null 2>&1 && break
  kill -0 "$am_pid" 2>/dev/null || fail "Alertmanager exited at start"
  sleep 0.1
done
curl -fs "$am/-/ready" >/dev/null || fail "Alertmanager not ready within 10 s"
echo "== Alertmanager $("$AM" --version 2>&1 | head -n1 | awk '{print $3}') on $am_port, ding-channel on $dc_port"

post_alert() {
  curl -fsS -XPOST -H 'Content-Type: application/json' "$am/api/v2/alerts" -d "[{
    \"labels\": {\"alertname\": \"$1\", \"severity\": \"critical\", \"instance\": \"host-1\"},
    \"annotations\": {\"summary\": \"$1 on host-1\"},
    \"generatorURL\": \"http://prometheus.example/graph\"}]" >/dev/null
}

# How many firing notifications of alert $1 the current simulator's robot received.
received() {
  curl -fs "$sim/_sim/messages" | python3 -c '
import json, re, sys
title = re.compile(r"^\[FIRING:1\] " + re.escape(sys.argv[1]) + r"\b")
print(sum(1 for m in json.load(sys.stdin) if m["api"] == "robot_send"
          and title.search(m["body"].get("markdown", {}).get("title", ""))))' "$1"
}

wait_received() {
  for _ in $(seq 1 "${2:-300}"); do
    [ "$(received "$1")" -gt 0 ] && return 0
    sleep 0.1
  done
  fail "$1 did not reach the simulated robot"
}

failed_notifications() {
  curl -fs "$am/metrics" | sed -n 's/^alertmanager_notifications_failed_total{integration="webhook"} \([0-9.e+]*\)$/\1/p'
}

wait_failed_notification() {
  local before="$1"
  for _ in $(seq 1 300); do
    [ "$(failed_notifications)" != "$before" ] && return 0
    sleep 0.1
  done
  fail "Alertmanager never failed a notification ($2)"
}

echo "== 1. an alert reaches the robot"
post_alert CheckOne
wait_received CheckOne

echo "== 2. send_ding disabled: 503, Alertmanager retries, delivered once enabled"
before="$(failed_notifications)"
"$bin" channels disable send_ding >/dev/null
post_alert CheckTwo
wait_failed_notification "$before" "send_ding disabled"
grep -q 'webhook notification not stored' "$tmp/server$run.log" \
  || fail "ding-channel did not answer 503 while send_ding was disabled"
"$bin" channels enable send_ding >/dev/null
wait_received CheckTwo 400
for name in CheckOne CheckTwo; do
  [ "$(received "$name")" -eq 1 ] || fail "$name arrived $(received "$name") times"
done

echo "== 3. ding-channel stopped: the notification fails, and is delivered after the restart"
stop_ding_channel
before="$(failed_notifications)"
post_alert CheckThree
wait_failed_notification "$before" "ding-channel stopped"
start_ding_channel
wait_received CheckThree 400

# The simulator of this run saw only what came after the restart: the earlier alerts, delivered
# once before it, must not come again.
for name in CheckOne CheckTwo; do
  [ "$(received "$name")" -eq 0 ] || fail "$name arrived again after the restart"
done
[ "$(received CheckThree)" -eq 1 ] || fail "CheckThree arrived $(received CheckThree) times"
echo "ok: a real Alertmanager's alerts reached the robot through a 503 and a restart; nothing lost"
