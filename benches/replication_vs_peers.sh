#!/usr/bin/env bash
# Spool replication beside single-node spool, Redis primary+replica (SET + WAIT 1 0) and
# NATS JetStream, plus replica catch-up beside fio: one run, same disk (issue 4, Targets).
#
# (a) spool bench grpc, single node: unary (64 clients x 1 record of 1 KiB) and pipelined
#     (1 stream, 64 x 64 records in flight), ack async (fdatasync on the primary)
# (b) the same with 1 replica child: ack async, semi-sync:1, sync (the replica --sync-replica)
#     When REPLICA_DIR is set: ack async and semi-sync:1 again with the replica's data under
#     REPLICA_DIR, another filesystem on another device (as a replica on its own machine has;
#     on one disk the replica's writes and flushes share the primary's disk)
# (c) Redis (Debian redis-server), primary + replica on loopback, appendonly yes,
#     appendfsync always; `spool-loadgen redis-wait`: 64 connections, each SET 1 KiB then
#     WAIT 1 0 (RESP spoken directly; its CPU is reported)
# (d) NATS JetStream (Debian nats-server), file storage: R1 on one server and R3 on a
#     three-server loopback cluster; `spool-loadgen nats-js`: 64 publishes awaiting acks
# (e) fio sequential write (1 MiB, direct, io_uring, iodepth 8, 1 GiB; without and with
#     --end_fsync=1) before and after `spool bench catchup --gib $CATCHUP_GIB` (full sync of
#     a fresh replica, then partial)
# Then a table of the ratios the issue asks for and target/bench/replication_vs_peers.json.
#
# Usage: bash benches/replication_vs_peers.sh
# Environment (defaults in brackets):
#   SECONDS_PER_RUN [5]  WARMUP [1]  IO_BACKEND [std]  CATCHUP_GIB [2]  NATS_R3 [1]
#   BENCH_DIR [target/bench-data]  OUT_DIR [target/bench]  REPLICA_DIR [unset]
#   REDIS_PORT [6391] (replica: +1)  NATS_PORT [4223]  NATS_R3_PORT [4231] (cluster: 6231..)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

S="${SECONDS_PER_RUN:-5}"
WARMUP="${WARMUP:-1}"
IO_BACKEND="${IO_BACKEND:-std}"
CATCHUP_GIB="${CATCHUP_GIB:-2}"
NATS_R3="${NATS_R3:-1}"
BENCH_DIR="${BENCH_DIR:-$ROOT/target/bench-data}"
OUT_DIR="${OUT_DIR:-$ROOT/target/bench}"
REDIS_PORT="${REDIS_PORT:-6391}"
NATS_PORT="${NATS_PORT:-4223}"
NATS_R3_PORT="${NATS_R3_PORT:-4231}"
CLIENTS=64
RECORD_BYTES=1024

mkdir -p "$BENCH_DIR" "$OUT_DIR"
BENCH_DIR="$(cd "$BENCH_DIR" && pwd)"
P="$OUT_DIR/replication_vs_peers"
RESULT_JSON="$OUT_DIR/replication_vs_peers.json"
rm -f "$P"-*.json

log() { printf '== %s\n' "$*" >&2; }

PIDS=()
cleanup() {
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap cleanup EXIT

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

load_snapshot() { # name -> JSON object on stdout
    python3 - "$1" <<'EOF'
import json, os, subprocess, sys
la = open("/proc/loadavg").read().split()
top = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True,
                     text=True).stdout.splitlines()[1:6]
print(json.dumps({"at": sys.argv[1], "loadavg_1_5_15": [float(x) for x in la[:3]],
                  "cores": os.cpu_count(), "top_processes": [t.strip() for t in top]}))
EOF
}

# --- build -------------------------------------------------------------------------------
log "cargo build --release -p spool -p spool-loadgen"
cargo build --release -p spool -p spool-loadgen
SPOOL="$ROOT/target/release/spool"
LOADGEN="$ROOT/target/release/spool-loadgen"
log "data dir: $BENCH_DIR ($(df -P "$BENCH_DIR" | awk 'NR==2 {print $1}'))"
load_snapshot start > "$P-load-start.json"
log "load at start: $(cat /proc/loadavg)"

GRPC=(--dir "$BENCH_DIR" --io-backend "$IO_BACKEND" --mode unary,pipelined
      --record-bytes "$RECORD_BYTES" --clients "$CLIENTS" --seconds "$S" --warmup "$WARMUP")

# --- (a) single node ---------------------------------------------------------------------
log "(a) spool single node: unary $CLIENTS clients + pipelined, ack async, ${S}s each"
"$SPOOL" bench grpc "${GRPC[@]}" --ack async --json "$P-single.json"

# --- (b) primary + 1 replica -------------------------------------------------------------
for ack in async semi-sync:1 sync; do
    log "(b) spool + 1 replica: ack $ack"
    "$SPOOL" bench grpc "${GRPC[@]}" --replicas 1 --ack "$ack" \
        --json "$P-repl-${ack/:/}.json"
done
if [ -n "${REPLICA_DIR:-}" ]; then
    log "replica data on $(df -P "$REPLICA_DIR" | awk 'NR==2 {print $1}') ($REPLICA_DIR)"
    for ack in async semi-sync:1; do
        log "(b) spool + 1 replica on its own device: ack $ack"
        "$SPOOL" bench grpc "${GRPC[@]}" --replicas 1 --ack "$ack" --replica-dir "$REPLICA_DIR" \
            --json "$P-repl-own-${ack/:/}.json"
    done
fi

# --- (c) Redis primary + replica, SET + WAIT 1 0 ------------------------------------------
if ! command -v redis-server >/dev/null 2>&1; then
    log "installing redis-server"
    apt-get install -y redis-server >/dev/null 2>&1 ||
        { apt-get update >/dev/null && apt-get install -y redis-server >/dev/null; }
fi
log "$(redis-server --version)"
RP=$REDIS_PORT RR=$((REDIS_PORT + 1))
for port in $RP $RR; do
    port_free "$port" || { echo "port $port is taken: set REDIS_PORT" >&2; exit 1; }
done
REDIS_DIR="$BENCH_DIR/redis-repl"
rm -rf "$REDIS_DIR"
mkdir -p "$REDIS_DIR/p" "$REDIS_DIR/r"
redis_common=(--bind 127.0.0.1 --daemonize no --appendonly yes --appendfsync always --save ''
              --protected-mode no)
redis-server --port "$RP" --dir "$REDIS_DIR/p" "${redis_common[@]}" >"$REDIS_DIR/p.log" 2>&1 &
REDIS_P=$!
PIDS+=("$REDIS_P")
redis-server --port "$RR" --dir "$REDIS_DIR/r" "${redis_common[@]}" \
    --replicaof 127.0.0.1 "$RP" >"$REDIS_DIR/r.log" 2>&1 &
REDIS_R=$!
PIDS+=("$REDIS_R")
for _ in $(seq 100); do
    redis-cli -p "$RR" info replication 2>/dev/null | grep -q 'master_link_status:up' && break
    sleep 0.1
done
redis-cli -p "$RR" info replication | grep -q 'master_link_status:up' ||
    { echo "redis replica did not attach" >&2; exit 1; }
log "(c) redis primary+replica: $CLIENTS clients, SET $RECORD_BYTES B + WAIT 1 0"
"$LOADGEN" redis-wait --addr "127.0.0.1:$RP" --clients "$CLIENTS" \
    --record-bytes "$RECORD_BYTES" --wait-replicas 1 --seconds "$S" --warmup "$WARMUP" \
    --server-pid "$REDIS_P,$REDIS_R" --json "$P-redis.json"
kill "$REDIS_R" "$REDIS_P"
wait "$REDIS_R" "$REDIS_P" 2>/dev/null || true
rm -rf "$REDIS_DIR"

# --- (d) NATS JetStream --------------------------------------------------------------------
NATS_OK=0
if ! command -v nats-server >/dev/null 2>&1; then
    log "installing nats-server"
    apt-get install -y nats-server >/dev/null 2>&1 ||
        { apt-get update >/dev/null && apt-get install -y nats-server >/dev/null; } || true
fi
if command -v nats-server >/dev/null 2>&1; then
    NATS_OK=1
    log "$(nats-server --version)"
    NATS_DIR="$BENCH_DIR/nats"
    rm -rf "$NATS_DIR"
    mkdir -p "$NATS_DIR"
    port_free "$NATS_PORT" || { echo "port $NATS_PORT is taken: set NATS_PORT" >&2; exit 1; }
    nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$NATS_DIR/r1" >"$NATS_DIR/r1.log" 2>&1 &
    NP=$!
    PIDS+=("$NP")
    sleep 1
    log "(d) nats jetstream R1 (file storage): $CLIENTS publishes in flight"
    "$LOADGEN" nats-js --addr "127.0.0.1:$NATS_PORT" --clients "$CLIENTS" \
        --record-bytes "$RECORD_BYTES" --stream-replicas 1 --seconds "$S" --warmup "$WARMUP" \
        --server-pid "$NP" --json "$P-nats-r1.json"
    kill "$NP"
    wait "$NP" 2>/dev/null || true

    if [ "$NATS_R3" = 1 ]; then
        routes=""
        for i in 1 2 3; do
            routes="${routes:+$routes,}nats://127.0.0.1:$((6230 + i))"
        done
        N3=()
        for i in 1 2 3; do
            port_free $((NATS_R3_PORT + i - 1)) ||
                { echo "port $((NATS_R3_PORT + i - 1)) taken: set NATS_R3_PORT" >&2; exit 1; }
            nats-server -a 127.0.0.1 -p $((NATS_R3_PORT + i - 1)) -n "n$i" -js \
                -sd "$NATS_DIR/n$i" --cluster_name bench \
                --cluster "nats://127.0.0.1:$((6230 + i))" --routes "$routes" \
                >"$NATS_DIR/n$i.log" 2>&1 &
            N3+=($!)
            PIDS+=($!)
        done
        sleep 2
        log "(d) nats jetstream R3 on 3 servers (file storage): $CLIENTS publishes in flight"
        if ! "$LOADGEN" nats-js --addr "127.0.0.1:$NATS_R3_PORT" --clients "$CLIENTS" \
            --record-bytes "$RECORD_BYTES" --stream-replicas 3 --seconds "$S" \
            --warmup "$WARMUP" --server-pid "$(IFS=,; echo "${N3[*]}")" \
            --json "$P-nats-r3.json"; then
            log "nats R3 failed (see $NATS_DIR/n*.log); continuing without it"
        fi
        kill "${N3[@]}"
        wait "${N3[@]}" 2>/dev/null || true
    fi
    rm -rf "$NATS_DIR"
else
    log "nats-server is not installable here: NATS skipped"
fi

# --- (e) catch-up beside fio ---------------------------------------------------------------
# Twice each time: as written (the time ends when the last write returns, part of the data
# may still sit in a write cache below) and with --end_fsync=1 (the time includes flushing
# it to stable storage). The catch-up syncs every segment before the replica acks it, so
# the second is the reference at the same durability; both are reported.
fio_seq() { # out.json end_fsync(0|1)
    fio --name=seq --rw=write --bs=1M --direct=1 --size=1G --ioengine=io_uring --iodepth=8 \
        --end_fsync="$2" --filename="$BENCH_DIR/fio-seq.dat" --output-format=json >"$1"
    rm -f "$BENCH_DIR/fio-seq.dat"
}
log "(e) fio sequential write before the catch-up (without, then with end_fsync)"
fio_seq "$P-fio-before.json" 0
fio_seq "$P-fio-before-fsync.json" 1
log "(e) spool bench catchup --gib $CATCHUP_GIB"
"$SPOOL" bench catchup --dir "$BENCH_DIR" --io-backend "$IO_BACKEND" --gib "$CATCHUP_GIB" \
    --json "$P-catchup.json"
log "(e) fio sequential write after the catch-up (without, then with end_fsync)"
fio_seq "$P-fio-after.json" 0
fio_seq "$P-fio-after-fsync.json" 1

load_snapshot end > "$P-load-end.json"
log "load at end: $(cat /proc/loadavg)"

# --- table + JSON --------------------------------------------------------------------------
python3 - "$P" "$RESULT_JSON" "$NATS_OK" <<'EOF'
import json, os, sys
p, out, nats_ok = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
def load(name):
    path = f"{p}-{name}.json"
    return json.load(open(path)) if os.path.exists(path) else None
def run(runs, mode):
    return next(r for r in runs if r["mode"] == mode)

single = load("single")
repl = {a: load(f"repl-{a}") for a in ("async", "semi-sync1", "sync")}
own = {a: r for a in ("async", "semi-sync1") if (r := load(f"repl-own-{a}"))}
redis = load("redis")[0]
nats = {k: (load(f"nats-{k}") or [None])[0] for k in ("r1", "r3")}
fio = [json.load(open(f"{p}-fio-{w}.json"))["jobs"][0]["write"]["bw_bytes"] / 1e6
       for w in ("before", "after")]
fio_sync = [json.load(open(f"{p}-fio-{w}-fsync.json"))["jobs"][0]["write"]["bw_bytes"] / 1e6
            for w in ("before", "after")]
catchup = load("catchup")

rows, checks = [], []
def row(name, r, extra=""):
    lat = r["latency_us"]
    if "cpu_s_per_million_records" not in r:
        r["cpu_s_per_million_records"] = r["client_cpu_s_per_million_records"] + (
            r.get("server_cpu_s_per_million_records") or 0)
    rows.append(f"{name:<40} {r['records_per_s']:>10.0f} {lat['p50']:>9.0f} {lat['p99']:>9.0f} "
                f"{lat['p999']:>9.0f} {r['cpu_s_per_million_records']:>8.2f}  {extra}")
for mode in ("unary", "pipelined"):
    row(f"spool 1 node {mode} async", run(single, mode))
    for a, label in (("async", "async"), ("semi-sync1", "semi-sync:1"), ("sync", "sync")):
        r = run(repl[a], mode)
        c = r.get("replica_check", [])
        extra = "replica caught up" if c and all(x["caught_up"] for x in c) else "REPLICA BEHIND"
        if r.get("degraded_acks") or r.get("unconfirmed_acks"):
            extra += f"; {r['degraded_acks']} degraded, {r['unconfirmed_acks']} unconfirmed acks"
        row(f"spool +1 replica {mode} {label}", r, extra)
    for a, r in own.items():
        row(f"spool +1 replica own disk {mode} {a}", run(r, mode))
row("redis 7 primary+replica SET+WAIT 1 0", redis,
    f"client {redis['client_cpu_s_per_million_records']:.1f} s/Mr, "
    f"{redis['under_replicated']} under-replicated")
for k, r in nats.items():
    if r:
        row(f"nats jetstream {k.upper()} file", r,
            f"client {r['client_cpu_s_per_million_records']:.1f} s/Mr")

def ratio(name, value, goal, ok):
    checks.append({"check": name, "value": round(value, 3), "goal": goal, "met": ok})

for mode in ("unary", "pipelined"):
    base = run(single, mode)
    a = run(repl["async"], mode)
    v = a["records_per_s"] / base["records_per_s"]
    ratio(f"{mode}: async+1 replica / single node (rec/s)", v, ">= 0.9", v >= 0.9)
    for k, label in (("semi-sync1", "semi-sync:1"), ("sync", "sync")):
        r = run(repl[k], mode)
        v = r["records_per_s"] / base["records_per_s"]
        ratio(f"{mode}: {label} / single node (rec/s)", v, ">= 0.5", v >= 0.5)
        v = r["latency_us"]["p99"] / base["latency_us"]["p99"]
        ratio(f"{mode}: {label} p99 / single node p99", v, "< 3", v < 3)
    if "async" in own:
        v = run(own["async"], mode)["records_per_s"] / base["records_per_s"]
        ratio(f"{mode}: async+1 replica on its own device / single node", v, ">= 0.9", v >= 0.9)
    if "semi-sync1" in own:
        r = run(own["semi-sync1"], mode)
        v = r["records_per_s"] / base["records_per_s"]
        ratio(f"{mode}: semi-sync:1, replica on its own device / single node", v, ">= 0.5",
              v >= 0.5)
semi_u = run(repl["semi-sync1"], "unary")
semi_p = run(repl["semi-sync1"], "pipelined")
one_u = run(single, "unary")
one_p = run(single, "pipelined")
v = semi_u["records_per_s"] / redis["records_per_s"]
ratio("spool semi-sync:1 unary 64 clients / redis SET+WAIT 1 (rec/s)", v, ">= 3", v >= 3)
v = semi_p["records_per_s"] / redis["records_per_s"]
ratio("spool semi-sync:1 pipelined / redis SET+WAIT 1 (rec/s)", v, ">= 3", v >= 3)
if nats["r1"]:
    v = one_u["records_per_s"] / nats["r1"]["records_per_s"]
    ratio("spool 1 node unary 64 clients / nats R1, 64 in flight (rec/s)", v, ">= 3", v >= 3)
    v = one_p["records_per_s"] / nats["r1"]["records_per_s"]
    ratio("spool 1 node pipelined / nats R1 (rec/s)", v, ">= 3", v >= 3)
if nats["r3"]:
    v = semi_u["records_per_s"] / nats["r3"]["records_per_s"]
    ratio("spool semi-sync:1 unary / nats R3 (rec/s)", v, ">= 3", v >= 3)
    v = semi_p["records_per_s"] / nats["r3"]["records_per_s"]
    ratio("spool semi-sync:1 pipelined / nats R3 (rec/s)", v, ">= 3", v >= 3)
for ref, label in ((max(fio_sync), "fio +end_fsync"), (max(fio), "fio as written")):
    for ph in catchup["phases"]:
        v = ph["mb_per_s"] / ref
        ratio(f"catch-up {ph['phase']} {ph['mb_per_s']:.0f} MB/s / {label} {ref:.0f} MB/s",
              v, ">= 0.8", v >= 0.8)

print()
print(f"{'run':<40} {'rec/s':>10} {'p50_us':>9} {'p99_us':>9} {'p999_us':>9} {'cpu_s/Mr':>8}")
print("\n".join(rows))
print(f"fio seq write 1 MiB direct qd8: before {fio[0]:.0f} MB/s, after {fio[1]:.0f} MB/s; "
      f"with end_fsync: before {fio_sync[0]:.0f}, after {fio_sync[1]:.0f}")
for ph in catchup["phases"]:
    print(f"catch-up {ph['phase']:<8} {ph['bytes']/1e6:>8.1f} MB in {ph['seconds']:.2f} s = "
          f"{ph['mb_per_s']:.1f} MB/s")
print()
for c in checks:
    print(f"{'ok  ' if c['met'] else 'MISS'} {c['check']:<72} {c['value']:>8.3f}  goal {c['goal']}")
if not nats_ok:
    print("NATS: not run (nats-server not installable)")
result = {
    "load": [load("load-start"), load("load-end")],
    "spool_single_node": single,
    "spool_one_replica": repl,
    "spool_one_replica_own_device": own,
    "redis_set_wait": redis,
    "nats_jetstream": nats,
    "fio_seq_write_mb_per_s": {"before": round(fio[0], 1), "after": round(fio[1], 1)},
    "fio_seq_write_end_fsync_mb_per_s": {"before": round(fio_sync[0], 1),
                                         "after": round(fio_sync[1], 1)},
    "catchup": catchup,
    "ratios": checks,
}
json.dump(result, open(out, "w"), indent=2)
print(f"\nwrote {out}")
EOF
