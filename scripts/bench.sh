#!/bin/sh
# make bench: file -> memory loading and paging, as ratios measured in one run.
#
#   BENCH_SIZE   checkpoint size in bytes (default 4 GiB)
#   BENCH_DIR    where the checkpoint lives (default /var/tmp/vramd-bench; a
#                real file system: O_DIRECT does not work on tmpfs)
#   BENCH_OUT    results file (default $BUILD/bench/results.txt)
#   BENCH_ONLY   "pager" to run only the paging and two-client parts,
#                "load" to run only the loading part, "share" only the
#                shared copies (scripts/bench-share.sh), "formats" only
#                the GGUF and PyTorch zip files (scripts/bench-formats.sh),
#                "busy" only busy clients sharing one GPU (issue 12:
#                scripts/bench-busy.sh, BENCH_BUSY_SCALE, BENCH_BUSY_RUNS)
#   BENCH_ROUNDS, BENCH_FIO_SHAPES, BENCH_ALLOC_N: see scripts/bench-load.sh
#
# Cold runs drop the page cache (root only; otherwise they are skipped and
# the report says so).  Every loader's destination memory is fresh memory it
# allocates, as in real use; on VMs first-touch page faults cost as much as
# the I/O, which the report's "memory" line measures.
set -eu
. scripts/bench-env.sh
SOCK="$DIR/vramd.sock"
VRAMCTL="$BUILD/bin/vramctl --socket $SOCK"
: > "$OUT"

cleanup() {
	[ -n "${PID:-}" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
	[ -n "${PIDB:-}" ] && kill "$PIDB" 2>/dev/null || true
	rm -f "$SOCK"
}
trap cleanup EXIT INT TERM

if [ "${BENCH_ONLY:-}" = share ]; then
	exec sh scripts/bench-share.sh
fi
if [ "${BENCH_ONLY:-}" = busy ]; then
	exec sh scripts/bench-busy.sh
fi
bench_checkpoint
BYTES=$(stat -c %s "$FILE")
if [ "${BENCH_ONLY:-}" = formats ]; then
	exec sh scripts/bench-formats.sh
fi

warm() { cat "$FILE" > /dev/null; }

# GB/s of a command that reads the whole file; fio prints its own bandwidth.
fio_gbps() { # $1 direct(0/1)
	fio --name=r --filename="$FILE" --rw=read --bs=8M --iodepth=16 --ioengine=io_uring \
	    --direct="$1" --output-format=terse --terse-version=3 2>/dev/null |
		awk -F';' '{ printf "%.3f", $7 * 1024 / 1e9 }' # read bandwidth KiB/s
}
mmap_gbps() { "$BUILD/tests/helper-mmapload" "$FILE" | awk '{ printf "%.3f %.3f", $1 / $2 / 1e9, $3 / ($1 / 1e9) }'; }
vramd_gbps() { # $1 device, $2 io mode
	$VRAMCTL load "$FILE" --device "$1" --io "$2" --private --json |
		"$PY" -c 'import json,sys; d=json.load(sys.stdin); print("%.3f %.3f" % (d["gbps"], d["cpu_seconds"] / (d["bytes"] / 1e9)))'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "n/a" }'; }

HOST_POOL=$((SIZE / 1073741824 * 2 + 4))GiB
"$BUILD/bin/vramd" --socket "$SOCK" --admin-socket "$DIR/admin.sock" --state-dir "$DIR/state" --sim-gpus "$((SIZE / 1073741824 + 2))GiB" --host-pool "$HOST_POOL" \
	--no-cuda 2>"$DIR/vramd.log" &
PID=$!
while [ ! -S "$SOCK" ]; do sleep 0.05; kill -0 $PID; done

say "vramd bench, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, kernel $(uname -r)"
say "checkpoint: $FILE, $BYTES bytes, $($VRAMCTL inspect "$FILE" --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["tensors"])') tensors"
# First touch of fresh shared memory (what every loader's destination is):
# dd into /dev/shm allocates shmem pages just as grant memfds do.
SHM=/dev/shm/vramd-bench-probe.$$
MEM=$(dd if=/dev/zero of=$SHM bs=8M count=128 2>&1 | awk '/copied/ { print $(NF-1), $NF }')
rm -f $SHM
say "memory: first touch of 1 GiB of fresh shared memory (dd to /dev/shm): $MEM"
say ""

if [ "${BENCH_ONLY:-}" != pager ]; then
# Loading: interleaved rounds against fio's best shape and the peers, with
# and without the ready reserve, and ALLOC round trips (scripts/bench-load.sh,
# which starts brokers of its own).
VRAM_BUILD="$BUILD" VRAM_PYTHON="$PY" BENCH_FILE="$FILE" BENCH_DIR="$DIR" BENCH_OUT="$OUT" sh scripts/bench-load.sh
fi
if [ "${BENCH_ONLY:-}" = load ]; then
	sh scripts/bench-formats.sh
	sh scripts/bench-share.sh
	say "results in $OUT"
	exit 0
fi

# Paging: half the unet donated to cpu; no compute, then compute-bound.
VV=$(awk -v s="$SIZE" 'BEGIN { printf "%.3f", s * 0.75 / 2 / 1e9 }')
pager_run() { # $1 compute ms/GB
	$VRAMCTL bench pager "$FILE" --unet-virtual-vram-gb "$VV" --passes 5 --compute-ms-per-gb "$1" --json >"$DIR/pager.json"
	"$PY" - "$DIR/pager.json" "$1" <<'PYEOF' | tee -a "$OUT"
import json, sys
d = json.load(open(sys.argv[1])); ms = sys.argv[2]
print("pager, compute %s ms/GB, window %.0f MiB:" % (ms, d["window_bytes"] / 2**20))
for p in d["passes"]:
    print("  pass %d: wall %.3f s, stall %.3f s, paged %.0f MiB, %.2f GB/s (resident: %.3f s)" % (
        p["pass"], p["wall_s"], p["stall_s"], p["bytes_paged"] / 2**20, p["paging_gbps"], p["resident_wall_s"]))
print("  memcpy of the same bytes %.2f GB/s; paging/memcpy %.2f" % (d["memcpy_gbps"], d["paging_to_memcpy"]))
print("  stall after the first pass %.1f%%" % (100 * d["stall_fraction"]))
PYEOF
}
pager_run 0
say "  (target with no compute: paging/memcpy >= 0.90)"
# Compute 1.5x the copy time measured above: the case where prefetch can
# hide every copy.
MS=$("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); g=max(p["paging_gbps"] for p in d["passes"][1:]); print("%.0f" % (1.5 * 1000 / g))' "$DIR/pager.json")
pager_run "$MS"
say "  (compute = 1.5x the copy time per GB; target: stall <= 5% after the first pass)"
say ""

# Two clients on one simulated 8 GiB GPU, each wanting 6 GiB.
kill "$PID"; wait "$PID" 2>/dev/null || true
FILE6="$DIR/bench-two-clients.safetensors"
if [ ! -s "$FILE6" ]; then
	"$PY" tests/make_checkpoint.py --out "$FILE6.tmp" --size $((6 * 1024 * 1024 * 1024)) --seed 9
	mv "$FILE6.tmp" "$FILE6"
fi
"$BUILD/bin/vramd" --socket "$SOCK" --admin-socket "$DIR/admin.sock" --state-dir "$DIR/state" --sim-gpus 8GiB --host-pool 8GiB --no-cuda --reclaim-deadline-ms 10000 2>"$DIR/vramd2.log" &
PID=$!
while [ ! -S "$SOCK" ]; do sleep 0.05; kill -0 $PID; done
ALL="--unet-virtual-vram-gb 0 --clip-compute-device cuda:0 --clip-virtual-vram-gb 0 --vae-device cuda:0"
warm
T0=$(date +%s.%N)
# shellcheck disable=SC2086
rm -f "$DIR/a.ready"
$VRAMCTL bench pager "$FILE6" $ALL --passes 40 --compute-ms-per-gb 100 --ready-file "$DIR/a.ready" --json >"$DIR/a.json" &
PIDB=$!
# B arrives while A is paging (loaded, pager running).
i=0
while [ ! -e "$DIR/a.ready" ] && [ $i -lt 1200 ]; do i=$((i + 1)); sleep 0.1; done
# shellcheck disable=SC2086
$VRAMCTL bench pager "$FILE6" $ALL --passes 5 --compute-ms-per-gb 100 --json >"$DIR/b.json"
RB=$?
wait $PIDB; RA=$?
PIDB=
T1=$(date +%s.%N)
USED=$($VRAMCTL status --json | "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(sum(x["used"] for x in d["devices"]))')
say "two clients on a simulated 8 GiB GPU, each loading 6 GiB onto it:"
say "  client A exit $RA, client B exit $RB, $(awk -v a="$T0" -v b="$T1" 'BEGIN { printf "%.1f", b - a }') s"
say "  $(grep -c 'RECLAIM' "$DIR/vramd2.log" || true) RECLAIM requests, $(grep -c 'ignored RECLAIM' "$DIR/vramd2.log" || true) ignored; bytes used after both exit: $USED"
say ""
sh scripts/bench-formats.sh
sh scripts/bench-share.sh
sh scripts/bench-busy.sh
say "results in $OUT"
