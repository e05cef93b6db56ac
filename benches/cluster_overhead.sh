#!/usr/bin/env bash
# The steady-state cost of `--cluster` (issue 18, Targets: under 3%): the same load against
# nodes without and with a coordinator, in one run, A and B alternating, medians of 3.
#
# Shapes (fresh data directories and a fresh cluster name for every run):
#   single    one node; B: a one-node cluster on etcd. Ack async.
#   semisync  primary + 1 replica (--replica-of); B: two nodes with --cluster, the leader
#             loaded. Ack semi-sync:1.
# Load: `spool-loadgen spool-append` (`spool bench grpc` starts its own servers, so it
# cannot load a node started with --cluster): --clients unary appends of one record of
# --record-bytes in flight, over one HTTP/2 connection, SECONDS measured after WARMUP.
# The cluster nodes: `[cluster] lease_ttl_ms = 2000`, etcd (Debian etcd-server) on loopback.
#
# Output: a table (per run, then medians and B/A ratios of rec/s and p99) and
# target/bench/cluster_overhead.json.
#
# Usage: bash benches/cluster_overhead.sh
# Environment (defaults in brackets):
#   SECONDS_PER_RUN [10]  WARMUP [2]  REPEATS [3]  CLIENTS [64]  RECORD_BYTES [1024]
#   SHAPES [single semisync]
#   BUILD [1]  BIN_DIR [${CARGO_TARGET_DIR:-target}/release]  ETCD [etcd]
#   BASE_PORT [7800] (etcd +0/+1, nodes +10, +11)  BENCH_DIR [target/cluster-overhead]
#   OUT_DIR [target/bench]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

S="${SECONDS_PER_RUN:-10}"
WARMUP="${WARMUP:-2}"
REPEATS="${REPEATS:-3}"
CLIENTS="${CLIENTS:-64}"
RECORD_BYTES="${RECORD_BYTES:-1024}"
SHAPES="${SHAPES:-single semisync}"
BUILD="${BUILD:-1}"
BIN_DIR="${BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}"
ETCD="${ETCD:-etcd}"
BASE_PORT="${BASE_PORT:-7800}"
BENCH_DIR="${BENCH_DIR:-$ROOT/target/cluster-overhead}"
OUT_DIR="${OUT_DIR:-$ROOT/target/bench}"
SPOOL="$BIN_DIR/spool"
LOADGEN="$BIN_DIR/spool-loadgen"
RESULT_JSON="$OUT_DIR/cluster_overhead.json"

log() { printf '== %s %s\n' "$(date +%T)" "$*" >&2; }

PIDS=()
cleanup() {
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for() { # SECONDS WHAT CMD...
    local limit=$1 what=$2
    shift 2
    local end=$((SECONDS + limit))
    until "$@"; do
        [ "$SECONDS" -lt "$end" ] || { log "timed out after ${limit}s: $what"; return 1; }
        sleep 0.1
    done
}

if [ "$BUILD" = 1 ]; then
    log "cargo build --release -p spool -p spool-loadgen"
    cargo build --release -p spool -p spool-loadgen
fi
for b in "$SPOOL" "$LOADGEN"; do
    [ -x "$b" ] || { echo "$b missing: build it or set BIN_DIR" >&2; exit 1; }
done
for i in 0 1 10 11; do
    port_free $((BASE_PORT + i)) || { echo "port $((BASE_PORT + i)) taken: set BASE_PORT" >&2; exit 1; }
done
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR" "$OUT_DIR"
P="$BENCH_DIR/run"
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
log "commit $COMMIT, load $(cut -d' ' -f1-3 /proc/loadavg)"

ETCD_PORT=$BASE_PORT
"$ETCD" --name bench --data-dir "$BENCH_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((BASE_PORT + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((BASE_PORT + 1))" \
    --initial-cluster "bench=http://127.0.0.1:$((BASE_PORT + 1))" \
    --heartbeat-interval 50 --election-timeout 500 >"$BENCH_DIR/etcd.log" 2>&1 &
PIDS+=($!)
etcd_healthy() { curl -fsS "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"'; }
wait_for 30 "etcd healthy" etcd_healthy

addr() { echo "127.0.0.1:$((BASE_PORT + 10 + $1))"; }
status_json() { timeout 2 "$SPOOL" --addr "$(addr "$1")" status --json 2>/dev/null; }
node_up() { status_json "$1" >/dev/null; }
leads() {
    status_json "$1" | jq -e '.role == "primary" and
        (.coordinator == null or .coordinator.leader == .coordinator.node)' >/dev/null 2>&1
}
replicas_connected() { # node n
    status_json "$1" | jq -e "[.replicas[] | select(.connected)] | length >= $2" >/dev/null 2>&1
}

NODE_PIDS=()
# start_node I DIR EXTRA...
start_node() {
    local i=$1 dir=$2
    shift 2
    RUST_LOG=warn NO_COLOR=1 "$SPOOL" serve --data-dir "$dir" --listen "$(addr "$i")" \
        --io-backend std "$@" >>"$dir.log" 2>&1 &
    NODE_PIDS+=($!)
    PIDS+=($!)
    wait_for 30 "node $i up" node_up "$i"
}
stop_nodes() {
    local pid
    # Replicas (started last) first.
    for ((k = ${#NODE_PIDS[@]} - 1; k >= 0; k--)); do
        pid=${NODE_PIDS[k]}
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    NODE_PIDS=()
}
cluster_config() { # dir name
    printf '[cluster]\nlease_ttl_ms = 2000\nnode_name = "%s"\n' "$2" >"$1.toml"
}

# run SHAPE VARIANT REP: start the servers, load them, stop them.
run() {
    local shape=$1 variant=$2 rep=$3 d="$BENCH_DIR/$1-$2-$3" k=0
    local cluster_args=() name="ovh-$1-$3"
    mkdir -p "$d"
    if [ "$variant" = cluster ]; then
        cluster_config "$d/n0" n0
        cluster_config "$d/n1" n1
    fi
    case "$shape/$variant" in
    single/plain) start_node 0 "$d/n0" ;;
    single/cluster)
        start_node 0 "$d/n0" --config "$d/n0.toml" --cluster "etcd://127.0.0.1:$ETCD_PORT" \
            --cluster-name "$name"
        ;;
    semisync/plain)
        start_node 0 "$d/n0"
        start_node 1 "$d/n1" --replica-of "$(addr 0)" --replica-id n1
        ;;
    semisync/cluster)
        start_node 0 "$d/n0" --config "$d/n0.toml" --cluster "etcd://127.0.0.1:$ETCD_PORT" \
            --cluster-name "$name"
        wait_for 30 "node 0 leads" leads 0
        start_node 1 "$d/n1" --config "$d/n1.toml" --cluster "etcd://127.0.0.1:$ETCD_PORT" \
            --cluster-name "$name"
        ;;
    esac
    wait_for 30 "node 0 leads" leads 0
    [ "$shape" = single ] || { k=1; wait_for 30 "replica connected" replicas_connected 0 1; }
    log "$shape $variant #$rep: $CLIENTS clients, ack $([ $k = 0 ] && echo async || echo semi-sync:1)"
    "$LOADGEN" spool-append --addr "$(addr 0)" --clients "$CLIENTS" --record-bytes "$RECORD_BYTES" \
        --wait-replicas "$k" --seconds "$S" --warmup "$WARMUP" \
        --server-pid "$(IFS=,; echo "${NODE_PIDS[*]}")" --json "$P-$shape-$variant-$rep.json"
    stop_nodes
    rm -rf "$d"
}

for shape in $SHAPES; do
    for rep in $(seq 1 "$REPEATS"); do
        # Alternate which goes first, so neither always runs on a warmer machine.
        if [ $((rep % 2)) = 1 ]; then order="plain cluster"; else order="cluster plain"; fi
        for variant in $order; do run "$shape" "$variant" "$rep"; done
    done
done
log "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$P" "$RESULT_JSON" "$COMMIT" "$REPEATS" "$SHAPES" <<'EOF'
import json, statistics, sys
p, out, commit, reps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
shapes = sys.argv[5].split()
res = {"commit": commit, "shapes": {}}
print()
print(f"{'shape':<9} {'variant':<8} {'rep':>3} {'rec/s':>9} {'p50_us':>8} {'p99_us':>8} "
      f"{'srv_cpu_s/Mr':>12}")
for shape in shapes:
    runs = {v: [json.load(open(f"{p}-{shape}-{v}-{r}.json"))[0] for r in range(1, reps + 1)]
            for v in ("plain", "cluster")}
    for v, rs in runs.items():
        for i, r in enumerate(rs, 1):
            print(f"{shape:<9} {v:<8} {i:>3} {r['records_per_s']:>9.0f} "
                  f"{r['latency_us']['p50']:>8.0f} {r['latency_us']['p99']:>8.0f} "
                  f"{r['server_cpu_s_per_million_records'] or 0:>12.2f}")
    med = {v: {"records_per_s": statistics.median(r["records_per_s"] for r in rs),
               "p50_us": statistics.median(r["latency_us"]["p50"] for r in rs),
               "p99_us": statistics.median(r["latency_us"]["p99"] for r in rs),
               "server_cpu_s_per_million_records": statistics.median(
                   r["server_cpu_s_per_million_records"] or 0 for r in rs)}
           for v, rs in runs.items()}
    ratio = med["cluster"]["records_per_s"] / med["plain"]["records_per_s"]
    p99 = med["cluster"]["p99_us"] / med["plain"]["p99_us"]
    res["shapes"][shape] = {"runs": runs, "median": med, "throughput_ratio": round(ratio, 4),
                            "p99_ratio": round(p99, 4)}
print()
for shape, s in res["shapes"].items():
    m = s["median"]
    ok = "ok  " if s["throughput_ratio"] >= 0.97 else "MISS"
    print(f"{ok} {shape:<9} median rec/s plain {m['plain']['records_per_s']:.0f}, cluster "
          f"{m['cluster']['records_per_s']:.0f}: cluster/plain {s['throughput_ratio']:.3f} "
          f"(goal >= 0.97); p99 cluster/plain {s['p99_ratio']:.3f}")
json.dump(res, open(out, "w"), indent=2)
print(f"\nwrote {out}")
EOF
