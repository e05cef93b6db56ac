#!/usr/bin/env bash
# Unary one-record appends measured from the server's side (issue 20, item 1): h2load, a
# light C HTTP/2 client (Debian nghttp2-client), sends real gRPC Append requests
# (length-prefixed protobuf, content-type application/grpc, te: trailers) to a `spool
# serve` over 1 and over 64 connections, 64 in flight either way; beside it, in the same
# run, redis-benchmark SET with appendfsync always (64 clients, 1 KiB). Server CPU per
# request from the server process's /proc stat (user + system) over the measured run.
#
# Usage: bash benches/unary_h2load.sh
# Environment (defaults in brackets):
#   REQUESTS [200000]  RECORD_BYTES [1024]  RUNS [3]  BUILD [1]
#   BIN_DIR [${CARGO_TARGET_DIR:-target}/release]  OUT_DIR [target/bench]  PORT [7460]
#   REDIS_PORT [6391]  RUST_SECONDS [10]
#   BASE_BIN_DIR [unset]: a directory holding another build's `spool`, measured in the same
#   runs (h2load shapes only) for an A/B
# Output: a table on stdout, OUT_DIR/unary_h2load.json (every run; medians; a `plot`
# entry for `spool-loadgen plot`) and OUT_DIR/unary_h2load_latency.json. Beside h2load, the
# Rust client with its pool (`spool bench grpc --mode unary --clients 64`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
REQUESTS="${REQUESTS:-200000}"
RECORD_BYTES="${RECORD_BYTES:-1024}"
RUNS="${RUNS:-3}"
BIN_DIR="${BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}"
OUT_DIR="${OUT_DIR:-$ROOT/target/bench}"
PORT="${PORT:-7460}"
REDIS_PORT="${REDIS_PORT:-6391}"
RUST_SECONDS="${RUST_SECONDS:-10}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/spool-h2load.XXXXXX")"
mkdir -p "$OUT_DIR"
RESULT="$OUT_DIR/unary_h2load.json"
log() { printf '== %s\n' "$*" >&2; }

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

need() {
  command -v "$1" >/dev/null && return
  log "installing $2"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }
}
need h2load nghttp2-client
need redis-server redis-server

if [ "${BUILD:-1}" = 1 ]; then
  log "cargo build --release -p spool"
  cargo build --release -p spool >&2
fi
SPOOL="$BIN_DIR/spool"

# One gRPC message: flag 0, u32 big-endian length, AppendRequest{log: "h2", records: [N
# bytes]} (field 1 string, field 2 bytes; ack 0 = the node's default).
python3 - "$WORK/append.bin" "$RECORD_BYTES" <<'PY'
import struct, sys
path, n = sys.argv[1], int(sys.argv[2])
def varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F; v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v: return bytes(out)
msg = b"\x0a" + varint(2) + b"h2" + b"\x12" + varint(n) + b"r" * n
open(path, "wb").write(b"\x00" + struct.pack(">I", len(msg)) + msg)
PY

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

# One h2load run against a fresh node: prints "req_per_s cpu_us_per_req".
spool_run() {
  local conns="$1" streams="$2" dir="$WORK/data-$RANDOM" SPOOL="${3:-$SPOOL}"
  "$SPOOL" serve --data-dir "$dir" --listen "127.0.0.1:$PORT" >"$WORK/serve.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 100); do "$SPOOL" --addr "127.0.0.1:$PORT" status >/dev/null 2>&1 && break; sleep 0.1; done
  "$SPOOL" --addr "127.0.0.1:$PORT" logs create h2 >/dev/null
  # Warm-up, then the measured run.
  h2load -n 2000 -c "$conns" -m "$streams" --data="$WORK/append.bin" \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://127.0.0.1:$PORT/spool.v1.Log/Append" >/dev/null
  local before out after
  before=$(cpu_ticks "$pid")
  out=$(h2load -n "$REQUESTS" -c "$conns" -m "$streams" --data="$WORK/append.bin" \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://127.0.0.1:$PORT/spool.v1.Log/Append")
  after=$(cpu_ticks "$pid")
  # HTTP 200 says nothing of grpc-status (a trailer h2load does not read): the log must
  # hold every request's record.
  local end
  end=$("$SPOOL" --addr "127.0.0.1:$PORT" status --json |
    python3 -c 'import json,sys; print(next(l["end_offset"] for l in json.load(sys.stdin)["logs"] if l["name"] == "h2"))')
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
  [ "$end" = "$((REQUESTS + 2000))" ] || { log "the log holds $end records, not $((REQUESTS + 2000)): appends failed"; exit 1; }
  local rps ok
  rps=$(echo "$out" | awk '/^finished in/ {print $4}')
  ok=$(echo "$out" | awk '/^status codes:/ {print $3}')
  [ "$ok" = "$REQUESTS" ] || { echo "$out" >&2; log "not every request got 200"; exit 1; }
  echo "$rps $(awk -v t="$((after - before))" -v k="$TICK" -v n="$REQUESTS" 'BEGIN {printf "%.1f", t / k * 1e6 / n}')"
}

redis_run() {
  local dir="$WORK/redis-$RANDOM"
  mkdir -p "$dir"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$dir" --save '' \
    --appendonly yes --appendfsync always >"$WORK/redis.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  local before out after
  before=$(cpu_ticks "$pid")
  # CSV: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",
  # "p99_latency_ms","max_latency_ms".
  out=$(redis-benchmark -p "$REDIS_PORT" -c 64 -d "$RECORD_BYTES" -n "$REQUESTS" -t set --csv)
  after=$(cpu_ticks "$pid")
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || kill "$pid"
  wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
  local row
  row=$(echo "$out" | tr -d '"' | awk -F, '$1 == "SET" {print $2, $5 * 1000, $7 * 1000}')
  set -- $row
  echo "$1 $(awk -v t="$((after - before))" -v k="$TICK" -v n="$REQUESTS" 'BEGIN {printf "%.1f", t / k * 1e6 / n}') $2 $3"
}

# The Rust client with its pool (one connection per core), 64 concurrent unary callers,
# against a node of its own: "req_per_s server_cpu_us_per_req p50_us p99_us".
rust_run() {
  "$SPOOL" bench grpc --mode unary --clients 64 --io-backend std --seconds "$RUST_SECONDS" \
    --dir "$WORK" --record-bytes "$RECORD_BYTES" --json "$WORK/rust.json" >/dev/null 2>&1
  python3 - "$WORK/rust.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))[0]
l = r["latency_us"]
print(r["requests_per_s"], r["server_cpu_s_per_million_records"], l["p50"], l["p99"])
PY
}

log "commit $(git rev-parse --short HEAD), $RUNS runs of $REQUESTS requests, ${RECORD_BYTES} B, load $(cut -d' ' -f1-3 /proc/loadavg)"
declare -A results
for r in $(seq "$RUNS"); do
  # With a base build, each of its shapes runs right beside the same shape of this one.
  results[one,$r]=$(spool_run 1 64)
  [ -n "${BASE_BIN_DIR:-}" ] && results[base_one,$r]=$(spool_run 1 64 "$BASE_BIN_DIR/spool")
  results[many,$r]=$(spool_run 64 1)
  [ -n "${BASE_BIN_DIR:-}" ] && results[base_many,$r]=$(spool_run 64 1 "$BASE_BIN_DIR/spool")
  results[redis,$r]=$(redis_run)
  results[rust,$r]=$(rust_run)
  [ -n "${BASE_BIN_DIR:-}" ] && log "run $r: base 1 conn ${results[base_one,$r]}, 64 conns ${results[base_many,$r]}"
  log "run $r: 1 conn ${results[one,$r]}, 64 conns ${results[many,$r]}, redis ${results[redis,$r]}, rust client ${results[rust,$r]} (req/s, server CPU us/req[, p50 p99 us])"
done

kinds="one many redis rust"
[ -n "${BASE_BIN_DIR:-}" ] && kinds="$kinds base_one base_many"
for k in $kinds; do
  for r in $(seq "$RUNS"); do echo "$k ${results[$k,$r]}"; done
done >"$WORK/results.txt"
python3 - "$RESULT" "$(git rev-parse --short HEAD)" "$RECORD_BYTES" "$WORK/results.txt" <<'PY'
import datetime, json, statistics, sys
NOW = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
out, commit, nbytes, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
lines = [l.split() for l in open(path) if l.strip()]
rows = {}
for kind, *vals in lines:
    rows.setdefault(kind, []).append([float(v) for v in vals])
med = {k: [statistics.median(r[i] for r in v) for i in range(len(v[0]))] for k, v in rows.items()}
names = {"one": "spool, h2load, 1 connection x 64 streams",
         "many": "spool, h2load, 64 connections x 1 stream",
         "redis": "redis SET appendfsync always, 64 clients",
         "rust": "spool, Rust client pool, 64 callers"}
print(f"{'shape':<44} {'req/s (median)':>15} {'CPU us/req':>11} {'vs redis':>9}")
for k in ("one", "many", "redis", "rust"):
    r, c = med[k][0], med[k][1]
    print(f"{names[k]:<44} {r:>15,.0f} {c:>11.1f} {r / med['redis'][0]:>9.2f}")
print(f"Rust client pool vs h2load 64 connections: {med['rust'][0] / med['many'][0]:.2f}")
for k in ("one", "many"):
    if f"base_{k}" in med:
        b = med[f"base_{k}"]
        print(f"{names[k]}: this build / base build: {med[k][0] / b[0]:.2f} req/s, "
              f"{med[k][1] / b[1]:.2f} CPU/req (base {b[0]:,.0f} req/s, {b[1]:.1f} us)")
plot = {"title": f"Unary one-record appends, {nbytes} B, fsync before ack (medians)",
        "unit": "requests/s",
        "series": {"spool h2load 1 conn": med["one"][0], "spool h2load 64 conns": med["many"][0],
                   "spool Rust client pool": med["rust"][0], "redis SET always": med["redis"][0]}}
lat = {"title": f"Unary append latency, 64 in flight, {nbytes} B (medians)", "unit": "us",
       "percentiles": {"spool Rust client": {"p50": med["rust"][2], "p99": med["rust"][3]},
                       "redis-benchmark": {"p50": med["redis"][2], "p99": med["redis"][3]}}}
json.dump({"commit": commit, "date": NOW, "record_bytes": nbytes, "runs": rows, "medians": med, "plot": plot},
          open(out, "w"), indent=1)
json.dump({"commit": commit, "date": NOW, "record_bytes": nbytes, "plot": lat},
          open(out.replace(".json", "_latency.json"), "w"), indent=1)
print(f"\nwrote {out}")
PY
