#!/usr/bin/env bash
# Measures the DingTalk simulator alone: robot/send (unsigned robot, throttle off) and getbymobile
# at concurrency C, so we know it is not the bottleneck of the delivery benchmarks.
# Usage: scripts/bench-simulator.sh [N] [C]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
C=${2:-32}
PORT=${SIM_PORT:-18790}
cargo build --release --quiet --bin ding-channel --example loadgen
work=$(mktemp -d)
trap 'kill $sim 2>/dev/null || true; rm -rf "$work"' EXIT
TOKEN=$(printf 'b%.0s' $(seq 64))
cat > "$work/sim.json" <<JSON
{"apps": [{"key": "benchapp", "secret": "bench-secret", "robot_code": "benchapp"}],
 "users": [{"mobile": "13800000001", "userid": "u1"}],
 "robots": [{"name": "bench-robot", "token": "$TOKEN", "secret": null}],
 "throttle_limit": 1000000000}
JSON
target/release/ding-channel simulator --port "$PORT" --config "$work/sim.json" > "$work/sim.log" &
sim=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/_sim/stats" >/dev/null && break; sleep 0.1; done

echo "robot/send, $N requests, concurrency $C:"
target/release/examples/loadgen --url "http://127.0.0.1:$PORT/robot/send?access_token=$TOKEN" \
  --body '{"msgtype":"text","text":{"content":"alert {i}"}}' -n "$N" -c "$C"
echo "simulator peak RSS: $(grep VmHWM /proc/$sim/status | awk '{print $2, $3}')"
curl -s "http://127.0.0.1:$PORT/_sim/stats"; echo
