#!/usr/bin/env bash
# The database goes away, for real: a release server on PostgreSQL under steady load while
# PostgreSQL is stopped for a while and started again.
#
#   scripts/db-outage.sh [RATE] [SECONDS] [OUTAGE_S]
#
# RATE sends per second (default 20, each to a person and a robot) for SECONDS (default 60);
# PostgreSQL is stopped 15 s in, for OUTAGE_S seconds (default 20). Reports the answers by code
# before, during and after the outage, the longest answer during it, how long after PostgreSQL
# is back the server takes sends again (and /readyz says ready), and whether every accepted
# message was delivered, once. Exits non-zero when one was lost or sent twice.
#
# The database: TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test), stopped and
# started with DB_STOP and DB_START (default `pg_ctlcluster 15 main stop -m fast` and
# `pg_ctlcluster 15 main start`). CAUTION: that stops the machine's PostgreSQL for everyone.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-20}
SECONDS_=${2:-60}
OUTAGE_S=${3:-20}
DB_STOP=${DB_STOP:-pg_ctlcluster 15 main stop -m fast}
DB_START=${DB_START:-pg_ctlcluster 15 main start}
SIM_PORT=${SIM_PORT:-18793}
PORT=${PORT:-18794}
pg=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}

cargo build --release --quiet --features postgres --bin ding-channel
bin=${CARGO_TARGET_DIR:-target}/release/ding-channel
work=$(mktemp -d)
name="dc_outage_$$"
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  [ -n "${KEEP_LOGS:-}" ] && cp "$work"/*.log "$KEEP_LOGS"/ 2>/dev/null
  psql "$pg" -qc "DROP DATABASE IF EXISTS $name WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
sim = {"apps": [{"key": "outageapp", "secret": "outage-app-secret", "robot_code": "outageapp"}],
       "users": [{"mobile": f"139{i:08d}", "userid": f"ding-p{i}"} for i in range(50)],
       "robots": [{"name": f"robot{i}", "token": f"{i:064x}", "secret": f"SEC{i:060x}"} for i in range(5)],
       "throttle_limit": 1000000000, "throttle_window_ms": 60000, "throttle_penalty_ms": 600000}
json.dump(sim, open(f"{work}/sim.json", "w"))
with open(f"{work}/users.jsonl", "w") as f:
    for i in range(50):
        f.write(json.dumps({"username": f"p{i}", "telephone": f"139{i:08d}"}) + "\n")
    for i in range(5):
        f.write(json.dumps({"username": f"robot{i}", "qq": f"{i:064x}", "wx_userid": f"SEC{i:060x}"}) + "\n")
PY

psql "$pg" -qc "CREATE DATABASE $name" >/dev/null
export DATABASE_URL="${pg%/*}/$name"
export DINGTALK_OAPI_BASE=http://127.0.0.1:$SIM_PORT DINGTALK_API_BASE=http://127.0.0.1:$SIM_PORT
export DING_CHANNEL_LOG=warn DING_CHANNEL_CONFIG="" DING_CHANNEL_APP_QPS=10000 DING_CHANNEL_APP_QPM=600000
$bin simulator --port "$SIM_PORT" --config "$work/sim.json" >"$work/simulator.log" 2>&1 &
pids+=($!)
$bin channels sync >/dev/null
$bin channels conf send_dingtalk ding_app_key=outageapp ding_app_secret=outage-app-secret >/dev/null
$bin apps add outage --secret outage-secret --replace >/dev/null
$bin users import "$work/users.jsonl" >/dev/null
DING_CHANNEL_BIND=127.0.0.1:$PORT $bin serve >"$work/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done

echo "== $RATE sends/s for $SECONDS_ s; PostgreSQL stopped 15 s in for $OUTAGE_S s ($DB_STOP)"
python3 - "$PORT" "$RATE" "$SECONDS_" "$OUTAGE_S" "$DB_STOP" "$DB_START" "$work" <<'PY'
import collections, json, shlex, subprocess, sys, threading, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
port, rate, seconds, outage, stop, start, work = sys.argv[1:]
rate, seconds, outage = int(rate), int(seconds), float(outage)
base = f"http://127.0.0.1:{port}"
auth = '{"bk_app_code":"outage","bk_app_secret":"outage-secret"}'
t0 = time.monotonic()
marks = {}

def db_cycle():
    time.sleep(15)
    marks["stop"] = time.monotonic() - t0
    subprocess.run(shlex.split(stop), check=True)
    marks["stopped"] = time.monotonic() - t0
    time.sleep(outage)
    marks["start"] = time.monotonic() - t0
    subprocess.run(shlex.split(start), check=True)
    marks["back"] = time.monotonic() - t0  # the start command returned

ready = []  # (t, status)
def readiness():
    while time.monotonic() - t0 < seconds + 5:
        try:
            status = urllib.request.urlopen(f"{base}/readyz", timeout=5).status
        except urllib.error.HTTPError as e:
            status = e.code
        except Exception:
            status = 0
        ready.append((time.monotonic() - t0, status))
        time.sleep(0.1)

def send(i):
    body = {"msg_type": "ding", "receiver__username": f"p{i % 50},robot{i % 5}",
            "title": f"outage {i}", "content": f"outage {i} host-{i} disk at 95%"}
    req = urllib.request.Request(f"{base}/api/c/compapi/cmsi/send_msg/", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "X-Bkapi-Authorization": auth})
    sent = time.monotonic() - t0
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            env = json.load(r)
        code, msg = env["code"], env["message"]
        mid = (env.get("data") or {}).get("message_id")
    except Exception as e:
        code, msg, mid = -1, f"no answer: {e}", None
    return i, sent, time.monotonic() - t0, code, msg, mid

threading.Thread(target=db_cycle, daemon=True).start()
threading.Thread(target=readiness, daemon=True).start()
answers = []
with ThreadPoolExecutor(64) as pool:
    futures = []
    for i in range(rate * seconds):
        at = i / rate
        time.sleep(max(0, at - (time.monotonic() - t0)))
        futures.append(pool.submit(send, i))
    answers = [f.result() for f in futures]
json.dump({"marks": marks, "ready": ready, "answers": answers}, open(f"{work}/run.json", "w"))

down, back = marks["stop"], marks["back"]
def phase(sent):
    return "before" if sent < down else "during" if sent < back else "after"
table = collections.defaultdict(collections.Counter)
slowest = collections.defaultdict(float)
for i, sent, done, code, msg, mid in answers:
    key = f"{code}" if code == 0 else f"{code} {msg[:110]}"
    table[phase(sent)][key] += 1
    slowest[phase(sent)] = max(slowest[phase(sent)], done - sent)
print(f"PostgreSQL stopped at {down:.1f} s (stop took {marks['stopped'] - down:.1f} s), "
      f"started at {marks['start']:.1f} s (the command returned at {back:.1f} s)")
for p in ("before", "during", "after"):
    print(f"  {p:6}: {sum(table[p].values())} sends, longest answer {slowest[p] * 1000:.0f} ms: "
          + ", ".join(f"{n} × {k}" for k, n in table[p].most_common()))
refused = [a for a in answers if a[3] != 0]
first_refused = min((a[1] for a in refused), default=None)
# PostgreSQL may take connections before its start command returns: measured from both.
taken_again = min((a[2] for a in answers if a[3] == 0 and a[1] >= marks["start"]), default=None)
ready_again = min((t for t, s in ready if t >= marks["start"] and s == 200), default=None)
unready = [t for t, s in ready if down <= t < back and s != 200]
if first_refused is not None:
    print(f"first send refused {first_refused - down:.2f} s after the stop began; /readyz 503 from {min(unready, default=float('nan')) - down:.2f} s")
if taken_again is not None:
    print(f"sends taken again {taken_again - marks['start']:.2f} s after the start command began "
          f"({taken_again - back:+.2f} s from its return); /readyz ready "
          f"{(ready_again or float('nan')) - marks['start']:.2f} s after it began")
PY

depth() { curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^ding_channel_queue_depth/{print $2}'; }
waited=0
until [ "$(depth)" = "0" ] || [ $waited -ge 1200 ]; do sleep 0.1; waited=$((waited + 1)); done
echo "queue drained $((waited / 10)) s after the load"
curl -s "http://127.0.0.1:$SIM_PORT/_sim/messages" >"$work/messages.json"
grep -E "ERROR|WARN" "$work/server.log" | sed -E 's/^[^ ]+ +//' | cut -c1-160 | sort | uniq -c | sort -rn | head -12
python3 - "$work" <<'PY'
import collections, json, re, sys
work = sys.argv[1]
run, msgs = json.load(open(f"{work}/run.json")), json.load(open(f"{work}/messages.json"))
got = collections.Counter()
for m in msgs:
    if m["api"] == "robot_send":  # one message, or a digest of several
        body = m["body"]
        text = body["text"]["content"] if body["msgtype"] == "text" else body["markdown"]["text"]
        for n in set(re.findall(r"outage (\d+) host", text)):
            got[(int(n), m["target"])] += 1
    else:
        for n in set(re.findall(r"outage (\d+) host", json.dumps(m["body"]))):
            for u in m["user_ids"]:
                got[(int(n), u)] += 1
accepted = [a[0] for a in run["answers"] if a[3] == 0]
expected = {(i, f"robot{i % 5}") for i in accepted} | {(i, f"ding-p{i % 50}") for i in accepted}
lost = expected - set(got)
dup = [k for k in expected if got[k] > 1]
extra = {k for k in got if k[0] not in set(accepted)}
print(f"accepted {len(accepted)} messages: {len(expected)} deliveries expected, {len(expected) - len(lost)} delivered, "
      f"{len(lost)} lost, {len(dup)} sent twice; {len(extra)} deliveries of messages not accepted")
sys.exit(1 if lost or dup else 0)
PY
