#!/usr/bin/env bash
# Spool over gRPC beside its own storage engine and Redis (appendonly, appendfsync always),
# in one run on the same disk.
#
# 1. cargo build --release
# 2. spool bench storage: 64 writers x 1 record of 1 KiB, fsync (the engine's own figure),
#    and the same with 64 records per append (the shape of the pipelined gRPC run)
# 3. spool bench grpc: pipelined (1 connection, 64 x 64 records in flight), unary (64
#    clients, 1 record each), subscribe (delay from the writer's ack to the subscriber)
# 4. Redis from Debian (installed with apt-get when missing), appendonly yes, appendfsync
#    always, data under target/ on the same disk: redis-benchmark SET 1 KiB with 64 clients,
#    unpipelined and -P 16
# 5. a table and target/bench/grpc_vs_redis.json
#
# Usage: bash benches/grpc_vs_redis.sh
# Environment (defaults in brackets):
#   SECONDS_PER_RUN [10]  measured seconds per spool run; Redis runs are sized to about that
#   IO_BACKEND [std]  BENCH_DIR [target/bench-data]  OUT_DIR [target/bench]  REDIS_PORT [6390]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

S="${SECONDS_PER_RUN:-10}"
IO_BACKEND="${IO_BACKEND:-std}"
BENCH_DIR="${BENCH_DIR:-$ROOT/target/bench-data}"
OUT_DIR="${OUT_DIR:-$ROOT/target/bench}"
REDIS_PORT="${REDIS_PORT:-6390}"
CLIENTS=64
RECORD_BYTES=1024

mkdir -p "$BENCH_DIR" "$OUT_DIR"
STORAGE_JSON="$OUT_DIR/grpc_vs_redis-storage.json"
GRPC_JSON="$OUT_DIR/grpc_vs_redis-grpc.json"
REDIS_DIR="$BENCH_DIR/redis"
RESULT_JSON="$OUT_DIR/grpc_vs_redis.json"

log() { printf '== %s\n' "$*" >&2; }

# --- build -------------------------------------------------------------------------------
log "cargo build --release"
cargo build --release
SPOOL="$ROOT/target/release/spool"
log "data dir: $BENCH_DIR ($(df -P "$BENCH_DIR" | awk 'NR==2 {print $1}'))"

# --- spool -------------------------------------------------------------------------------
log "spool bench storage: $IO_BACKEND, $CLIENTS writers, $RECORD_BYTES B, 1 and 64 records per append, ${S}s each"
"$SPOOL" bench storage --dir "$BENCH_DIR" --backends "$IO_BACKEND" --writers "$CLIENTS" \
    --record-bytes "$RECORD_BYTES" --seconds "$S" --json "$OUT_DIR/grpc_vs_redis-storage-1.json"
"$SPOOL" bench storage --dir "$BENCH_DIR" --backends "$IO_BACKEND" --writers "$CLIENTS" \
    --record-bytes "$RECORD_BYTES" --records-per-append 64 --seconds "$S" \
    --json "$OUT_DIR/grpc_vs_redis-storage-64.json"
python3 - "$OUT_DIR/grpc_vs_redis-storage-1.json" "$OUT_DIR/grpc_vs_redis-storage-64.json" \
    "$STORAGE_JSON" <<'EOF'
import json, sys
runs = json.load(open(sys.argv[1])) + json.load(open(sys.argv[2]))
json.dump(runs, open(sys.argv[3], "w"), indent=2)
EOF

log "spool bench grpc: pipelined,unary,subscribe, $IO_BACKEND, ${S}s each"
"$SPOOL" bench grpc --dir "$BENCH_DIR" --io-backend "$IO_BACKEND" \
    --mode pipelined,unary,subscribe --record-bytes "$RECORD_BYTES" --clients "$CLIENTS" \
    --seconds "$S" --json "$GRPC_JSON"

# --- redis -------------------------------------------------------------------------------
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-benchmark >/dev/null 2>&1; then
    log "installing redis-server and redis-tools"
    if ! apt-get install -y redis-server redis-tools >/dev/null 2>&1; then
        apt-get update >/dev/null
        apt-get install -y redis-server redis-tools >/dev/null
    fi
fi
log "$(redis-server --version)"
if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    echo "something already answers on port $REDIS_PORT: set REDIS_PORT" >&2
    exit 1
fi
rm -rf "$REDIS_DIR"
mkdir -p "$REDIS_DIR"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize no --dir "$REDIS_DIR" \
    --appendonly yes --appendfsync always --save "" --logfile "$REDIS_DIR/redis.log" &
REDIS_PID=$!
stop_redis() {
    if kill -0 "$REDIS_PID" 2>/dev/null; then
        kill "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
    fi
}
trap stop_redis EXIT
for _ in $(seq 100); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
done
redis-cli -p "$REDIS_PORT" config get appendfsync | tr '\n' ' ' >&2; echo >&2

# CPU seconds (user+system) of the Redis server so far.
redis_cpu() {
    python3 - "$REDIS_PID" <<'EOF'
import os, sys
f = open(f"/proc/{sys.argv[1]}/stat").read().rsplit(")", 1)[1].split()
print((int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK"))
EOF
}

# rps of a redis-benchmark --csv output.
csv_rps() {
    python3 - "$1" <<'EOF'
import csv, sys
print(next(csv.DictReader(open(sys.argv[1])))["rps"])
EOF
}

# redis_run NAME EXTRA_ARGS...: a short calibration pass, then a run of about S seconds.
redis_run() {
    local name="$1"
    shift
    local cal="$OUT_DIR/redis-$name-cal.csv" out="$OUT_DIR/redis-$name.csv"
    redis-benchmark -p "$REDIS_PORT" -t set -d "$RECORD_BYTES" -c "$CLIENTS" -n 20000 "$@" --csv >"$cal"
    local n
    n=$(python3 -c "import sys; print(max(20000, int(float(sys.argv[1]) * float(sys.argv[2]))))" \
        "$(csv_rps "$cal")" "$S")
    log "redis-benchmark SET ${RECORD_BYTES} B -c $CLIENTS $* -n $n"
    local c0 c1
    c0=$(redis_cpu)
    redis-benchmark -p "$REDIS_PORT" -t set -d "$RECORD_BYTES" -c "$CLIENTS" -n "$n" "$@" --csv >"$out"
    c1=$(redis_cpu)
    echo "$c0 $c1 $n" >"$OUT_DIR/redis-$name.cpu"
    cat "$out" >&2
}
redis_run unpipelined
redis_run pipelined -P 16
stop_redis
trap - EXIT
AOF_BYTES=$(du -sb "$REDIS_DIR" | cut -f1)
rm -rf "$REDIS_DIR"

# --- report --------------------------------------------------------------------------------
python3 - "$STORAGE_JSON" "$GRPC_JSON" "$OUT_DIR" "$RESULT_JSON" "$S" "$IO_BACKEND" "$AOF_BYTES" <<'EOF'
import csv, json, sys
storage_p, grpc_p, out_dir, result_p, secs, io, aof = sys.argv[1:8]
storage = json.load(open(storage_p))
grpc = {r["mode"]: r for r in json.load(open(grpc_p))}
st1 = next(r for r in storage if r["records_per_append"] == 1)
st64 = next(r for r in storage if r["records_per_append"] == 64)

def redis(name):
    row = next(csv.DictReader(open(f"{out_dir}/redis-{name}.csv")))
    c0, c1, n = map(float, open(f"{out_dir}/redis-{name}.cpu").read().split())
    return {"rps": float(row["rps"]), "requests": int(n),
            "p50_us": float(row["p50_latency_ms"]) * 1e3,
            "p99_us": float(row["p99_latency_ms"]) * 1e3,
            "max_us": float(row["max_latency_ms"]) * 1e3,
            "server_cpu_s": round(c1 - c0, 3),
            # /proc ticks are 10 ms: fine over seconds of load.
            "server_cpu_s_per_million": round((c1 - c0) * 1e6 / n, 3)}
r_un, r_pi = redis("unpipelined"), redis("pipelined")

def ratio(a, b):
    return round(a / b, 3) if b else None

pl, un, sub = grpc.get("pipelined"), grpc.get("unary"), grpc.get("subscribe")
res = {
    "seconds": float(secs), "io_backend": io, "record_bytes": 1024, "clients": 64,
    "storage_engine": {"records_per_append_1": st1, "records_per_append_64": st64},
    "grpc": grpc,
    "redis": {"set_c64": r_un, "set_c64_p16": r_pi, "aof_bytes": int(aof)},
    "ratios": {
        "grpc_pipelined_vs_storage_rpa1": ratio(pl["records_per_s"], st1["records_per_s"]) if pl else None,
        "grpc_pipelined_vs_storage_rpa64": ratio(pl["records_per_s"], st64["records_per_s"]) if pl else None,
        "grpc_unary_vs_storage_rpa1": ratio(un["records_per_s"], st1["records_per_s"]) if un else None,
        "grpc_unary_vs_redis_c64": ratio(un["records_per_s"], r_un["rps"]) if un else None,
        "grpc_pipelined_vs_redis_c64_p16": ratio(pl["records_per_s"], r_pi["rps"]) if pl else None,
    },
    "targets": {"grpc_pipelined_vs_storage": 0.8, "grpc_unary_vs_redis": 1.0,
                "subscribe_delay_p99_us": 2000},
}
json.dump(res, open(result_p, "w"), indent=2)

def lat(r):
    l = r["latency_us"]
    return l["p50"], l["p99"]
rows = []
rows.append((f"spool storage engine ({st1['backend']}, 64 writers x 1 rec)", st1["records_per_s"], *lat(st1), "", ""))
rows.append((f"spool storage engine ({st64['backend']}, 64 writers x 64 rec)", st64["records_per_s"], *lat(st64), "", ""))
if pl:
    rows.append(("spool gRPC pipelined (1 conn, 64 x 64 rec)", pl["records_per_s"], *lat(pl),
                 f"{res['ratios']['grpc_pipelined_vs_storage_rpa1']:.2f} of engine x1 / "
                 f"{res['ratios']['grpc_pipelined_vs_storage_rpa64']:.2f} of engine x64", ">= 0.8"))
rows.append(("redis SET -c 64 -P 16", r_pi["rps"], r_pi["p50_us"], r_pi["p99_us"],
             f"spool pipelined / redis = {res['ratios']['grpc_pipelined_vs_redis_c64_p16']:.2f}" if pl else "", ""))
if un:
    rows.append((f"spool gRPC unary ({un['concurrency']} clients, {un['connections']} conn)", un["records_per_s"], *lat(un),
                 f"{res['ratios']['grpc_unary_vs_storage_rpa1']:.2f} of engine x1", ""))
rows.append(("redis SET -c 64", r_un["rps"], r_un["p50_us"], r_un["p99_us"],
             f"spool unary / redis = {res['ratios']['grpc_unary_vs_redis_c64']:.2f}" if un else "", ">= 1.0"))
print()
print(f"1 KiB records, fsync before ack, {secs}s per run, io backend {io}; Redis appendonly yes, appendfsync always")
print(f"{'':<46} {'rec/s':>10} {'p50_us':>8} {'p99_us':>8}  {'ratio':<40} target")
for name, rps, p50, p99, note, tgt in rows:
    print(f"{name:<46} {rps:>10.0f} {p50:>8.0f} {p99:>8.0f}  {note:<40} {tgt}")
if sub:
    d, l = sub["subscribe"], sub["latency_us"]
    print(f"spool subscribe @ {d['rate_per_s']:.0f}/s: writer ack -> subscriber p50 {l['p50']:.0f} us, "
          f"p99 {l['p99']:.0f} us, p99.9 {l['p999']:.0f} us, max {l['max']:.0f} us (target p99 < 2000 us); "
          f"{d['seen_before_ack']} of {d['acked']} seen before the ack, {d['missing']} missing")
cpu = []
for name, r in (("pipelined", pl), ("unary", un)):
    if r:
        cpu.append(f"spool {name} server {r['server_cpu_s_per_million_records']} + client "
                   f"{r['client_cpu_s_per_million_records']} CPU s per 1M records")
print("; ".join(cpu))
print(f"redis server CPU s per 1M SETs: {r_un['server_cpu_s_per_million']} (-c 64), "
      f"{r_pi['server_cpu_s_per_million']} (-P 16); redis-benchmark's own CPU not measured")
print(f"wrote {result_p}")
EOF
