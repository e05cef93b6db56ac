#!/usr/bin/env bash
# Spool's storage engine beside fio on the same disk, in one run.
#
# 1. cargo build --release
# 2. spool bench storage (group commit, N writers awaiting fdatasync) -> JSON
# 3. per spool run, fio with io_uring writing the same bytes per fdatasync that spool's group
#    commit reached (mean bytes per sync, rounded to 512 B, at least 4 KiB), overwriting an
#    already written file (like spool's pre-zeroed segments): the physical limit for that
#    flush size; and the same with O_DIRECT + O_DSYNC (the reference of uring-direct).
# 4. a table: spool vs fio MB/s and their ratio, spool records/s and latency percentiles.
#
# Usage: bash benches/storage_vs_fio.sh
# Environment (defaults in brackets):
#   SECONDS_PER_RUN [10]  measured seconds per spool run and per fio run
#   BENCH_DIR [target/bench-data]  where data files go (must be on the disk under test)
#   OUT_DIR [target/bench]  where JSON results go
#   BACKENDS [std,uring,uring-direct]  WRITERS [64]  RECORD_SIZES [100,1024]  FIO_SIZE [1G]
#   DURABILITY [fsync]  RECORDS_PER_APPEND [1]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SECONDS_PER_RUN="${SECONDS_PER_RUN:-10}"
BENCH_DIR="${BENCH_DIR:-$ROOT/target/bench-data}"
OUT_DIR="${OUT_DIR:-$ROOT/target/bench}"
BACKENDS="${BACKENDS:-std,uring,uring-direct}"
WRITERS="${WRITERS:-64}"
RECORD_SIZES="${RECORD_SIZES:-100,1024}"
FIO_SIZE="${FIO_SIZE:-1G}"
DURABILITY="${DURABILITY:-fsync}"
RECORDS_PER_APPEND="${RECORDS_PER_APPEND:-1}"

mkdir -p "$BENCH_DIR" "$OUT_DIR"
FIO_FILE="$BENCH_DIR/fio-ref.dat"
SPOOL_JSON="$OUT_DIR/storage.json"
RESULT_JSON="$OUT_DIR/storage_vs_fio.json"

log() { printf '== %s\n' "$*" >&2; }

# --- tools -------------------------------------------------------------------------------
if ! command -v fio >/dev/null 2>&1; then
    log "installing fio"
    if ! apt-get install -y fio >/dev/null 2>&1; then
        apt-get update >/dev/null
        apt-get install -y fio >/dev/null
    fi
fi
if command -v jq >/dev/null 2>&1; then JSON_TOOL=jq; else JSON_TOOL=python3; fi
log "fio: $(fio --version); JSON parsing with $JSON_TOOL"
log "data dir: $BENCH_DIR ($(df -P "$BENCH_DIR" | awk 'NR==2 {print $1}'))"

# --- build -------------------------------------------------------------------------------
log "cargo build --release"
cargo build --release
SPOOL="$ROOT/target/release/spool"

# --- spool -------------------------------------------------------------------------------
log "spool bench storage: backends=$BACKENDS writers=$WRITERS record sizes=$RECORD_SIZES, ${SECONDS_PER_RUN}s each"
"$SPOOL" bench storage \
    --dir "$BENCH_DIR" \
    --backends "$BACKENDS" \
    --writers "$WRITERS" \
    --record-bytes "$RECORD_SIZES" \
    --records-per-append "$RECORDS_PER_APPEND" \
    --durability "$DURABILITY" \
    --seconds "$SECONDS_PER_RUN" \
    --json "$SPOOL_JSON"

# One TSV line per spool run.
spool_runs() {
    if [ "$JSON_TOOL" = jq ]; then
        jq -r '.[] | [.backend, .record_bytes, .mean_bytes_per_sync, .payload_mb_per_s,
                      .disk_mb_per_s, .records_per_s, .latency_us.p50, .latency_us.p99,
                      .latency_us.p999] | @tsv' "$SPOOL_JSON"
    else
        python3 - "$SPOOL_JSON" <<'EOF'
import json, sys
for r in json.load(open(sys.argv[1])):
    l = r["latency_us"]
    print("\t".join(str(v) for v in [r["backend"], r["record_bytes"], r["mean_bytes_per_sync"],
        r["payload_mb_per_s"], r["disk_mb_per_s"], r["records_per_s"], l["p50"], l["p99"], l["p999"]]))
EOF
    fi
}

# MB/s, IOPS, sync latency p50 and p99 (µs) of a fio JSON output.
fio_fields() {
    if [ "$JSON_TOOL" = jq ]; then
        jq -r '.jobs[0] | [(.write.bw_bytes / 1e6), .write.iops,
                           ((.sync.lat_ns.percentile["50.000000"] // 0) / 1e3),
                           ((.sync.lat_ns.percentile["99.000000"] // 0) / 1e3)] | @tsv' "$1"
    else
        python3 - "$1" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
p = j.get("sync", {}).get("lat_ns", {}).get("percentile", {})
print("\t".join(str(v) for v in [j["write"]["bw_bytes"] / 1e6, j["write"]["iops"],
    p.get("50.000000", 0) / 1e3, p.get("99.000000", 0) / 1e3]))
EOF
    fi
}

# --- fio -----------------------------------------------------------------------------------
# Write the whole file once so that the measured passes overwrite allocated, written blocks.
log "fio preparation: sequential write of $FIO_FILE ($FIO_SIZE, 1 MiB blocks, end_fsync)"
rm -f "$FIO_FILE"
fio --name=prep --ioengine=psync --rw=write --bs=1M --size="$FIO_SIZE" --end_fsync=1 \
    --filename="$FIO_FILE" --output-format=json --output="$OUT_DIR/fio-prep.json" >/dev/null
FIO_LAYOUT="overwrite of a file pre-written by a sequential fio pass"
# The first synced passes after the preparation (and after spool's files were deleted) run
# slow while the disk settles: an unmeasured write+fdatasync pass goes first.
sync
log "fio settle pass (not measured): 4 KiB write+fdatasync, 3s"
fio --name=settle --ioengine=io_uring --rw=write --fdatasync=1 --bs=4k --size="$FIO_SIZE" \
    --runtime=3 --time_based --filename="$FIO_FILE" --output-format=json \
    --output="$OUT_DIR/fio-settle.json" >/dev/null

ROWS="$OUT_DIR/storage_vs_fio.tsv"
: >"$ROWS"
while IFS=$'\t' read -r backend rb bps pay_mb disk_mb recs p50 p99 p999; do
    bs=$(awk -v b="$bps" 'BEGIN { n = int(b / 512 + 0.5) * 512; if (n < 4096) n = 4096; print n }')
    out="$OUT_DIR/fio-$backend-$rb.json"
    log "fio: bs=$bs (spool $backend ${rb} B: $bps B per fdatasync), ${SECONDS_PER_RUN}s, $FIO_LAYOUT"
    fio --name=ref --ioengine=io_uring --rw=write --fdatasync=1 --bs="$bs" --size="$FIO_SIZE" \
        --runtime="$SECONDS_PER_RUN" --time_based --filename="$FIO_FILE" \
        --output-format=json --output="$out" >/dev/null
    IFS=$'\t' read -r fio_mb fio_iops fio_p50 fio_p99 < <(fio_fields "$out")
    dout="$OUT_DIR/fio-direct-$backend-$rb.json"
    fio --name=ref --ioengine=io_uring --rw=write --direct=1 --sync=dsync --bs="$bs" \
        --size="$FIO_SIZE" --runtime="$SECONDS_PER_RUN" --time_based --filename="$FIO_FILE" \
        --output-format=json --output="$dout" >/dev/null
    IFS=$'\t' read -r fio_direct_mb _ _ _ < <(fio_fields "$dout")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$backend" "$rb" "$bps" "$bs" "$pay_mb" "$disk_mb" "$fio_mb" "$fio_iops" \
        "$fio_p50" "$fio_p99" "$recs" "$p50" "$p99" "$p999" "$fio_direct_mb" >>"$ROWS"
done < <(spool_runs)
rm -f "$FIO_FILE"

# --- report --------------------------------------------------------------------------------
echo
echo "spool (group commit, $WRITERS writers, $DURABILITY) vs fio (io_uring, write+fdatasync at the same bytes per flush; $FIO_LAYOUT), ${SECONDS_PER_RUN}s each, $BENCH_DIR"
echo "MB = 10^6 bytes. spool disk MB/s counts frame bytes (headers, length prefixes) as fio counts its blocks; ratio = spool disk / fio."
awk -F'\t' '
BEGIN {
    printf "%-12s %6s %9s %7s | %10s %10s %9s %6s %9s %6s | %9s %7s | %10s %8s %8s %8s\n",
        "io", "rec_B", "B/sync", "fio_bs", "spool_MB/s", "disk_MB/s", "fio_MB/s", "ratio",
        "fio_dio", "ratio", "fio_iops", "fio_p50", "spool_r/s", "p50_us", "p99_us", "p999_us"
}
{
    ratio = ($7 > 0) ? $6 / $7 : 0
    dratio = ($15 > 0) ? $6 / $15 : 0
    printf "%-12s %6d %9.0f %7d | %10.1f %10.1f %9.1f %6.2f %9.1f %6.2f | %9.0f %7.0f | %10.0f %8.0f %8.0f %8.0f\n",
        $1, $2, $3, $4, $5, $6, $7, ratio, $15, dratio, $8, $9, $11, $12, $13, $14
}' "$ROWS"

# Combined JSON next to the raw outputs.
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
python3 - "$ROWS" "$RESULT_JSON" "$FIO_LAYOUT" "$SECONDS_PER_RUN" "$COMMIT" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" <<'EOF'
import json, sys
rows, out, layout, secs = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
commit, now = sys.argv[5], sys.argv[6]
keys = ["backend", "record_bytes", "spool_bytes_per_sync", "fio_bs", "spool_payload_mb_per_s",
        "spool_disk_mb_per_s", "fio_mb_per_s", "fio_iops", "fio_sync_p50_us", "fio_sync_p99_us",
        "spool_records_per_s", "spool_p50_us", "spool_p99_us", "spool_p999_us",
        "fio_direct_dsync_mb_per_s"]
res = []
for line in open(rows):
    v = line.rstrip("\n").split("\t")
    d = {k: (x if k == "backend" else float(x)) for k, x in zip(keys, v)}
    d["ratio_disk_vs_fio"] = round(d["spool_disk_mb_per_s"] / d["fio_mb_per_s"], 3) if d["fio_mb_per_s"] else None
    d["ratio_payload_vs_fio"] = round(d["spool_payload_mb_per_s"] / d["fio_mb_per_s"], 3) if d["fio_mb_per_s"] else None
    fd = d["fio_direct_dsync_mb_per_s"]
    d["ratio_disk_vs_fio_direct"] = round(d["spool_disk_mb_per_s"] / fd, 3) if fd else None
    d["fio_layout"] = layout
    d["seconds"] = secs
    res.append(d)
# Each backend's disk MB/s; fio's at the first backend's flush size per record size.
series = {}
for d in res:
    rb = int(d["record_bytes"])
    series[f'{d["backend"]} {rb} B'] = d["spool_disk_mb_per_s"]
    series.setdefault(f'fio {rb} B', d["fio_mb_per_s"])
    series.setdefault(f'fio direct {rb} B', d["fio_direct_dsync_mb_per_s"])
plot = {"title": "Group commit, 64 writers, beside fio at the same bytes per sync", "unit": "MB/s",
        "series": series}
json.dump({"commit": commit, "date": now, "runs": res, "plot": plot}, open(out, "w"), indent=2)
EOF
log "results: $SPOOL_JSON, $RESULT_JSON, $OUT_DIR/fio-*.json"
