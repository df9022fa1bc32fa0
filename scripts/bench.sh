#!/usr/bin/env bash
# Delivery benchmarks against a DingTalk simulator, all on this machine.
#
#   scripts/bench.sh accept [N] [C]   N send_msg requests (one person + one signed robot each) at
#                                     concurrency C, robot throttle off: accepted/s, p50/p99,
#                                     time until the last delivery, DingTalk calls per message,
#                                     peak RSS, and a check that every delivery arrived once.
#   scripts/bench.sh storm            1000 alerts in 10 s to 5 robots and 200 people with the real
#                                     robot limit (20 per window, window shortened to 6 s): alerts
#                                     delivered, digests, max sends per robot per window, drain time.
#   scripts/bench.sh alerts           an Alertmanager storm: 1000 alerts in 50 groups, each group's
#                                     notification sent as Alertmanager does (4 waves 2 s apart, each
#                                     with all the group's alerts so far) to 5 robots through the
#                                     webhook receiver, robot limit 20 per 6 s: alerts delivered,
#                                     DingTalk calls, max sends per robot per window, drain time.
#   scripts/bench.sh pg [N] [C]       accept throughput on PostgreSQL (TEST_DATABASE_URL or
#                                     postgres://postgres@127.0.0.1:5432/test) with 1 and 2 servers,
#                                     and per phase PostgreSQL's own counters of the bench database
#                                     (commits, deadlocks) and the CPU time of servers and backends.
#
# BENCH_BIN=path runs another build's binary (the load generator is this tree's).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-accept}
N=${2:-5000}
C=${3:-32}
SIM_PORT=${SIM_PORT:-18791}
PORT=${PORT:-18792}
PEOPLE=200
ROBOTS=5
features=()
[ "$MODE" = pg ] && features=(--features postgres)
cargo build --release --quiet "${features[@]}" --bin ding-channel --example loadgen
target=${CARGO_TARGET_DIR:-target}
bin=${BENCH_BIN:-$target/release/ding-channel}
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; [ -n "${KEEP_LOGS:-}" ] && cp "$work"/server-*.log "$KEEP_LOGS"/ 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

throttle=1000000000 window_ms=60000
case "$MODE" in storm | alerts) throttle=20 window_ms=6000 ;; esac
python3 - "$work" "$PEOPLE" "$ROBOTS" "$throttle" "$window_ms" <<'PY'
import json, sys
work, people, robots, throttle, window = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
sim = {"apps": [{"key": "benchapp", "secret": "bench-app-secret", "robot_code": "benchapp"}],
       "users": [{"mobile": f"139{i:08d}", "userid": f"ding-p{i}"} for i in range(people)],
       "robots": [{"name": f"robot{i}", "token": f"{i:064x}", "secret": f"SEC{i:060x}"} for i in range(robots)],
       "throttle_limit": throttle, "throttle_window_ms": window, "throttle_penalty_ms": 600000}
json.dump(sim, open(f"{work}/sim.json", "w"))
with open(f"{work}/users.jsonl", "w") as f:
    for i in range(people):
        f.write(json.dumps({"username": f"p{i}", "telephone": f"139{i:08d}"}) + "\n")
    for i in range(robots):
        f.write(json.dumps({"username": f"robot{i}", "qq": f"{i:064x}", "wx_userid": f"SEC{i:060x}"}) + "\n")
PY

if [ "$MODE" = pg ]; then
  pg=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
  name="dc_bench_$$"
  psql "$pg" -qc "CREATE DATABASE $name" >/dev/null
  export DATABASE_URL="${pg%/*}/$name"
  trap 'cleanup; psql "$pg" -qc "DROP DATABASE IF EXISTS $name WITH (FORCE)" >/dev/null' EXIT
else
  export DATABASE_URL=${DATABASE_URL:-sqlite://$work/bench.db}
fi
export DINGTALK_OAPI_BASE=http://127.0.0.1:$SIM_PORT DINGTALK_API_BASE=http://127.0.0.1:$SIM_PORT
export DING_CHANNEL_LOG=warn DING_CHANNEL_CONFIG=""
$bin simulator --port "$SIM_PORT" --config "$work/sim.json" >/dev/null 2>&1 &
pids+=($!)
simulator=$!
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14+$15)/hz}' "/proc/$1/stat"; }
$bin channels sync >/dev/null
$bin channels conf send_dingtalk ding_app_key=benchapp ding_app_secret=bench-app-secret >/dev/null
case "$MODE" in storm | alerts) $bin channels conf send_dingbot robot_rate_window_s=6 >/dev/null ;; esac
$bin apps add bench --secret bench-secret --replace >/dev/null
$bin users import "$work/users.jsonl" >/dev/null

# The storm keeps DingTalk's real app budget (40 calls/s); the throughput runs lift it so they
# measure this server rather than DingTalk's limits.
case "$MODE" in storm | alerts) ;; *) export DING_CHANNEL_APP_QPS=10000 DING_CHANNEL_APP_QPM=600000 ;; esac
start_server() { # port
  DING_CHANNEL_BIND=127.0.0.1:$1 $bin serve >"$work/server-$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/healthz" >/dev/null && return; sleep 0.1; done
  echo "server on $1 did not start"; cat "$work/server-$1.log"; exit 1
}
depth() { curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^ding_channel_queue_depth/{print $2}'; }
auth='X-Bkapi-Authorization: {"bk_app_code":"bench","bk_app_secret":"bench-secret"}'
load() { # extra loadgen args…
  "$target/release/examples/loadgen" -c "$C" --header "$auth" "$@"
}

case "$MODE" in
accept)
  start_server "$PORT"
  server=${pids[-1]}
  echo "== $N send_msg requests at concurrency $C ($(echo "$DATABASE_URL" | cut -d: -f1))"
  started=$(date +%s.%N)
  load -n "$N" --url "http://127.0.0.1:$PORT/api/c/compapi/cmsi/send_msg/" \
    --body '{"msg_type":"ding","receiver__username":"p{i%100},robot{i%5}","title":"alert {i}","content":"host-{i} disk at 95%"}'
  load_cpu=$(cpu_s "$server")
  while [ "$(depth)" != "0" ]; do sleep 0.05; done
  echo "time until the last delivery: $(python3 -c "print(round($(date +%s.%N) - $started, 2))") s"
  echo "server peak RSS: $(awk '/VmHWM/{print $2, $3}' /proc/$server/status)"
  # CPU time is steadier than throughput on a shared machine: compare builds by it.
  cpu=$(cpu_s "$server")
  echo "server CPU: $cpu s in all, $load_cpu s while accepting: $(python3 -c "print(round(1000 * $load_cpu / $N, 3))") ms per request (simulator: $(cpu_s "$simulator") s)"
  curl -s "http://127.0.0.1:$SIM_PORT/_sim/stats" > "$work/stats.json"
  curl -s "http://127.0.0.1:$SIM_PORT/_sim/messages" > "$work/messages.json"
  python3 - "$work" "$N" <<'PY'
import json, sys, collections, re
work, n = sys.argv[1], int(sys.argv[2])
stats, msgs = json.load(open(f"{work}/stats.json")), json.load(open(f"{work}/messages.json"))
got = collections.Counter()
for m in msgs:
    if m["api"] == "robot_send":  # a single alert, or a digest of several
        body = m["body"]
        text = body["text"]["content"] if body["msgtype"] == "text" else body["markdown"]["text"]
        for a in re.findall(r"alert (\d+)(?!\d)", text):
            got[(f"alert {a}", m["target"])] += 1
    else:
        for u in m["user_ids"]:
            got[(m["body"]["msgParam"]["content"].split("\n")[0], u)] += 1
expected = {(f"alert {i}", f"robot{i % 5}") for i in range(n)} | {(f"alert {i}", f"ding-p{i % 100}") for i in range(n)}
lost, dup = expected - set(got), [k for k, c in got.items() if c > 1]
print(f"deliveries expected {len(expected)}, received {sum(got.values())}, lost {len(lost)}, duplicated {len(dup)}")
print(f"DingTalk calls: {stats['requests']} = {sum(stats['requests'].values()) / n:.2f} per message; refusals {stats['refusals']}")
sys.exit(1 if lost or dup else 0)
PY
  ;;
storm)
  start_server "$PORT"
  N=1000
  echo "== storm: $N alerts in 10 s to $ROBOTS robots and $PEOPLE people; robot limit 20 per 6 s"
  started=$(date +%s.%N)
  load -n "$N" --rate 100 --url "http://127.0.0.1:$PORT/api/c/compapi/cmsi/send_msg/" \
    --body '{"msg_type":"ding","receiver__username":"robot{i%5},p{i%200}","title":"alert-{i}","content":"host-{i} disk at 95%"}'
  while [ "$(depth)" != "0" ]; do sleep 0.1; done
  echo "queue drained $(python3 -c "print(round($(date +%s.%N) - $started, 1))") s after the first alert"
  curl -s "http://127.0.0.1:$SIM_PORT/_sim/stats" > "$work/stats.json"
  curl -s "http://127.0.0.1:$SIM_PORT/_sim/messages" > "$work/messages.json"
  python3 - "$work" "$N" <<'PY'
import json, sys, re, collections
work, n = sys.argv[1], int(sys.argv[2])
stats, msgs = json.load(open(f"{work}/stats.json")), json.load(open(f"{work}/messages.json"))
robot = [m for m in msgs if m["api"] == "robot_send"]
seen = collections.defaultdict(set)
for m in robot:
    body = json.dumps(m["body"], ensure_ascii=False)
    for a in re.findall(r"alert-(\d+)(?!\d)", body):
        seen[m["target"]].add(int(a))
delivered = sum(len(v) for v in seen.values())
digests = sum(1 for m in robot if m["body"].get("msgtype") == "markdown" and " alerts — " in m["body"]["markdown"]["title"])
worst = 0
for r in {m["target"] for m in robot}:
    t = sorted(m["at_ms"] for m in robot if m["target"] == r)
    worst = max(worst, max(sum(1 for u in t if s <= u < s + 6000) for s in t))
people = sum(len(m["user_ids"]) for m in msgs if m["api"] == "batch_send")
print(f"robot alerts delivered {delivered}/{n} in {len(robot)} webhook calls ({digests} digests); "
      f"max sends per robot per 6 s window: {worst}; throttled by DingTalk: {stats['throttled']}")
print(f"single-chat deliveries {people}/{n}")
sys.exit(0 if delivered == n and people == n and stats["throttled"] == 0 and worst <= 20 else 1)
PY
  ;;
alerts)
  start_server "$PORT"
  echo "== Alertmanager storm: 1000 alerts in 50 groups, 4 waves 2 s apart, to $ROBOTS robots; robot limit 20 per 6 s"
  started=$(date +%s.%N)
  python3 - "$PORT" "$ROBOTS" <<'PY'
import base64, json, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
port, robots = int(sys.argv[1]), int(sys.argv[2])
auth = "Basic " + base64.b64encode(b"bench:bench-secret").decode()
def alert(g, k):
    return {"status": "firing", "labels": {"alertname": f"Storm{g}", "instance": f"host-{k}", "severity": "critical"},
            "annotations": {"summary": f"storm-{g}-{k} disk at 95%"}, "startsAt": "2026-12-01T08:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus/graph", "fingerprint": f"{g:04x}{k:012x}"}
def post(g, wave):
    body = {"version": "4", "receiver": "ding", "status": "firing", "groupKey": f'{{}}:{{alertname="Storm{g}"}}',
            "truncatedAlerts": 0, "groupLabels": {"alertname": f"Storm{g}"},
            "commonLabels": {"alertname": f"Storm{g}", "severity": "critical"}, "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093", "alerts": [alert(g, k) for k in range(5 * (wave + 1))]}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/alertmanager/robot{g % robots}",
                                 data=json.dumps(body).encode(), headers={"Authorization": auth, "Content-Type": "application/json"})
    t = time.monotonic()
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, time.monotonic() - t
answers, waits = {}, []
with ThreadPoolExecutor(16) as pool:
    for wave in range(4):
        t0 = time.monotonic()
        for status, took in pool.map(lambda g: post(g, wave), range(50)):
            answers[status] = answers.get(status, 0) + 1
            waits.append(took)
        time.sleep(max(0, 2 - (time.monotonic() - t0)))
waits.sort()
print(f"200 notifications answered {answers}; answer p50 {waits[len(waits) // 2] * 1000:.0f} ms, p99 {waits[int(len(waits) * 0.99)] * 1000:.0f} ms")
PY
  while [ "$(depth)" != "0" ]; do sleep 0.1; done
  echo "queue drained $(python3 -c "print(round($(date +%s.%N) - $started, 1))") s after the first notification"
  curl -s "http://127.0.0.1:$SIM_PORT/_sim/stats" > "$work/stats.json"
  curl -s "http://127.0.0.1:$SIM_PORT/_sim/messages" > "$work/messages.json"
  python3 - "$work" "$ROBOTS" <<'PY'
import json, sys, re, collections
work, robots = sys.argv[1], int(sys.argv[2])
stats, msgs = json.load(open(f"{work}/stats.json")), json.load(open(f"{work}/messages.json"))
robot = [m for m in msgs if m["api"] == "robot_send"]
seen = collections.defaultdict(set)
for m in robot:
    for g, k in re.findall(r"storm-(\d+)-(\d+)(?!\d)", json.dumps(m["body"], ensure_ascii=False)):
        seen[m["target"]].add((int(g), int(k)))
expected = {(f"robot{g % robots}", (g, k)) for g in range(50) for k in range(20)}
got = {(r, a) for r, v in seen.items() for a in v}
worst = 0
for r in {m["target"] for m in robot}:
    t = sorted(m["at_ms"] for m in robot if m["target"] == r)
    worst = max(worst, max(sum(1 for u in t if s <= u < s + 6000) for s in t))
print(f"alerts delivered {len(got & expected)}/{len(expected)} (misrouted {len(got - expected)}) in {len(robot)} webhook calls; "
      f"DingTalk calls {sum(stats['requests'].values())}; max sends per robot per 6 s window: {worst}; throttled by DingTalk: {stats['throttled']}")
sys.exit(0 if got == expected and stats["throttled"] == 0 and worst <= 20 else 1)
PY
  ;;
pg)
  # Throughput is noisy on a shared machine; PostgreSQL's counters and CPU times are not.
  counters() { psql "$pg" -Atc "SELECT xact_commit, deadlocks FROM pg_stat_database WHERE datname = '$name'"; }
  backends() { psql "$pg" -Atc "SELECT pid FROM pg_stat_activity WHERE datname = '$name'"; }
  cpu_of() { local t=0; for p in "$@"; do t=$(python3 -c "print($t + $(cpu_s "$p" 2>/dev/null || echo 0))"); done; echo "$t"; }
  phase() { # label, then the servers' ports
    local label=$1; shift
    local urls=() servers=() p
    for p in "$@"; do urls+=(--url "http://127.0.0.1:$p/api/c/compapi/cmsi/send_msg/"); servers+=("${server_of[$p]}"); done
    local before cpu0 pg0
    before=$(counters) cpu0=$(cpu_of "${servers[@]}") pg0=$(cpu_of $(backends))
    load -n "$N" "${urls[@]}" \
      --body '{"msg_type":"ding","receiver__username":"p{i%100},robot{i%5}","title":"'"$label"' {i}","content":"c"}'
    python3 - "$before" "$(counters)" "$N" "$cpu0" "$(cpu_of "${servers[@]}")" "$pg0" "$(cpu_of $(backends))" <<'PY'
import sys
(c0, d0), (c1, d1) = (map(int, a.split("|")) for a in sys.argv[1:3])
n, s0, s1, p0, p1 = int(sys.argv[3]), *map(float, sys.argv[4:])
print(f"PostgreSQL while loading: {(c1 - c0) / n:.2f} commits per request (reads included), deadlocks {d1 - d0}; "
      f"CPU per request: servers {1000 * (s1 - s0) / n:.2f} ms, backends {1000 * (p1 - p0) / n:.2f} ms")
PY
  }
  declare -A server_of
  start_server "$PORT"
  server_of[$PORT]=${pids[-1]}
  echo "== PostgreSQL, 1 server: $N send_msg at concurrency $C"
  phase one "$PORT"
  start_server $((PORT + 1))
  server_of[$((PORT + 1))]=${pids[-1]}
  echo "== PostgreSQL, 2 servers: $N send_msg at concurrency $C, alternating"
  phase two "$PORT" $((PORT + 1))
  while [ "$(depth)" != "0" ]; do sleep 0.05; done
  ;;
*) echo "usage: scripts/bench.sh accept|storm|alerts|pg [N] [C]"; exit 2 ;;
esac
