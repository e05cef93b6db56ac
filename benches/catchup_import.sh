#!/usr/bin/env bash
# Replica catch-up beside fio, and the two ways a replica writes segments it receives
# whole (issue 20, item 3): `spool bench catchup` (fill a primary, time a fresh replica's
# full sync, then a partial one) with SPOOL_IMPORT_IO=uring and =threads alternated in
# one run, beside fio sequential 1 MiB O_DIRECT writes with --end_fsync=1 at qd1 (psync)
# and qd8 (io_uring) on the same disk.
#
# Usage: bash benches/catchup_import.sh
# Environment (defaults in brackets):
#   GIB [2]  RUNS [3]  BUILD [1]  BIN_DIR [${CARGO_TARGET_DIR:-target}/release]
#   BENCH_DIR [target/bench-data] (the disk measured)  OUT_DIR [target/bench]
# Output: a table on stdout and OUT_DIR/catchup_import.json (every run; medians; a `plot`
# entry for `spool-loadgen plot`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
GIB="${GIB:-2}"
RUNS="${RUNS:-3}"
BIN_DIR="${BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}"
BENCH_DIR="${BENCH_DIR:-$ROOT/target/bench-data}"
OUT_DIR="${OUT_DIR:-$ROOT/target/bench}"
mkdir -p "$BENCH_DIR" "$OUT_DIR"
WORK="$(mktemp -d "$BENCH_DIR/catchup.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
log() { printf '== %s\n' "$*" >&2; }

command -v fio >/dev/null || {
  log "installing fio"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null; }
}
if [ "${BUILD:-1}" = 1 ]; then
  log "cargo build --release -p spool"
  cargo build --release -p spool >&2
fi
SPOOL="$BIN_DIR/spool"

# fio's write bandwidth in MB/s: 1 MiB sequential O_DIRECT writes of GIB, synced at the end.
fio_mbps() { # engine iodepth
  fio --name=seq --rw=write --bs=1M --direct=1 --size="${GIB}G" --ioengine="$1" \
    --iodepth="$2" --end_fsync=1 --filename="$WORK/fio.dat" --output-format=json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["write"]["bw_bytes"] / 1e6)'
  rm -f "$WORK/fio.dat"
}

# One catch-up run: "full_MBps partial_MBps replica_cpu_s" for the import writer $1.
catchup() {
  SPOOL_IMPORT_IO="$1" "$SPOOL" bench catchup --dir "$WORK" --gib "$GIB" \
    --json "$WORK/c.json" >/dev/null 2>&1
  python3 - "$WORK/c.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
ph = {p["phase"]: p for p in d["phases"]}
print(ph["full"]["mb_per_s"], ph["partial"]["mb_per_s"], ph["full"]["replica_cpu_s"])
PY
}

log "commit $(git rev-parse --short HEAD), $RUNS runs, $GIB GiB, load $(cut -d' ' -f1-3 /proc/loadavg)"
: >"$WORK/results.txt"
for r in $(seq "$RUNS"); do
  psync=$(fio_mbps psync 1)
  uring=$(fio_mbps io_uring 8)
  echo "fio-psync-qd1 $psync 0 0" >>"$WORK/results.txt"
  echo "fio-uring-qd8 $uring 0 0" >>"$WORK/results.txt"
  for how in uring threads; do
    row=$(catchup "$how")
    echo "import-$how $row" >>"$WORK/results.txt"
    log "run $r: import $how $row (full MB/s, partial MB/s, replica CPU s); fio psync $psync, uring $uring"
  done
done

python3 - "$OUT_DIR/catchup_import.json" "$(git rev-parse --short HEAD)" "$GIB" "$WORK/results.txt" <<'PY'
import datetime, json, statistics, sys
NOW = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
out, commit, gib, path = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
rows = {}
for line in open(path):
    kind, full, partial, cpu = line.split()
    rows.setdefault(kind, []).append([float(full), float(partial), float(cpu)])
med = {k: [statistics.median(r[i] for r in v) for i in range(3)] for k, v in rows.items()}
fio_best = max(med["fio-psync-qd1"][0], med["fio-uring-qd8"][0])
print(f"{'what':<16} {'full MB/s':>10} {'partial MB/s':>13} {'replica CPU s':>14} {'vs fio best':>12}")
for k in ("fio-psync-qd1", "fio-uring-qd8", "import-uring", "import-threads"):
    f, p, c = med[k]
    print(f"{k:<16} {f:>10.0f} {p:>13.0f} {c:>14.2f} {f / fio_best:>12.2f}")
plot = {"title": f"Replica catch-up of {gib:g} GiB beside fio 1 MiB O_DIRECT + end fsync (medians)",
        "unit": "MB/s",
        "series": {"fio psync qd1": med["fio-psync-qd1"][0], "fio io_uring qd8": med["fio-uring-qd8"][0],
                   "full sync, io_uring import": med["import-uring"][0],
                   "full sync, threads import": med["import-threads"][0],
                   "partial, io_uring import": med["import-uring"][1],
                   "partial, threads import": med["import-threads"][1]}}
json.dump({"commit": commit, "date": NOW, "gib": gib, "runs": rows, "medians": med, "fio_best_mb_per_s": fio_best,
           "plot": plot}, open(out, "w"), indent=1)
print(f"\nwrote {out}")
PY
