#!/usr/bin/env bash
# The persistent path, Leveret against RabbitMQ on this machine, alternating
# L, R, L, R: 1 KiB persistent messages to a durable queue with 1000
# confirms outstanding (fill), the same with a consumer acking as it goes
# (both), and draining a filled queue (drain). Prints messages per second and
# each broker's CPU per message (from /proc/PID/stat).
#
#   bench/persistent.sh [N]        # N messages per run (default 200000)
#
# Needs RabbitMQ on 127.0.0.1:5672 (guest/guest): apt-get install -y
# rabbitmq-server && rabbitmq-server -detached. The full load tool and
# side-by-side benchmark are issue 6; this is the measurement behind the
# durability work (issue 3).
set -euo pipefail
N=${1:-200000}
cd "$(dirname "$0")/.."
cargo build --release --bin leveret --example persistent >/dev/null 2>&1
RP=$(pgrep -f beam.smp | head -1) || { echo "RabbitMQ is not running" >&2; exit 1; }
DATA=$(mktemp -d)
LOG=$DATA.log
target/release/leveret serve --listen 127.0.0.1:0 --mgmt-listen 127.0.0.1:0 --stream-listen 127.0.0.1:0 --data-dir "$DATA" 2>"$LOG" &
LP=$!
trap 'kill $LP 2>/dev/null; wait $LP 2>/dev/null; rm -rf "$DATA" "$LOG"' EXIT
for _ in $(seq 50); do grep -q accepting "$LOG" && break; sleep 0.1; done
LPORT=$(grep -o 'addr=[0-9.:]*' "$LOG" | head -1 | cut -d: -f2)

cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
run() { # broker-label pid port mode queue
  local c0 c1 out
  c0=$(cpu "$2")
  out=$(target/release/examples/persistent "$4" "amqp://guest:guest@127.0.0.1:$3/%2f" "$5" "$N" 1024)
  c1=$(cpu "$2")
  printf '%-6s %s  broker CPU %d us/msg\n' "$1" "$out" $(( (c1 - c0) * 10000 / N ))
}
for mode in fill both drain; do
  echo "== $mode"
  for round in 1 2; do
    q=bench-$mode-$round-$$
    if [ "$mode" = drain ]; then
      target/release/examples/persistent fill "amqp://guest:guest@127.0.0.1:$LPORT/%2f" "$q" "$N" 1024 >/dev/null
      target/release/examples/persistent fill "amqp://guest:guest@127.0.0.1:5672/%2f" "$q" "$N" 1024 >/dev/null
    fi
    run Leveret "$LP" "$LPORT" "$mode" "$q"
    run RabbitMQ "$RP" 5672 "$mode" "$q"
  done
done
