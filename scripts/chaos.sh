#!/usr/bin/env bash
# A chaos run, repeatable: the release server under steady load while DingTalk misbehaves and
# the server is killed, then every accepted message accounted for.
#
#   scripts/chaos.sh [sqlite|postgres] [--short]
#
# - Load: CHAOS_SENDS send_msg requests (default 10000; --short 1500) at CHAOS_RATE per second
#   (default 40), a mix: a robot alone, a person alone, a person and a robot, two people and a
#   robot (150 people, 5 signed robots). Each text carries `chaos-<n>`. The client is a careful
#   ESB caller: an Idempotency-Key per send, tried again (on the other server) until answered.
# - DingTalk: a separate simulator process (it keeps its record across the server's kills) with
#   CHAOS_FAULTS of the requests failing (default 0.25 of every endpoint's): 40 % of them HTTP
#   503, 20 % each timed out (carried out, answered after the client's timeout), dropped before
#   being looked at, dropped after being carried out. The robot throttle is on: 20 per window
#   per robot, the window shortened to 6 s on both sides (as `bench.sh storm`), a throttled robot
#   silenced for 10 windows.
# - Kills: CHAOS_KILLS SIGKILLs (default 12; --short 10) at moments drawn from CHAOS_SEED (printed
#   first; set it to repeat a run), one in each equal slice of the load; each killed server is
#   restarted after a drawn pause. SQLite: one server. PostgreSQL: two servers sharing the
#   database, killed alternately, so one survives each kill (the dead one's claims are taken
#   over when their lease, DING_CHANNEL_LEASE_S, runs out).
# - Verdict (scripts/chaos_check.py): 0 lost, every duplicate explained, no call loop, the queue
#   drained, no robot throttled by DingTalk. Exits non-zero otherwise. KEEP=DIR keeps the
#   run's records and logs in DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
BACKEND=${1:-sqlite}
SHORT=${2:-}
case "$BACKEND" in sqlite | postgres) ;; *) echo "usage: scripts/chaos.sh [sqlite|postgres] [--short]"; exit 2 ;; esac
case "$SHORT" in "" | --short) ;; *) echo "usage: scripts/chaos.sh [sqlite|postgres] [--short]"; exit 2 ;; esac
SEED=${CHAOS_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
echo "CHAOS_SEED=$SEED"
SENDS=${CHAOS_SENDS:-$([ -n "$SHORT" ] && echo 1500 || echo 10000)}
KILLS=${CHAOS_KILLS:-$([ -n "$SHORT" ] && echo 10 || echo 12)}
RATE=${CHAOS_RATE:-40}
FAULTS=${CHAOS_FAULTS:-0.25}
# The simulator's port, then one per server: CHAOS_PORT, or three consecutive free ones.
SIM_PORT=${CHAOS_PORT:-$(python3 -c 'import random, socket
def free(p):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", p)); return True
        except OSError:
            return False
b = random.randrange(20000, 40000)
while not all(free(p) for p in range(b, b + 3)):
    b = random.randrange(20000, 40000)
print(b)')}
PORT=$((SIM_PORT + 1))
TIMEOUT_MS=1500 # the server's DingTalk client timeout (DINGTALK_TIMEOUT_MS)
LEASE_S=60      # DING_CHANNEL_LEASE_S, as deployed
servers=1
[ "$BACKEND" = postgres ] && servers=2

python3 scripts/chaos_check.py --self-test >/dev/null
features=()
[ "$BACKEND" = postgres ] && features=(--features postgres)
cargo build --release --locked --quiet "${features[@]}" --bin ding-channel --example loadgen
target=${CARGO_TARGET_DIR:-target}
bin=$target/release/ding-channel
work=$(mktemp -d)
sim_pid=""
declare -a pids=()
cleanup() {
  for p in "${pids[@]}" $sim_pid; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp -r "$work"/. "$KEEP"/ && echo "records and logs kept in $KEEP"; fi
  rm -rf "$work"
  if [ -n "${pg_name:-}" ]; then psql "$pg" -qc "DROP DATABASE IF EXISTS $pg_name WITH (FORCE)" >/dev/null; fi
}
trap cleanup EXIT
now_ms() { date +%s%3N; }

python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
people = [f"p{i}" for i in range(100)] + [f"q{i}" for i in range(50)]
sim = {"apps": [{"key": "chaosapp", "secret": "chaos-app-secret", "robot_code": "chaosapp"}],
       "users": [{"mobile": f"139{i:08d}", "userid": f"ding-{u}"} for i, u in enumerate(people)],
       "robots": [{"name": f"robot{i}", "token": f"{i + 1:064x}", "secret": f"SEC{i + 1:060x}"} for i in range(5)],
       "throttle_limit": 20, "throttle_window_ms": 6000, "throttle_penalty_ms": 60000}
json.dump(sim, open(f"{work}/sim.json", "w"))
receivers = {u: f"ding-{u}" for u in people} | {f"robot{i}": f"robot{i}" for i in range(5)}
json.dump(receivers, open(f"{work}/receivers.json", "w"))
with open(f"{work}/users.jsonl", "w") as f:
    for i, u in enumerate(people):
        f.write(json.dumps({"username": u, "telephone": f"139{i:08d}"}) + "\n")
    for i in range(5):
        f.write(json.dumps({"username": f"robot{i}", "qq": f"{i + 1:064x}", "wx_userid": f"SEC{i + 1:060x}"}) + "\n")
PY

if [ "$BACKEND" = postgres ]; then
  pg=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
  pg_name="dc_chaos_$$"
  psql "$pg" -qc "CREATE DATABASE $pg_name" >/dev/null
  export DATABASE_URL="${pg%/*}/$pg_name"
else
  export DATABASE_URL="sqlite://$work/chaos.db"
fi
# Rows of a query as a JSON array, on either backend.
sql_json() {
  if [ "$BACKEND" = postgres ]; then
    psql "$DATABASE_URL" -Atc "SELECT coalesce(json_agg(t), '[]') FROM ($1) t"
  else
    python3 -c 'import json, sqlite3, sys
c = sqlite3.connect(sys.argv[1]); c.row_factory = sqlite3.Row
print(json.dumps([dict(r) for r in c.execute(sys.argv[2])]))' "$work/chaos.db" "$1"
  fi
}
queued() { sql_json "SELECT count(*) AS n FROM deliveries WHERE status = 'queued'" | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["n"])'; }

export DINGTALK_OAPI_BASE=http://127.0.0.1:$SIM_PORT DINGTALK_API_BASE=http://127.0.0.1:$SIM_PORT
export DING_CHANNEL_LOG=warn DING_CHANNEL_CONFIG="" DINGTALK_TIMEOUT_MS=$TIMEOUT_MS DING_CHANNEL_LEASE_S=$LEASE_S
# Retries sooner than in production (0.5 s doubling up to 15 s instead of 2 s up to 5 min), so
# the queue drains within the run. The app's call budget is lifted: the load is the point here,
# not DingTalk's per-app limits (the simulator has none).
export DING_CHANNEL_RETRY_BASE_MS=500 DING_CHANNEL_RETRY_CAP_S=15 DING_CHANNEL_APP_QPS=500 DING_CHANNEL_APP_QPM=30000
"$bin" simulator --port "$SIM_PORT" --config "$work/sim.json" >"$work/simulator.log" 2>&1 &
sim_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$SIM_PORT/_sim/stats" >/dev/null && break; sleep 0.1; done
"$bin" channels sync >/dev/null
"$bin" channels conf send_dingtalk ding_app_key=chaosapp ding_app_secret=chaos-app-secret >/dev/null
"$bin" channels conf send_dingbot robot_rate_window_s=6 >/dev/null
"$bin" apps add chaos --secret chaos-secret --replace >/dev/null
"$bin" users import "$work/users.jsonl" >/dev/null
python3 - "$FAULTS" "$TIMEOUT_MS" >"$work/faults.json" <<'PY'
import json, sys
f, timeout = float(sys.argv[1]), int(sys.argv[2])
print(json.dumps({"error_rate": 0.4 * f, "http_status": 503, "timeout_rate": 0.2 * f, "timeout_ms": 2 * timeout + 1000,
                  "drop_before_rate": 0.2 * f, "drop_after_rate": 0.2 * f}))
PY
set_faults=$(curl -s "http://127.0.0.1:$SIM_PORT/_sim/faults" -H 'content-type: application/json' -d @"$work/faults.json")
case "$set_faults" in '{"faults"'*) ;; *) echo "the simulator refused the faults (CHAOS_FAULTS=$FAULTS): $set_faults"; exit 2 ;; esac

start_server() { # slot
  local port=$((PORT + $1))
  DING_CHANNEL_BIND=127.0.0.1:$port "$bin" serve >>"$work/server-$1.log" 2>&1 &
  pids[$1]=$!
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return; sleep 0.1; done
  echo "server $1 did not start"; tail -20 "$work/server-$1.log"; exit 1
}
urls=()
for s in $(seq 0 $((servers - 1))); do
  start_server "$s"
  urls+=(--url "http://127.0.0.1:$((PORT + s))/api/c/compapi/cmsi/send_msg/")
done

# The kills: one in each equal slice of the load, at a drawn moment; a drawn pause before the
# restart. Lines: at_ms (from the load's start) slot pause_ms.
python3 - "$SEED" "$SENDS" "$RATE" "$KILLS" "$servers" >"$work/schedule" <<'PY'
import random, sys
seed, sends, rate, kills, servers = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
r, span = random.Random(seed), sends / rate * 1000 / kills
for j in range(kills):
    print(int((j + r.uniform(0.1, 0.9)) * span), j % servers, r.randint(200, 2000))
PY
load_ms=$((SENDS * 1000 / ${RATE%.*}))
echo "== chaos ($BACKEND): $SENDS sends at $RATE/s (~$((load_ms / 1000)) s), $servers server(s), $KILLS kills, faults $FAULTS of DingTalk's requests"
auth='X-Bkapi-Authorization: {"bk_app_code":"chaos","bk_app_secret":"chaos-secret"}'
body() { # receivers
  printf '{"msg_type":"ding","receiver__username":"%s","title":"alert {i%%50}","content":"chaos-{i}: disk at 95%% on host-{i%%37}"}' "$1"
}
started=$(now_ms)
"$target/release/examples/loadgen" -n "$SENDS" -c 64 --rate "$RATE" --header "$auth" "${urls[@]}" \
  --key "chaos-$SEED-{i}" --retry-for 180 --answers "$work/answers.jsonl" \
  --body "$(body 'robot{i%5}')" --body "$(body 'p{i%100}')" \
  --body "$(body 'p{i%100},robot{i%5}')" --body "$(body 'p{i%100},q{i%50},robot{i%5}')" \
  >"$work/loadgen.json" &
load=$!

echo "[" >"$work/kills.json"
sep=""
while read -r at slot pause; do
  wait_ms=$((started + at - $(now_ms)))
  [ "$wait_ms" -gt 0 ] && sleep "$(printf '%d.%03d' $((wait_ms / 1000)) $((wait_ms % 1000)))"
  killed=$(now_ms)
  { kill -KILL "${pids[$slot]}" && wait "${pids[$slot]}"; } 2>/dev/null || true # (bash would report the kill)
  echo "  kill at +$(((killed - started) / 1000)).$(((killed - started) % 1000 / 100)) s: server $slot (SIGKILL), restarted after ${pause} ms"
  printf '%s{"at_ms": %s, "server": %s}\n' "$sep" "$killed" "$slot" >>"$work/kills.json"
  sep=","
  sleep "$(printf '%d.%03d' $((pause / 1000)) $((pause % 1000)))"
  start_server "$slot"
done <"$work/schedule"
echo "]" >>"$work/kills.json"
wait "$load"
ended=$(now_ms)
echo "  load done in $(((ended - started) / 1000)) s: $(cat "$work/loadgen.json")"

# The queue drains: retries (at most 15 s apart) and, on PostgreSQL, a dead server's claims
# once their lease ran out.
deadline=$((ended + (LEASE_S + 240) * 1000))
while [ "$(queued)" != 0 ] && [ "$(now_ms)" -lt "$deadline" ]; do sleep 1; done
drained=$(now_ms)
[ "$(queued)" = 0 ] || drained=null
curl -sf "http://127.0.0.1:$SIM_PORT/_sim/messages" >"$work/messages.json"
curl -sf "http://127.0.0.1:$SIM_PORT/_sim/stats" >"$work/stats.json"
for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
pids=()
sql_json "SELECT id, message_id, receiver, status, attempts, last_error FROM deliveries" >"$work/deliveries.json"
sql_json "SELECT delivery_id, at, outcome, code FROM delivery_attempts" >"$work/attempts.json"
sql_json "SELECT id, body FROM messages" >"$work/db_messages.json"
# A copy counts as the kill's when the kill came within one round of DingTalk calls (the
# rest of its task's calls) and 2 s more (recording the outcome) after DingTalk received it.
cat >"$work/meta.json" <<JSON
{"backend": "$BACKEND", "seed": $SEED, "sends": $SENDS, "rate": $RATE, "window_ms": $((4 * TIMEOUT_MS + 2000)),
 "load_started_ms": $started, "load_ended_ms": $ended, "drained_ms": $drained,
 "throttle_window_ms": 6000, "max_attempts": 20, "max_calls_per_delivery": 3}
JSON
python3 scripts/chaos_check.py "$work"
