#!/usr/bin/env bash
# A node with many logs: create N logs (one record each) under a soft open-files limit of
# 1024, then restart it; report create time, restart time (until the address is printed
# and every log is listed), resident memory, open descriptors and disk use, as JSON.
#
# Usage: bash benches/many_logs.sh            (needs target/pyvenv with grpcio, grpcio-tools:
#                                              scripts/test.sh makes it)
# Environment: LOGS [10000]  SOFT_NOFILE [1024]  OUT [target/bench/many_logs.json]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
LOGS="${LOGS:-10000}"
SOFT_NOFILE="${SOFT_NOFILE:-1024}"
OUT="${OUT:-$ROOT/target/bench/many_logs.json}"
PY="$ROOT/target/pyvenv/bin/python"
mkdir -p "$(dirname "$OUT")"
cargo build --release --quiet
WORK="$(mktemp -d "$ROOT/target/many-logs.XXXXXX")"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
"$PY" -m grpc_tools.protoc -Iproto/proto --python_out="$WORK" --grpc_python_out="$WORK" proto/proto/spool/v1/spool.proto

# Start the node in the background; sets PID, ADDR, and UP_S (seconds until it listened).
start_node() {
  local t0 t1
  : >"$WORK/out"
  t0=$(date +%s.%N)
  (ulimit -Sn "$SOFT_NOFILE"; exec target/release/spool serve --data-dir "$WORK/data" --listen 127.0.0.1:0 >"$WORK/out" 2>>"$WORK/err") &
  PID=$!
  until grep -q "spool listening on" "$WORK/out" 2>/dev/null; do sleep 0.01; done
  t1=$(date +%s.%N)
  ADDR=$(sed -n 's/spool listening on //p' "$WORK/out")
  UP_S=$(echo "$t1 - $t0" | bc)
}

stop_node() {
  kill -TERM "$PID"
  wait "$PID" || true
}

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
fds() { ls "/proc/$1/fd" | wc -l; }

start_node
CREATE_S=$(PYTHONPATH="$WORK" "$PY" - "$ADDR" "$LOGS" <<'PY'
import sys, time, grpc
from spool.v1 import spool_pb2 as pb, spool_pb2_grpc as rpc
addr, n = sys.argv[1], int(sys.argv[2])
ch = grpc.insecure_channel(addr)
logs, log = rpc.LogsStub(ch), rpc.LogStub(ch)
t0 = time.time()
for i in range(n):
    name = f"log-{i:05}"
    logs.Create(pb.CreateLogRequest(name=name))
    log.Append(pb.AppendRequest(log=name, records=[name.encode()]))
print(f"{time.time() - t0:.2f}")
PY
)
RSS1=$(rss_kb "$PID"); FDS1=$(fds "$PID")
stop_node
start_node
RESTART_S=$UP_S
LISTED=$(PYTHONPATH="$WORK" "$PY" - "$ADDR" <<'PY'
import sys, grpc
from spool.v1 import spool_pb2 as pb, spool_pb2_grpc as rpc
print(len(rpc.LogsStub(grpc.insecure_channel(sys.argv[1])).List(pb.ListLogsRequest()).logs))
PY
)
RSS2=$(rss_kb "$PID"); FDS2=$(fds "$PID")
DISK_KB=$(du -sk "$WORK/data" | cut -f1)
stop_node
cat >"$OUT" <<JSON
{"commit": "$(git rev-parse --short HEAD)", "logs": $LOGS, "soft_nofile": $SOFT_NOFILE,
 "create_seconds": $CREATE_S, "restart_seconds": $RESTART_S, "listed_after_restart": $LISTED,
 "rss_kb_after_create": $RSS1, "fds_after_create": $FDS1,
 "rss_kb_after_restart": $RSS2, "fds_after_restart": $FDS2, "disk_kb": $DISK_KB}
JSON
cat "$OUT"
