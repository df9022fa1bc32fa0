#!/usr/bin/env bash
# Delivery benchmark: the release server on SQLite (or DATABASE_URL), a DingTalk simulator with
# the robot throttle off, N send_msg requests (one person + one signed robot each) at
# concurrency C. Reports accept throughput and latency, time until the last delivery, DingTalk
# calls per message, the server's peak RSS, and checks that every delivery arrived exactly once.
# Usage: scripts/bench.sh [N] [C]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-5000}
C=${2:-32}
SIM_PORT=${SIM_PORT:-18791}
PORT=${PORT:-18792}
PEOPLE=100
ROBOTS=5
cargo build --release --quiet --bin ding-channel --example loadgen
bin=target/release/ding-channel
work=$(mktemp -d)
cleanup() { kill "${server:-}" "${sim:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

python3 - "$work" "$PEOPLE" "$ROBOTS" <<'PY'
import json, sys
work, people, robots = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sim = {"apps": [{"key": "benchapp", "secret": "bench-app-secret", "robot_code": "benchapp"}],
       "users": [{"mobile": f"139{i:08d}", "userid": f"ding-p{i}"} for i in range(people)],
       "robots": [{"name": f"robot{i}", "token": f"{i:064x}", "secret": f"SEC{i:060x}"} for i in range(robots)],
       "throttle_limit": 1000000000}
json.dump(sim, open(f"{work}/sim.json", "w"))
with open(f"{work}/users.jsonl", "w") as f:
    for i in range(people):
        f.write(json.dumps({"username": f"p{i}", "telephone": f"139{i:08d}"}) + "\n")
    for i in range(robots):
        f.write(json.dumps({"username": f"robot{i}", "qq": f"{i:064x}", "wx_userid": f"SEC{i:060x}"}) + "\n")
PY

export DATABASE_URL=${DATABASE_URL:-sqlite://$work/bench.db}
export DINGTALK_OAPI_BASE=http://127.0.0.1:$SIM_PORT DINGTALK_API_BASE=http://127.0.0.1:$SIM_PORT
export DING_CHANNEL_BIND=127.0.0.1:$PORT DING_CHANNEL_LOG=warn DING_CHANNEL_CONFIG=""
$bin simulator --port "$SIM_PORT" --config "$work/sim.json" >/dev/null 2>&1 &
sim=$!
$bin channels sync >/dev/null
$bin channels conf send_dingtalk ding_app_key=benchapp ding_app_secret=bench-app-secret >/dev/null
$bin apps add bench --secret bench-secret --replace >/dev/null
$bin users import "$work/users.jsonl" >/dev/null
$bin serve >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done

echo "== $N send_msg requests at concurrency $C ($(echo "$DATABASE_URL" | cut -d: -f1))"
started=$(date +%s.%N)
target/release/examples/loadgen --url "http://127.0.0.1:$PORT/api/c/compapi/cmsi/send_msg/" -n "$N" -c "$C" \
  --header 'X-Bkapi-Authorization: {"bk_app_code":"bench","bk_app_secret":"bench-secret"}' \
  --body '{"msg_type":"ding","receiver__username":"p{i%100},robot{i%5}","title":"alert {i}","content":"host-{i} disk at 95%"}'
depth() { curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^ding_channel_queue_depth/{print $2}'; }
while [ "$(depth)" != "0" ]; do sleep 0.05; done
drained=$(date +%s.%N)
echo "time until the last delivery: $(python3 -c "print(round($drained - $started, 2))") s"
echo "server peak RSS: $(awk '/VmHWM/{print $2, $3}' /proc/$server/status)"
curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^ding_channel_(deliveries|dingtalk)'
curl -s "http://127.0.0.1:$SIM_PORT/_sim/stats" > "$work/stats.json"
curl -s "http://127.0.0.1:$SIM_PORT/_sim/messages" > "$work/messages.json"
python3 - "$work" "$N" <<'PY'
import json, sys, collections
work, n = sys.argv[1], int(sys.argv[2])
stats = json.load(open(f"{work}/stats.json"))
msgs = json.load(open(f"{work}/messages.json"))
got = collections.Counter()
for m in msgs:
    i = m["body"]["text"]["content"] if m["api"] == "robot_send" else json.loads(json.dumps(m["body"]["msgParam"]))["content"]
    alert = i.split("\n")[0]
    if m["api"] == "robot_send":
        got[(alert, m["target"])] += 1
    else:
        for u in m["user_ids"]:
            got[(alert, u)] += 1
expected = {(f"alert {i}", f"robot{i % 5}") for i in range(n)} | {(f"alert {i}", f"ding-p{i % 100}") for i in range(n)}
lost = expected - set(got)
dup = [k for k, c in got.items() if c > 1]
calls = sum(stats["requests"].values())
print(f"deliveries expected {len(expected)}, received {sum(got.values())}, lost {len(lost)}, duplicated {len(dup)}")
print(f"DingTalk calls: {stats['requests']} = {calls / n:.2f} per message; refusals {stats['refusals']}")
sys.exit(1 if lost or dup else 0)
PY
