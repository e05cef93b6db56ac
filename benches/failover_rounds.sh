#!/usr/bin/env bash
# Automatic failover, measured (issue 18, Targets): fault rounds against a 3-node Spool
# cluster on etcd, then Redis Sentinel beside it with the same detection time.
#
# Spool: an etcd of ETCD_MEMBERS members (Debian etcd-server) and three `spool serve
# --cluster` nodes on fixed loopback ports, `[cluster] lease_ttl_ms = 2000`, every node a
# sync replica when it follows. Each node reaches each etcd member through its own
# `spool-loadgen cut-proxy` (node i lists member i first), and its peers reach it through
# one more (its `advertise` address), so that the primary alone can lose etcd, or etcd
# and its peers. `spool-loadgen failover-writer` appends continuously (one semi-sync:1 and
# one sync append in flight) to whichever node leads, on the nodes' own addresses (not
# through the proxies), recording every ack (node, epoch, offset, value, time). Round r
# applies fault r of the schedule (FAULTS), in turn:
#   kill9        kill -9 of the primary; restarted once another node acked a write
#   pause        SIGSTOP of the primary for 4 s (twice the TTL), then SIGCONT
#   etcd-cut     the primary's etcd proxies cut; restored once another node acked a write
#   cut-all      the primary cut off from etcd and from its peers (every link but the
#                writer's, which still reaches it and must get no ack); restored once
#                another node acked a write
#   replica-kill kill -9 of the primary, then at TTL + 200 ms (the election under way)
#                kill -9 of a replica, restarted 1 s later; the old primary restarted
#                once another node acked a write
#   etcd-restart every etcd member stopped (SIGTERM) and started again; done once a write
#                is acked after etcd answers again (the primary may well keep the lead)
#   etcd-member-kill (ETCD_MEMBERS=3 only) kill -9 of the member the primary lists first;
#                done once a write is acked a TTL after it; the member restarted
#   switchover   (not in the default schedule: FAULTS=switchover) `spool admin switchover
#                --to` the other nodes in turn, sent to the primary; paused_ms is what the
#                old primary reports (how long it refused writes)
# Per round, from the writer's acks (failover-check): failover_ms (below), handover_ms
# (the old primary's last ack in its epoch to that first ack elsewhere: the pause a
# writer sees across a switchover), and gap_ms, the longest gap between consecutive acks
# from 1 s before the fault to 1 s after the first ack elsewhere (without a failover: to
# the round's check), the pause of faults that need no failover.
# Failover time: from the fault to the first ack after it from another node than the old
# primary, or from the old primary in a later epoch (restarted and elected again); the
# writer's ack times and the script's fault time
# are both the wall clock. "elected" is the fault to the new leader's "won the leader
# key" in its log. The writer abandons a call after 500 ms but records its ack if it
# comes later (marked late): a deposed primary's ack must be counted. The round then waits for the cluster to heal (a leader with both
# replicas connected) and `spool-loadgen failover-check` checks every ack so far: each
# acked record on the current primary at its offset with its bytes, and no epoch in which
# two nodes acked. At the end the writer stops, the replicas catch up, all nodes stop
# (replicas first) and `spool check --json` digests must be identical on the three.
#
# Redis Sentinel (Debian redis-server, redis-sentinel; installed if missing): a master
# and 2 replicas (appendonly yes, appendfsync always) and 3 sentinels (quorum 2,
# down-after-milliseconds 2000 = the lease TTL, failover-timeout 4000);
# `spool-loadgen sentinel-writer` does SET k v + WAIT 1 0 on the master Sentinel names,
# recording confirmed writes. min(ROUNDS, 10) rounds of kill -9 of the master: failover
# time (kill to the first confirmed write on the new master) and confirmed writes the
# current master lacks (WAIT does not prevent loss on failover).
#
# Output: a table per system, RESULT_JSON, and summary lines
# (p50/max failover time over the unplanned failovers, the gaps of the others, totals).
# Exits non-zero on a lost acked Spool record, a split-brain epoch, a round without
# failover (or without acks after etcd came back) within 30 s, or digests that differ.
# The switchover timeline (old primary handed over, new one won the key and began its
# epoch, replicas following) comes from the nodes' logs.
#
# Usage: bash benches/failover_rounds.sh            (50 rounds)
#        ROUNDS=3 bash benches/failover_rounds.sh   (CI: the first three faults)
#        FAULTS=switchover ROUNDS=24 REDIS_ROUNDS=0 bash benches/failover_rounds.sh
# Environment (defaults in brackets):
#   ROUNDS [50]  REDIS_ROUNDS [min(ROUNDS,10); 0 skips Redis]  BASE_PORT [7700]
#   FAULTS [kill9 pause etcd-cut cut-all replica-kill etcd-restart etcd-member-kill]
#   ETCD_MEMBERS [3; 1 drops etcd-member-kill]
#   BUILD [1: cargo build --release -p spool -p spool-loadgen first]
#   BIN_DIR [${CARGO_TARGET_DIR:-target}/release]: where spool and spool-loadgen are
#   ETCD [etcd]  BENCH_DIR [target/failover-bench]  OUT_DIR [target/bench]
#   RESULT_JSON [$OUT_DIR/failover_rounds.json; FAULTS=switchover: failover_switchover.json]
# Ports, from BASE_PORT: etcd member m +2m (client) and +2m+1 (peer), etcd proxies
# +10+3i+m, nodes +20+i, redis +30.., sentinels +40.., peer proxies +50+i (127.0.0.1
# only).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ROUNDS="${ROUNDS:-50}"
REDIS_ROUNDS="${REDIS_ROUNDS:-$((ROUNDS < 10 ? ROUNDS : 10))}"
BASE_PORT="${BASE_PORT:-7700}"
BUILD="${BUILD:-1}"
BIN_DIR="${BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}"
ETCD="${ETCD:-etcd}"
BENCH_DIR="${BENCH_DIR:-$ROOT/target/failover-bench}"
OUT_DIR="${OUT_DIR:-$ROOT/target/bench}"
TTL_MS=2000
PAUSE_S=4
HEAL_S=60
FAILOVER_WAIT_S=30
ETCD_MEMBERS="${ETCD_MEMBERS:-3}"
case "$ETCD_MEMBERS" in 1 | 3) ;; *) echo "ETCD_MEMBERS is 1 or 3" >&2; exit 1 ;; esac
if [ -n "${FAULTS:-}" ]; then
    read -r -a FAULTS <<<"$FAULTS"
else
    FAULTS=(kill9 pause etcd-cut cut-all replica-kill etcd-restart)
    [ "$ETCD_MEMBERS" = 1 ] || FAULTS+=(etcd-member-kill)
fi
for f in "${FAULTS[@]}"; do
    case "$f" in
    kill9 | pause | etcd-cut | cut-all | replica-kill | etcd-restart | switchover) ;;
    etcd-member-kill) [ "$ETCD_MEMBERS" = 3 ] || { echo "$f needs ETCD_MEMBERS=3" >&2; exit 1; } ;;
    *) echo "unknown fault $f" >&2; exit 1 ;;
    esac
done

SPOOL="$BIN_DIR/spool"
LOADGEN="$BIN_DIR/spool-loadgen"
if [ "${FAULTS[*]}" = switchover ]; then
    RESULT_JSON="${RESULT_JSON:-$OUT_DIR/failover_switchover.json}"
else
    RESULT_JSON="${RESULT_JSON:-$OUT_DIR/failover_rounds.json}"
fi

log() { printf '== %s %s\n' "$(date +%T)" "$*" >&2; }
now_ms() { date +%s%3N; }

PIDS=()
cleanup() {
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] || continue
        kill -CONT "$pid" 2>/dev/null || true
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] || continue
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# wait_for SECONDS WHAT CMD...: poll CMD every 100 ms.
wait_for() {
    local limit=$1 what=$2
    shift 2
    local end=$((SECONDS + limit))
    until "$@"; do
        [ "$SECONDS" -lt "$end" ] || { log "timed out after ${limit}s: $what"; return 1; }
        sleep 0.1
    done
}
# Stop PID with TERM (CONT first, in case it is stopped) and wait for it.
stop_pid() {
    kill -CONT "$1" 2>/dev/null || true
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
kill9_pid() {
    kill -9 "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# --- build ---------------------------------------------------------------------------------
if [ "$BUILD" = 1 ]; then
    log "cargo build --release -p spool -p spool-loadgen"
    cargo build --release -p spool -p spool-loadgen
fi
for b in "$SPOOL" "$LOADGEN"; do
    [ -x "$b" ] || { echo "$b missing: build it or set BIN_DIR" >&2; exit 1; }
done
command -v "$ETCD" >/dev/null || { echo "etcd missing: apt-get install etcd-server" >&2; exit 1; }
for i in $(seq 0 5) $(seq 10 18) 20 21 22 30 31 32 40 41 42 50 51 52; do
    port_free $((BASE_PORT + i)) || { echo "port $((BASE_PORT + i)) taken: set BASE_PORT" >&2; exit 1; }
done
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR" "$OUT_DIR"
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
log "commit $COMMIT, $ROUNDS rounds of ${FAULTS[*]}, $ETCD_MEMBERS etcd member(s), binaries from $BIN_DIR, load $LOAD_START"

# --- etcd and its proxies --------------------------------------------------------------------
ETCD_PID=()
etcd_port() { echo $((BASE_PORT + 2 * $1)); }
ETCD_CLUSTER=""
for m in $(seq 0 $((ETCD_MEMBERS - 1))); do
    ETCD_CLUSTER="${ETCD_CLUSTER:+$ETCD_CLUSTER,}e$m=http://127.0.0.1:$(($(etcd_port "$m") + 1))"
done
# Member M, on its data dir (kept across restarts: the second start rejoins).
start_etcd_member() {
    local m=$1 state=new
    [ -d "$BENCH_DIR/etcd$m" ] && state=existing
    "$ETCD" --name "e$m" --data-dir "$BENCH_DIR/etcd$m" \
        --listen-client-urls "http://127.0.0.1:$(etcd_port "$m")" \
        --advertise-client-urls "http://127.0.0.1:$(etcd_port "$m")" \
        --listen-peer-urls "http://127.0.0.1:$(($(etcd_port "$m") + 1))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$(($(etcd_port "$m") + 1))" \
        --initial-cluster "$ETCD_CLUSTER" --initial-cluster-state "$state" \
        --heartbeat-interval 50 --election-timeout 500 >>"$BENCH_DIR/etcd$m.log" 2>&1 &
    ETCD_PID[m]=$!
    PIDS+=($!)
}
member_healthy() {
    curl -fsS -m 1 "http://127.0.0.1:$(etcd_port "$1")/health" 2>/dev/null | grep -q '"health":"true"'
}
etcd_healthy() {
    local m
    for m in $(seq 0 $((ETCD_MEMBERS - 1))); do member_healthy "$m" || return 1; done
}
for m in $(seq 0 $((ETCD_MEMBERS - 1))); do start_etcd_member "$m"; done
wait_for 30 "etcd healthy" etcd_healthy
log "$("$ETCD" --version | head -1), $ETCD_MEMBERS member(s)"

# Node i's proxy to etcd member m, and the one its peers reach it through.
ETCD_PROXY_PID=()
etcd_proxy_port() { echo $((BASE_PORT + 10 + 3 * $1 + $2)); }
PEER_PROXY_PID=()
peer_port() { echo $((BASE_PORT + 50 + $1)); }
proxy_ports=()
for i in 0 1 2; do
    for m in $(seq 0 $((ETCD_MEMBERS - 1))); do
        "$LOADGEN" cut-proxy --listen "127.0.0.1:$(etcd_proxy_port "$i" "$m")" \
            --target "127.0.0.1:$(etcd_port "$m")" 2>>"$BENCH_DIR/proxy$i.log" &
        ETCD_PROXY_PID[3 * i + m]=$!
        PIDS+=($!)
        proxy_ports+=("$(etcd_proxy_port "$i" "$m")")
    done
    "$LOADGEN" cut-proxy --listen "127.0.0.1:$(peer_port "$i")" \
        --target "127.0.0.1:$((BASE_PORT + 20 + i))" 2>>"$BENCH_DIR/proxy$i.log" &
    PEER_PROXY_PID[i]=$!
    PIDS+=($!)
    proxy_ports+=("$(peer_port "$i")")
done
wait_for 10 "proxies listening" bash -c \
    "for p in ${proxy_ports[*]}; do (exec 3<>/dev/tcp/127.0.0.1/\$p) || exit 1; done" \
    2>/dev/null
# Signal SIG to node i's etcd proxies (and with "peers", to its peer proxy too).
signal_proxies() { # sig node [peers]
    local m
    for m in $(seq 0 $((ETCD_MEMBERS - 1))); do kill "-$1" "${ETCD_PROXY_PID[3 * $2 + m]}"; done
    [ -z "${3:-}" ] || kill "-$1" "${PEER_PROXY_PID[$2]}"
}
# Node i's etcd endpoints: its proxies, member i (mod members) first.
cluster_url() {
    local m k url=""
    for k in $(seq 0 $((ETCD_MEMBERS - 1))); do
        m=$((($1 + k) % ETCD_MEMBERS))
        url="${url:+$url,}127.0.0.1:$(etcd_proxy_port "$1" "$m")"
    done
    echo "etcd://$url"
}

# --- the three nodes -------------------------------------------------------------------------
NODE_PID=("" "" "")
addr() { echo "127.0.0.1:$((BASE_PORT + 20 + $1))"; }
NODES="$(addr 0),$(addr 1),$(addr 2)"
for i in 0 1 2; do
    cat >"$BENCH_DIR/n$i.toml" <<EOF
[cluster]
lease_ttl_ms = $TTL_MS
node_name = "n$i"
advertise = "127.0.0.1:$(peer_port "$i")"

[replication]
sync_replica = true
EOF
done

status_json() { timeout 2 "$SPOOL" --addr "$(addr "$1")" status --json 2>/dev/null; }
node_up() { status_json "$1" >/dev/null; }
start_node() {
    RUST_LOG=info NO_COLOR=1 "$SPOOL" serve --data-dir "$BENCH_DIR/n$1" --listen "$(addr "$1")" \
        --config "$BENCH_DIR/n$1.toml" --cluster "$(cluster_url "$1")" \
        >>"$BENCH_DIR/n$1.log" 2>&1 &
    NODE_PID[$1]=$!
    PIDS+=($!)
    wait_for 30 "node $1 up" node_up "$1"
}
# The node that is primary and holds the leader key (none: empty, status 1).
primary() {
    local i
    for i in 0 1 2; do
        [ -n "${NODE_PID[i]}" ] || continue
        if status_json "$i" | jq -e '.role == "primary" and .coordinator.leader == .coordinator.node' \
            >/dev/null 2>&1; then
            echo "$i"
            return 0
        fi
    done
    return 1
}
# Healed: every etcd member and node running, a leader, both replicas connected to it.
healed() {
    local p
    etcd_healthy || return 1
    [ -n "${NODE_PID[0]}" ] && [ -n "${NODE_PID[1]}" ] && [ -n "${NODE_PID[2]}" ] || return 1
    p="$(primary)" || return 1
    status_json "$p" | jq -e '[.replicas[] | select(.connected)] | length == 2' >/dev/null 2>&1
}
for i in 0 1 2; do start_node "$i"; done
wait_for "$HEAL_S" "a leader with two replicas" healed
log "cluster up: node $(primary) leads"

# --- the writer -------------------------------------------------------------------------------
ACKS="$BENCH_DIR/acks.jsonl"
ADVERTISED="127.0.0.1:$(peer_port 0),127.0.0.1:$(peer_port 1),127.0.0.1:$(peer_port 2)"
"$LOADGEN" failover-writer --nodes "$NODES" --advertised "$ADVERTISED" --out "$ACKS" \
    2>"$BENCH_DIR/writer.log" &
WRITER=$!
PIDS+=($WRITER)
wait_for 30 "first acks" test -s "$ACKS"

# An ack after byte SIZE of the ack file from another node than OLD, or from OLD in a
# later epoch than EPOCH (restarted and elected again). awk reads to the end: an early
# exit would fail the pipeline on SIGPIPE.
acked_elsewhere() { # size old epoch
    tail -c +$(($1 + 1)) "$ACKS" | awk -v old="$2" -v ep="$3" '
        match($0, /"node":[0-9]+/) {
            n = substr($0, RSTART + 7, RLENGTH - 7)
            match($0, /"epoch":[0-9]+/)
            e = substr($0, RSTART + 8, RLENGTH - 8)
            if (n != old || e + 0 > ep + 0) found = 1
        }
        END { exit !found }'
}
wait_failover() { # size old epoch
    wait_for "$FAILOVER_WAIT_S" "an ack after the fault (not from node $2 in epoch $3)" \
        acked_elsewhere "$1" "$2" "$3"
}
# An ack after byte SIZE of the ack file that arrived at Unix ms T or later.
acked_after() { # size t_ms
    tail -c +$(($1 + 1)) "$ACKS" | awk -v t="$2" '
        match($0, /"t_ms":[0-9]+/) { if (substr($0, RSTART + 7, RLENGTH - 7) + 0 >= t + 0) found = 1 }
        END { exit !found }'
}
wait_acked_after() { # size t_ms
    wait_for "$FAILOVER_WAIT_S" "an ack after $2" acked_after "$1" "$2"
}
stop_etcd() {
    local m
    for m in $(seq 0 $((ETCD_MEMBERS - 1))); do stop_pid "${ETCD_PID[m]}"; done
}
start_etcd() {
    local m
    for m in $(seq 0 $((ETCD_MEMBERS - 1))); do start_etcd_member "$m"; done
    wait_for 30 "etcd healthy again" etcd_healthy
}
SWITCHOVERS=0
# Switch over from P to the other nodes in turn; sets PAUSED_MS and CLI_MS.
switchover() { # p
    local others=() t out start
    for t in 0 1 2; do [ "$t" = "$1" ] || others+=("$t"); done
    t="${others[$((SWITCHOVERS % 2))]}"
    SWITCHOVERS=$((SWITCHOVERS + 1))
    start=$(now_ms)
    out="$(timeout 30 "$SPOOL" --addr "$(addr "$1")" admin switchover --to "n$t" --yes 2>&1)" ||
        { log "switchover to n$t failed: $out"; CLI_MS=null; PAUSED_MS=null; return 1; }
    CLI_MS=$(($(now_ms) - start))
    PAUSED_MS="$(sed -n 's/.*writes paused \([0-9]*\) ms.*/\1/p' <<<"$out")"
    PAUSED_MS="${PAUSED_MS:-null}"
}

ROUND_DIR="$BENCH_DIR/rounds"
mkdir -p "$ROUND_DIR"
FAILED_ROUNDS=0
for r in $(seq 1 "$ROUNDS"); do
    fault="${FAULTS[$(((r - 1) % ${#FAULTS[@]}))]}"
    wait_for "$HEAL_S" "healed before round $r" healed
    p="$(primary)"
    since=$(now_ms)
    sleep 1 # a second of steady writes before the fault
    size=$(stat -c %s "$ACKS")
    epoch="$(tail -n 1 "$ACKS" | jq .epoch)" # the primary's, from its latest ack
    fault_ms=$(now_ms)
    ok=1
    PAUSED_MS=null
    CLI_MS=null
    case "$fault" in
    kill9)
        kill9_pid "${NODE_PID[p]}"
        NODE_PID[p]=""
        wait_failover "$size" "$p" "$epoch" || ok=0
        start_node "$p"
        ;;
    pause)
        kill -STOP "${NODE_PID[p]}"
        sleep "$PAUSE_S"
        kill -CONT "${NODE_PID[p]}"
        wait_failover "$size" "$p" "$epoch" || ok=0
        ;;
    etcd-cut)
        signal_proxies USR1 "$p"
        wait_failover "$size" "$p" "$epoch" || ok=0
        signal_proxies USR2 "$p"
        ;;
    cut-all)
        signal_proxies USR1 "$p" peers
        wait_failover "$size" "$p" "$epoch" || ok=0
        signal_proxies USR2 "$p" peers
        ;;
    etcd-restart)
        stop_etcd
        start_etcd || ok=0
        wait_acked_after "$size" "$(now_ms)" || ok=0
        ;;
    etcd-member-kill)
        m=$((p % ETCD_MEMBERS))
        kill9_pid "${ETCD_PID[m]}"
        wait_acked_after "$size" $((fault_ms + TTL_MS)) || ok=0
        start_etcd_member "$m"
        ;;
    switchover)
        switchover "$p" || ok=0
        [ "$ok" = 0 ] || wait_failover "$size" "$p" "$epoch" || ok=0
        ;;
    replica-kill)
        q=$(((p + 1) % 3))
        kill9_pid "${NODE_PID[p]}"
        NODE_PID[p]=""
        sleep "$(((TTL_MS + 200) / 1000)).$(((TTL_MS + 200) % 1000 / 100))"
        kill9_pid "${NODE_PID[q]}"
        NODE_PID[q]=""
        sleep 1
        start_node "$q"
        wait_failover "$size" "$p" "$epoch" || ok=0
        start_node "$p"
        ;;
    esac
    healed_ok=1
    wait_for "$HEAL_S" "healed after round $r" healed || healed_ok=0
    "$LOADGEN" failover-check --nodes "$NODES" --acks "$ACKS" --fault-ms "$fault_ms" \
        --old-node "$p" --since-ms "$since" --json "$ROUND_DIR/$r.json" \
        2>>"$BENCH_DIR/check.log" ||
        echo '{"check_failed": true}' >"$ROUND_DIR/$r.json"
    jq -c --arg fault "$fault" --argjson round "$r" --argjson old "$p" \
        --argjson fault_ms "$fault_ms" \
        --argjson failed_over "$ok" --argjson healed "$healed_ok" \
        --argjson paused_ms "$PAUSED_MS" --argjson cli_ms "$CLI_MS" \
        '. + {round: $round, fault: $fault, fault_ms: $fault_ms, old_node: $old,
              failed_over: ($failed_over == 1),
              healed: ($healed == 1)}
           + (if $paused_ms == null then {} else {paused_ms: $paused_ms, cli_ms: $cli_ms} end)' \
        "$ROUND_DIR/$r.json" >"$ROUND_DIR/$r.tmp"
    mv "$ROUND_DIR/$r.tmp" "$ROUND_DIR/$r.json"
    log "round $r $fault: $(jq -c '{failover_ms, handover_ms, max_gap_ms, paused_ms, new_node,
        acked_round, lost, split_brain, stale_epoch_acks}' "$ROUND_DIR/$r.json")"
    [ "$ok" = 1 ] && [ "$healed_ok" = 1 ] || FAILED_ROUNDS=$((FAILED_ROUNDS + 1))
done

# --- the end: writer stopped, replicas caught up, nodes stopped, digests -------------------------
stop_pid "$WRITER"
wait_for "$HEAL_S" "healed at the end" healed || true
FINAL_PRIMARY="$(primary || echo 0)"
"$LOADGEN" failover-check --nodes "$NODES" --acks "$ACKS" --json "$BENCH_DIR/final.json" \
    2>>"$BENCH_DIR/check.log" ||
    echo '{"check_failed": true}' >"$BENCH_DIR/final.json"
log_end() { status_json "$1" | jq -r '.logs[] | select(.name == "f") | .end_offset'; }
caught_up() {
    local e0 e1 e2
    e0="$(log_end 0)" && e1="$(log_end 1)" && e2="$(log_end 2)" &&
        [ -n "$e0" ] && [ "$e0" = "$e1" ] && [ "$e1" = "$e2" ]
}
wait_for "$HEAL_S" "replicas caught up" caught_up || true
for i in 0 1 2; do
    if [ "$i" != "$FINAL_PRIMARY" ]; then stop_pid "${NODE_PID[i]}"; NODE_PID[i]=""; fi
done
stop_pid "${NODE_PID[FINAL_PRIMARY]}"
NODE_PID[FINAL_PRIMARY]=""
for i in 0 1 2; do
    "$SPOOL" check --json "$BENCH_DIR/n$i" >"$BENCH_DIR/check$i.json" || true
done

# --- Redis Sentinel ---------------------------------------------------------------------------
REDIS_JSON="$BENCH_DIR/redis-rounds.jsonl"
: >"$REDIS_JSON"
if [ "$REDIS_ROUNDS" -gt 0 ]; then
    if ! command -v redis-sentinel >/dev/null 2>&1 || ! command -v redis-server >/dev/null 2>&1; then
        log "installing redis-server redis-sentinel"
        apt-get install -y redis-server redis-sentinel >/dev/null 2>&1 ||
            { apt-get update >/dev/null && apt-get install -y redis-server redis-sentinel >/dev/null; }
    fi
    log "$(redis-server --version)"
    RD="$BENCH_DIR/redis"
    mkdir -p "$RD"
    rport() { echo $((BASE_PORT + 30 + $1)); }
    REDIS_PID=("" "" "")
    for i in 0 1 2; do
        mkdir -p "$RD/r$i"
        {
            echo "port $(rport "$i")"
            echo "bind 127.0.0.1"
            echo "dir $RD/r$i"
            echo "appendonly yes"
            echo "appendfsync always"
            echo "save \"\""
            echo "protected-mode no"
            [ "$i" = 0 ] || echo "replicaof 127.0.0.1 $(rport 0)"
        } >"$RD/r$i.conf"
    done
    redis_up() { redis-cli -p "$(rport "$1")" ping >/dev/null 2>&1; }
    start_redis() {
        redis-server "$RD/r$1.conf" >>"$RD/r$1.log" 2>&1 &
        REDIS_PID[$1]=$!
        PIDS+=($!)
        wait_for 10 "redis $1 up" redis_up "$1"
    }
    for i in 0 1 2; do start_redis "$i"; done
    SENTINELS=""
    for i in 0 1 2; do
        sp=$((BASE_PORT + 40 + i))
        mkdir -p "$RD/s$i"
        cat >"$RD/s$i.conf" <<EOF
port $sp
bind 127.0.0.1
dir $RD/s$i
protected-mode no
sentinel monitor bench 127.0.0.1 $(rport 0) 2
sentinel down-after-milliseconds bench $TTL_MS
sentinel failover-timeout bench 4000
sentinel parallel-syncs bench 2
EOF
        redis-sentinel "$RD/s$i.conf" >>"$RD/s$i.log" 2>&1 &
        PIDS+=($!)
        SENTINELS="${SENTINELS:+$SENTINELS,}127.0.0.1:$sp"
    done
    master_port() {
        redis-cli -p $((BASE_PORT + 40)) sentinel get-master-addr-by-name bench 2>/dev/null | sed -n 2p
    }
    # Healed: every server running, the master Sentinel names has 2 replicas online, and
    # every sentinel names the same master.
    redis_healed() {
        local m i
        [ -n "${REDIS_PID[0]}" ] && [ -n "${REDIS_PID[1]}" ] && [ -n "${REDIS_PID[2]}" ] || return 1
        m="$(master_port)" && [ -n "$m" ] || return 1
        for i in 1 2; do
            [ "$(redis-cli -p $((BASE_PORT + 40 + i)) sentinel get-master-addr-by-name bench 2>/dev/null |
                sed -n 2p)" = "$m" ] || return 1
        done
        [ "$(redis-cli -p "$m" info replication 2>/dev/null | tr -d '\r' |
            grep -c 'state=online')" = 2 ]
    }
    wait_for "$HEAL_S" "redis master with 2 replicas" redis_healed
    RACKS="$BENCH_DIR/redis-acks.jsonl"
    "$LOADGEN" sentinel-writer --sentinels "$SENTINELS" --out "$RACKS" \
        2>"$BENCH_DIR/sentinel-writer.log" &
    RWRITER=$!
    PIDS+=($RWRITER)
    wait_for 30 "first redis acks" test -s "$RACKS"
    redis_acked_elsewhere() { # size old_port
        tail -c +$(($1 + 1)) "$RACKS" |
            awk -v old="\"master\":\"127.0.0.1:$2\"" 'index($0, old) == 0 && /"master"/ { found = 1 }
                                                        END { exit !found }'
    }
    for r in $(seq 1 "$REDIS_ROUNDS"); do
        wait_for "$HEAL_S" "redis healed before round $r" redis_healed
        m="$(master_port)"
        i=$((m - BASE_PORT - 30))
        since=$(now_ms)
        sleep 1
        size=$(stat -c %s "$RACKS")
        fault_ms=$(now_ms)
        kill9_pid "${REDIS_PID[i]}"
        REDIS_PID[i]=""
        ok=1
        wait_for "$FAILOVER_WAIT_S" "redis ack on another master" redis_acked_elsewhere "$size" "$m" ||
            ok=0
        start_redis "$i"
        healed_ok=1
        wait_for "$HEAL_S" "redis healed after round $r" redis_healed || healed_ok=0
        "$LOADGEN" sentinel-check --sentinels "$SENTINELS" --acks "$RACKS" --fault-ms "$fault_ms" \
            --old-master "127.0.0.1:$m" --since-ms "$since" --json "$RD/round$r.json" \
            2>>"$BENCH_DIR/check.log" ||
            echo '{"check_failed": true}' >"$RD/round$r.json"
        jq -c --argjson round "$r" --argjson failed_over "$ok" --argjson healed "$healed_ok" \
            --argjson fault_ms "$fault_ms" \
            --arg old "127.0.0.1:$m" \
            '. + {round: $round, fault: "kill9", fault_ms: $fault_ms, old_master: $old,
                  failed_over: ($failed_over == 1), healed: ($healed == 1)}' \
            "$RD/round$r.json" >>"$REDIS_JSON"
        log "redis round $r: $(tail -1 "$REDIS_JSON" | jq -c '{failover_ms, new_master, acked_round, lost}')"
    done
    stop_pid "$RWRITER"
fi

# --- table, summary, JSON ------------------------------------------------------------------------
set +e
python3 - "$ROUND_DIR" "$BENCH_DIR" "$REDIS_JSON" "$RESULT_JSON" "$COMMIT" "$ROUNDS" \
    "$FAILED_ROUNDS" "$LOAD_START" "$(cut -d' ' -f1-3 /proc/loadavg)" "$ETCD_MEMBERS" <<'EOF'
import datetime, glob, json, os, re, sys
rdir, bdir, redis_path, out, commit, nrounds, failed_rounds = sys.argv[1:8]
load_start, load_end, etcd_members = sys.argv[8:11]
UNPLANNED = ("kill9", "pause", "etcd-cut", "cut-all", "replica-kill")
# The nodes' log lines that time a handover (Unix ms, node): the old primary gave the key
# up, the new one won it and began its epoch, a node (re)attached to its upstream.
EVENTS = {"handed": "switchover: leadership handed over", "won": "won the leader key",
          "leading": "leading the cluster", "following": "following upstream"}
events = {k: [] for k in EVENTS}
for path in glob.glob(f"{bdir}/n[0-9].log"):
    node = int(re.search(r"n(\d)\.log$", path).group(1))
    for line in open(path, errors="replace"):
        for k, text in EVENTS.items():
            if text in line:
                m = re.match(r"(\S+)Z", line)
                t = datetime.datetime.fromisoformat(m.group(1)).replace(
                    tzinfo=datetime.timezone.utc)
                events[k].append((int(t.timestamp() * 1000), node))
for v in events.values():
    v.sort()
rounds = sorted((json.load(open(p)) for p in glob.glob(f"{rdir}/*.json")),
                key=lambda r: r["round"])
for i, r in enumerate(rounds):
    t0 = r["fault_ms"]
    t1 = rounds[i + 1]["fault_ms"] if i + 1 < len(rounds) else float("inf")
    def first(kind, node=None):
        hits = [t - t0 for t, n in events[kind] if t0 <= t < t1 and node in (None, n)]
        return hits[0] if hits else None
    # "elected": the fault to the first "won the leader key" of the round (the election
    # part of a failover, apart from a replica attaching and the writer finding it).
    r["elected_ms"] = first("won")
    if r["fault"] == "switchover":
        new = r.get("new_node")
        follows = [first("following", n) for n in range(3) if n != new]
        r["timeline"] = {"handed": first("handed", r["old_node"]), "won": first("won", new),
                         "leading": first("leading", new),
                         "replicas_following": follows}
final = json.load(open(f"{bdir}/final.json"))
checks = [json.load(open(f"{bdir}/check{i}.json")) for i in range(3)]
digests = [[(l["name"], l["start"], l["end"], l["digest"]) for l in c.get("logs", [])]
           for c in checks]
identical = all(c.get("ok") for c in checks) and all(d == digests[0] for d in digests)
redis = [json.loads(l) for l in open(redis_path) if l.strip()]

def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))] if v else None

def spread(rows, key):
    v = [r[key] for r in rows if r.get(key) is not None]
    return {f"{key}_p50": pct(v, 0.5), f"{key}_max": max(v) if v else None,
            f"{key}_min": min(v) if v else None, f"{key}_n": len(v)}

def summary(rows):
    out = {"rounds": len(rows),
           "failovers_measured": len([r for r in rows if r.get("failover_ms") is not None])}
    for key in ("failover_ms", "elected_ms", "handover_ms", "max_gap_ms", "paused_ms",
                "cli_ms"):
        out.update(spread(rows, key))
    return out

def show(v):
    return "-" if v is None else v

print()
print(f"Spool, 3 nodes on etcd ({etcd_members} member(s)), lease_ttl_ms 2000 "
      f"(commit {commit}), load average {load_start} at the start, {load_end} at the end")
print(f"{'round':>5} {'fault':<16} {'failover_ms':>11} {'elected_ms':>10} "
      f"{'handover_ms':>11} {'gap_ms':>6} {'paused_ms':>9} {'old->new':>8} "
      f"{'acked':>7} {'lost':>5} {'split-brain':>11} {'stale-epoch':>11}")
prev_stale = 0
prev_lost = 0
for r in rounds:
    lost = r.get("lost", 0)
    r["lost_in_round"] = lost - prev_lost
    prev_lost = lost
    fo = r.get("failover_ms")
    moved = f"{r['old_node']}->{r.get('new_node')}" if fo is not None else "-"
    none = "NONE" if r["fault"] in UNPLANNED + ("switchover",) else "-"
    print(f"{r['round']:>5} {r['fault']:<16} {fo if fo is not None else none:>11} "
          f"{show(r.get('elected_ms')):>10} {show(r.get('handover_ms')):>11} "
          f"{show(r.get('max_gap_ms')):>6} {show(r.get('paused_ms')):>9} {moved:>8} "
          f"{r.get('acked_round', 0):>7} "
          f"{r['lost_in_round']:>5} {len(r.get('split_brain', [])):>11} "
          f"{r.get('stale_epoch_acks', 0) - prev_stale:>11}")
    prev_stale = r.get("stale_epoch_acks", 0)
s = summary([r for r in rounds if r["fault"] in UNPLANNED])
by_fault = {f: summary([r for r in rounds if r["fault"] == f])
            for f in dict.fromkeys(r["fault"] for r in rounds)}
lost_total = final.get("lost", prev_lost)
split = final.get("split_brain", [])
print(f"spool: {len(rounds)} rounds; unplanned failovers ({s['rounds']}): p50 "
      f"{s['failover_ms_p50']} ms, max {s['failover_ms_max']} ms (goal: max < 3000); "
      f"{final.get('acked_total')} acked "
      f"(semi-sync:1 + sync; {final.get('late_acks', 0)} late), {lost_total} lost, "
      f"{len(split)} split-brain epochs, {final.get('stale_epoch_acks')} acks in a deposed "
      f"epoch; "
      f"digests {'identical' if identical else 'DIFFER'}")
for f, fs in by_fault.items():
    print(f"  {f:<16} failover p50 {fs['failover_ms_p50']} / max {fs['failover_ms_max']} ms "
          f"over {fs['failovers_measured']}/{fs['rounds']}; elected p50 "
          f"{fs['elected_ms_p50']} / max {fs['elected_ms_max']} ms; longest ack gap p50 "
          f"{fs['max_gap_ms_p50']} / max {fs['max_gap_ms_max']} ms")
sw = [r for r in rounds if r["fault"] == "switchover"]
if sw:
    fs = by_fault["switchover"]
    print(f"switchover ({len(sw)}): last ack on the old primary -> first on the new p50 "
          f"{fs['handover_ms_p50']} / max {fs['handover_ms_max']} ms; longest ack gap p50 "
          f"{fs['max_gap_ms_p50']} / max {fs['max_gap_ms_max']} ms (goal < 500); "
          f"paused_ms (server) p50 {fs['paused_ms_p50']} / max {fs['paused_ms_max']}; "
          f"command -> first ack on the new p50 {fs['failover_ms_p50']} / max "
          f"{fs['failover_ms_max']} ms; the command took p50 {fs['cli_ms_p50']} ms")
    tl = {}
    for key in ("handed", "won", "leading"):
        tl[key] = spread([r["timeline"] for r in sw], key)
    follow_first = [min(v) for r in sw
                    if (v := [x for x in r["timeline"]["replicas_following"] if x is not None])]
    follow_last = [max(v) for r in sw
                   if (v := [x for x in r["timeline"]["replicas_following"] if x is not None])]
    by_mode = {m: spread(sw, f"first_{m}_ms") for m in ("semi", "sync")}
    print("  timeline from the command, p50 / max ms: "
          + ", ".join(f"{k} {tl[k][k + '_p50']} / {tl[k][k + '_max']}" for k in tl)
          + f", first replica following {pct(follow_first, 0.5)} / "
          f"{max(follow_first) if follow_first else None}, second "
          f"{pct(follow_last, 0.5)} / {max(follow_last) if follow_last else None}, "
          f"first semi-sync ack {by_mode['semi']['first_semi_ms_p50']} / "
          f"{by_mode['semi']['first_semi_ms_max']}, first sync ack "
          f"{by_mode['sync']['first_sync_ms_p50']} / {by_mode['sync']['first_sync_ms_max']}")
    by_fault["switchover"]["timeline"] = tl
rs = summary(redis)
if redis:
    print()
    print("Redis Sentinel, master + 2 replicas, 3 sentinels, down-after-milliseconds 2000")
    print(f"{'round':>5} {'fault':<13} {'failover_ms':>11} {'new master':>16} {'acked':>7} "
          f"{'lost':>5}")
    prev = 0
    for r in redis:
        lost = r.get("lost", 0)
        r["lost_in_round"] = lost - prev
        prev = lost
        fo = r.get("failover_ms")
        print(f"{r['round']:>5} {r['fault']:<13} {fo if fo is not None else 'NONE':>11} "
              f"{str(r.get('new_master')):>16} {r.get('acked_round', 0):>7} "
              f"{r['lost_in_round']:>5}")
    print(f"redis: {rs['rounds']} rounds, failover p50 {rs['failover_ms_p50']} ms, max "
          f"{rs['failover_ms_max']} ms; {redis[-1].get('acked_total')} WAIT-confirmed, "
          f"{redis[-1].get('lost')} lost")
result = {"commit": commit, "rounds_asked": int(nrounds), "lease_ttl_ms": 2000,
          "load_start": load_start, "load_end": load_end, "etcd_members": int(etcd_members),
          "spool": {"summary": s, "by_fault": by_fault, "rounds": rounds, "final": final,
                    "digests": digests, "digests_identical": identical},
          "redis_sentinel": {"summary": rs, "rounds": redis,
                             "down_after_ms": 2000, "failover_timeout_ms": 4000}}
os.makedirs(os.path.dirname(out), exist_ok=True)
json.dump(result, open(out, "w"), indent=2)
print(f"\nwrote {out}")
bad = (lost_total > 0 or split or not identical or int(failed_rounds) > 0
       or final.get("check_failed") or any(r.get("check_failed") for r in rounds))
sys.exit(1 if bad else 0)
EOF
status=$?
[ "$status" = 0 ] || log "FAILED: lost acked records, split-brain, a round without failover, or digests differ"
exit "$status"
