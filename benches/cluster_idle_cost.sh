#!/usr/bin/env bash
# What `--cluster` itself costs (issue 18, Targets: steady-state cost under 3%), measured
# as resources rather than as a throughput ratio (which moves ±10–15% run to run here):
# the CPU the agents and etcd spend and the fsyncs etcd adds to the disk, with no load, so
# nothing else hides them. Per build, in turn:
#   etcd     etcd alone (no client)
#   plain    etcd + primary + replica (--replica-of)
#   cluster  etcd + two nodes with --cluster (the first leads)
# each measured for MEASURE seconds after SETTLE. The cost of the cluster is
# (cluster - plain) nodes' CPU + (cluster - etcd) etcd's CPU, in ms per second and as a
# share of the machine's cores; with the two cores saturated by a load, that share is
# what the load loses at most to the cluster's own work.
#
# Usage: bash benches/cluster_idle_cost.sh
# Environment (defaults in brackets):
#   BIN_DIRS [${CARGO_TARGET_DIR:-target}/release]: one or more directories holding a
#   `spool`, measured in turn (an A/B: "old new"); ROUNDS [2]  MEASURE [20]  SETTLE [3]
#   ETCD [etcd]  BASE_PORT [7900]  OUT [target/bench/cluster_idle_cost.json]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN_DIRS="${BIN_DIRS:-${CARGO_TARGET_DIR:-$ROOT/target}/release}"
ROUNDS="${ROUNDS:-2}"
MEASURE="${MEASURE:-20}"
SETTLE="${SETTLE:-3}"
ETCD="${ETCD:-etcd}"
BASE_PORT="${BASE_PORT:-7900}"
OUT="${OUT:-$ROOT/target/bench/cluster_idle_cost.json}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/spool-idle-cost.XXXXXX")"
mkdir -p "$(dirname "$OUT")"
TICK=$(getconf CLK_TCK)
log() { printf '== %s %s\n' "$(date +%T)" "$*" >&2; }

PIDS=()
stop_all() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
}
trap 'stop_all; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

wait_for() { # SECONDS WHAT CMD...
    local end=$((SECONDS + $1)) what=$2
    shift 2
    until "$@"; do
        [ "$SECONDS" -lt "$end" ] || { log "timed out: $what"; return 1; }
        sleep 0.1
    done
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
etcd_fsyncs() {
    curl -s "http://127.0.0.1:$BASE_PORT/metrics" |
        awk '/^etcd_disk_wal_fsync_duration_seconds_count/ {print $2}'
}
etcd_healthy() { curl -fsS "http://127.0.0.1:$BASE_PORT/health" 2>/dev/null | grep -q '"health":"true"'; }
start_etcd() {
    "$ETCD" --name idle --data-dir "$WORK/etcd-$RANDOM" \
        --listen-client-urls "http://127.0.0.1:$BASE_PORT" \
        --advertise-client-urls "http://127.0.0.1:$BASE_PORT" \
        --listen-peer-urls "http://127.0.0.1:$((BASE_PORT + 1))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((BASE_PORT + 1))" \
        --initial-cluster "idle=http://127.0.0.1:$((BASE_PORT + 1))" \
        --heartbeat-interval 50 --election-timeout 500 >"$WORK/etcd.log" 2>&1 &
    ETCD_PID=$!
    PIDS+=("$ETCD_PID")
    wait_for 30 "etcd healthy" etcd_healthy
}
addr() { echo "127.0.0.1:$((BASE_PORT + 10 + $1))"; }
node_up() { timeout 2 "$SPOOL" --addr "$(addr "$1")" status >/dev/null 2>&1; }
NODE_PIDS=()
start_node() { # I EXTRA...
    local i=$1 dir="$WORK/n$1-$RANDOM"
    shift
    RUST_LOG=warn "$SPOOL" serve --data-dir "$dir" --listen "$(addr "$i")" "$@" \
        >>"$WORK/node$i.log" 2>&1 &
    NODE_PIDS+=($!)
    PIDS+=($!)
    wait_for 30 "node $i up" node_up "$i"
}
leads() { timeout 2 "$SPOOL" --addr "$(addr "$1")" status --json 2>/dev/null | jq -e '.role == "primary"' >/dev/null; }
start_member() { # I CLUSTER
    printf '[cluster]\nlease_ttl_ms = 2000\nnode_name = "n%s"\n' "$1" >"$WORK/n$1.toml"
    start_node "$1" --config "$WORK/n$1.toml" --cluster "etcd://127.0.0.1:$BASE_PORT" \
        --cluster-name "$2"
}

# measure SHAPE: prints "nodes_ms_per_s etcd_ms_per_s etcd_fsyncs_per_s".
measure() {
    local shape=$1 name
    NODE_PIDS=()
    start_etcd
    name="idle$RANDOM"
    case "$shape" in
    plain)
        start_node 0
        start_node 1 --replica-of "$(addr 0)" --replica-id n1
        ;;
    cluster)
        start_member 0 "$name"
        wait_for 30 "node 0 leads" leads 0
        start_member 1 "$name"
        ;;
    esac
    [ "$shape" = etcd ] || "$SPOOL" --addr "$(addr 0)" logs create idle >/dev/null 2>&1 || true
    sleep "$SETTLE"
    local n0=0 e0 f0 n1=0 e1 f1 p
    for p in "${NODE_PIDS[@]:-}"; do [ -n "$p" ] && n0=$((n0 + $(ticks "$p"))); done
    e0=$(ticks "$ETCD_PID")
    f0=$(etcd_fsyncs)
    sleep "$MEASURE"
    for p in "${NODE_PIDS[@]:-}"; do [ -n "$p" ] && n1=$((n1 + $(ticks "$p"))); done
    e1=$(ticks "$ETCD_PID")
    f1=$(etcd_fsyncs)
    stop_all
    awk -v n=$((n1 - n0)) -v e=$((e1 - e0)) -v f="$f1" -v g="$f0" -v t="$TICK" -v m="$MEASURE" \
        'BEGIN {printf "%.1f %.1f %.2f\n", n / t * 1000 / m, e / t * 1000 / m, (f - g) / m}'
}

echo "build shape round nodes_ms_per_s etcd_ms_per_s etcd_fsyncs_per_s" >"$WORK/rows"
for round in $(seq 1 "$ROUNDS"); do
    for dir in $BIN_DIRS; do
        SPOOL="$dir/spool"
        [ -x "$SPOOL" ] || { echo "$SPOOL missing: build it or set BIN_DIRS" >&2; exit 1; }
        for shape in etcd plain cluster; do
            log "$dir $shape round $round"
            echo "$dir $shape $round $(measure "$shape")" >>"$WORK/rows"
        done
    done
done

python3 - "$WORK/rows" "$OUT" "$(nproc)" <<'EOF'
import json, statistics, sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
cores = int(sys.argv[3])
out = {"cores": cores, "builds": {}}
print(f"{'build':<40} {'shape':<8} {'nodes ms/s':>10} {'etcd ms/s':>9} {'etcd fsync/s':>12}")
for b in dict.fromkeys(r[0] for r in rows):
    med = {}
    for shape in ("etcd", "plain", "cluster"):
        rs = [r for r in rows if r[0] == b and r[1] == shape]
        med[shape] = [statistics.median(float(r[i]) for r in rs) for i in (3, 4, 5)]
        print(f"{b:<40} {shape:<8} {med[shape][0]:>10.1f} {med[shape][1]:>9.1f} {med[shape][2]:>12.2f}")
    cost = (med["cluster"][0] - med["plain"][0]) + (med["cluster"][1] - med["etcd"][1])
    share = cost / (cores * 1000)
    print(f"{b:<40} cluster cost {cost:.1f} ms/s of CPU = {share:.1%} of {cores} cores; "
          f"etcd fsyncs {med['cluster'][2]:.1f}/s")
    out["builds"][b] = {"medians": med, "cost_ms_per_s": round(cost, 1),
                        "share_of_cores": round(share, 4)}
json.dump(out, open(sys.argv[2], "w"), indent=2)
print(f"wrote {sys.argv[2]}")
EOF
