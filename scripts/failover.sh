#!/usr/bin/env bash
# Fail-over on PostgreSQL, measured: two release servers share one database; a burst of sends
# goes to both; halfway through, one is killed with SIGKILL (its DingTalk calls in flight: the
# simulator answers each after 300 ms). Prints how many deliveries the dead server held, how
# long after the kill the survivor had delivered the last of them and everything, and what was
# lost or duplicated.
#
#   scripts/failover.sh [N] [C]   N send_msg requests (one person each) at concurrency C, alternating
#                                 between the servers; those the dead server cannot take go to
#                                 the survivor, as a load balancer would send them.
# PostgreSQL: TEST_DATABASE_URL or postgres://postgres@127.0.0.1:5432/test (a database is created).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-400}
C=${2:-16}
SIM_PORT=${SIM_PORT:-18891}
PORT_A=${PORT_A:-18892}
PORT_B=${PORT_B:-18893}
PEOPLE=100
cargo build --release --quiet --features postgres --bin ding-channel
bin=${BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release/ding-channel}
work=$(mktemp -d)
pg=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
name="dc_failover_$$"
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  psql "$pg" -qc "DROP DATABASE IF EXISTS $name WITH (FORCE)" >/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
psql "$pg" -qc "CREATE DATABASE $name" >/dev/null
export DATABASE_URL="${pg%/*}/$name"

python3 - "$work" "$PEOPLE" <<'PY'
import json, sys
work, people = sys.argv[1], int(sys.argv[2])
sim = {"apps": [{"key": "benchapp", "secret": "bench-app-secret", "robot_code": "benchapp"}],
       "users": [{"mobile": f"139{i:08d}", "userid": f"ding-p{i}"} for i in range(people)], "robots": []}
json.dump(sim, open(f"{work}/sim.json", "w"))
with open(f"{work}/users.jsonl", "w") as f:
    for i in range(people):
        f.write(json.dumps({"username": f"p{i}", "telephone": f"139{i:08d}"}) + "\n")
PY
export DINGTALK_OAPI_BASE=http://127.0.0.1:$SIM_PORT DINGTALK_API_BASE=http://127.0.0.1:$SIM_PORT
export DING_CHANNEL_LOG=warn DING_CHANNEL_CONFIG=""
export DING_CHANNEL_APP_QPS=10000 DING_CHANNEL_APP_QPM=600000
$bin simulator --port "$SIM_PORT" --config "$work/sim.json" >/dev/null 2>&1 &
pids+=($!)
$bin channels sync >/dev/null
$bin channels conf send_dingtalk ding_app_key=benchapp ding_app_secret=bench-app-secret >/dev/null
$bin apps add bench --secret bench-secret --replace >/dev/null
$bin users import "$work/users.jsonl" >/dev/null
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$SIM_PORT/_sim/stats" >/dev/null && break; sleep 0.1; done
curl -sf -X POST "http://127.0.0.1:$SIM_PORT/_sim/faults" -H 'Content-Type: application/json' -d '{"latency_ms": 300}' >/dev/null

start_server() { # port
  DING_CHANNEL_BIND=127.0.0.1:$1 $bin serve >"$work/server-$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/healthz" >/dev/null && return; sleep 0.1; done
  echo "server on $1 did not start"; cat "$work/server-$1.log"; exit 1
}
start_server "$PORT_A"
doomed=${pids[-1]}
start_server "$PORT_B"
echo "== $N send_msg requests at concurrency $C to two servers on PostgreSQL; server $doomed killed halfway"
python3 - "$N" "$C" "$PORT_A" "$PORT_B" "$SIM_PORT" "$doomed" "$DATABASE_URL" <<'PY'
import json, os, signal, subprocess, sys, threading, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
n, c, a, b, sim, doomed, db = map(str, sys.argv[1:8])
n, c = int(n), int(c)
auth = '{"bk_app_code":"bench","bk_app_secret":"bench-secret"}'
def sql(q):
    return subprocess.run(["psql", db, "-tAc", q], check=True, capture_output=True, text=True).stdout.split()
def post(port, i):
    body = json.dumps({"msg_type": "ding", "receiver__username": f"p{i % 100}", "title": f"m{i}", "content": "disk at 95%"}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/c/compapi/cmsi/send_msg/", data=body,
                                 headers={"Content-Type": "application/json", "X-Bkapi-Authorization": auth})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)
killed = {}
def send(i):
    if i % 2 == 0 and not killed:
        try:
            return post(a, i)
        except OSError:
            pass  # killed meanwhile: accepted or not, the database says
    return post(b, i)
owner = None
with ThreadPoolExecutor(c) as pool:
    futures = [pool.submit(send, i) for i in range(n)]
    while sum(f.done() for f in futures) < n // 2:
        time.sleep(0.01)
    owner = sql(f"SELECT id FROM processes WHERE pid = {doomed}")[0]
    os.kill(int(doomed), signal.SIGKILL)
    killed["at"] = time.monotonic()
    held = sql(f"SELECT id FROM deliveries WHERE status = 'queued' AND claimed_by LIKE '{owner}-%'")
    for f in futures:
        f.result()
t0 = killed["at"]
print(f"the killed server held {len(held)} deliveries in flight or waiting")
ids = ",".join(held) or "0"
last_held = None
while True:
    if last_held is None and sql(f"SELECT count(*) FROM deliveries WHERE id IN ({ids}) AND status <> 'sent'") == ["0"]:
        last_held = time.monotonic() - t0
    if last_held is not None and sql("SELECT count(*) FROM deliveries WHERE status = 'queued'") == ["0"]:
        break
    if time.monotonic() - t0 > 120:
        sys.exit("not delivered within 120 s")
    time.sleep(0.05)
print(f"the survivor delivered the last of them {last_held:.2f} s after the kill; everything {time.monotonic() - t0:.2f} s after")
accepted = set(sql("SELECT body::json->>'title' FROM messages"))
msgs = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sim}/_sim/messages"))
got = {}
for m in msgs:
    title = m["body"]["msgParam"]["content"].split("\n")[0]
    got[title] = got.get(title, 0) + len(m["user_ids"])
lost = accepted - set(got)
dup = {t for t, k in got.items() if k > 1}
# A duplicate is allowed only for what the killed server held: a call DingTalk took whose
# outcome the server did not live to record.
held_titles = set(sql(f"SELECT m.body::json->>'title' FROM deliveries d JOIN messages m ON m.id = d.message_id WHERE d.id IN ({ids})"))
print(f"accepted {len(accepted)} of {n}; lost {len(lost)}; duplicated {len(dup)}, "
      f"{len(dup - held_titles)} of them not held by the killed server")
sys.exit(1 if lost or dup - held_titles else 0)
PY
