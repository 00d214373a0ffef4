# Sourced (from the repository root) by scripts/bench.sh, bench-share.sh
# and bench-formats.sh: the variables they share (bench.sh's header lists
# them), say, drop, the checkpoint they start from, and the cleanup of the
# broker a script started (PID, SOCK).
BUILD=${VRAM_BUILD:-build}
PY=${VRAM_PYTHON:-.venv/bin/python}
SIZE=${BENCH_SIZE:-4294967296}
DIR=${BENCH_DIR:-/var/tmp/vramd-bench}
OUT=${BENCH_OUT:-$BUILD/bench/results.txt}
FILE="$DIR/bench-$SIZE.safetensors"
mkdir -p "$DIR" "$(dirname "$OUT")"

say() { echo "$*" | tee -a "$OUT"; }

# Cold runs drop the page cache: root only (CAN_DROP 0 otherwise, and drop
# does nothing; the reports say so).
CAN_DROP=0
if [ "$(id -u)" -eq 0 ] && sync && echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then CAN_DROP=1; fi
drop() { [ $CAN_DROP -eq 1 ] && sync && echo 3 > /proc/sys/vm/drop_caches || true; }

# The SDXL-shaped checkpoint of SIZE bytes (~2,500 tensors) at FILE,
# written once and kept for later runs.
bench_checkpoint() {
	if [ ! -s "$FILE" ]; then
		echo "== writing a $SIZE-byte checkpoint (~2,500 tensors, SDXL-like) to $FILE"
		"$PY" tests/make_checkpoint.py --out "$FILE.tmp" --size "$SIZE" --seed 7
		mv "$FILE.tmp" "$FILE"
	fi
}

bench_cleanup() {
	[ -n "${PID:-}" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
	rm -f "$SOCK"
}
