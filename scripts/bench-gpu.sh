#!/bin/sh
# make bench-gpu: file -> VRAM on a real NVIDIA GPU, cold and warm, against
#   (a) the pinned host-to-device ceiling measured in the same run (torch,
#       pinned tensor, copy_ non_blocking + synchronize), and the storage
#       read rate (fio O_DIRECT io_uring);
#   (b) safetensors.torch.load_file(path, device="cuda:0") + synchronize.
# Targets (ratios, same run): vramd >= 0.90 of min(storage, pinned H2D) and
# >= 5x safetensors, cold.  Exits 77 where there is no GPU.
#
#   BENCH_GPU_SIZE  checkpoint size (default 4 GiB)
#   BENCH_DIR       where it lives (default /var/tmp/vramd-bench; a real fs)
#   BENCH_OUT       results file (default $BUILD/bench/gpu-results.txt)
#   BENCH_GPU_SIM   1: dry run of this script against a simulated GPU (to
#                   check the script where there is no GPU; numbers mean
#                   nothing and the report says so)
set -u
BUILD=${VRAM_BUILD:-build}
PY=${VRAM_PYTHON:-.venv/bin/python}
SIZE=${BENCH_GPU_SIZE:-4294967296}
DIR=${BENCH_DIR:-/var/tmp/vramd-bench}
OUT=${BENCH_OUT:-$BUILD/bench/gpu-results.txt}
FILE="$DIR/gpu-bench-$SIZE.safetensors"
SOCK="$DIR/vramd-gpu.sock"
VRAMCTL="$BUILD/bin/vramctl --socket $SOCK"
TORCHPY=${TORCH_PYTHON:-python3} # the system Python, where torch is
# Without the build dependencies (a lent GPU machine, docs/gpu-machine.md):
# the bundle that `make gpu-bundle` made, if it was carried.
if [ -d .gpudeps ] && ! pkg-config --exists liburing numa jansson libxxhash libsystemd check 2>/dev/null; then
	. scripts/gpu-env.sh || exit 1
fi

SIM=${BENCH_GPU_SIM:-0}
if [ "$SIM" != 1 ] && ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1'; then
	echo "bench-gpu: skipped: no NVIDIA driver (libcuda.so.1) on this machine"
	exit 77
fi
mkdir -p "$DIR" "$(dirname "$OUT")"
: > "$OUT"
say() { echo "$*" | tee -a "$OUT"; }
cleanup() {
	[ -n "${PID:-}" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
	rm -f "$SOCK" "$DIR/admin-gpu.sock"
}
trap cleanup EXIT INT TERM

[ -s "$FILE" ] || { "$PY" tests/make_checkpoint.py --out "$FILE.tmp" --size "$SIZE" --seed 3 && mv "$FILE.tmp" "$FILE"; }
SIMARGS=""
[ "$SIM" = 1 ] && SIMARGS="--no-cuda --sim-gpus $((SIZE / 1073741824 * 2 + 2))GiB"
# shellcheck disable=SC2086
"$BUILD/bin/vramd" --socket "$SOCK" --admin-socket "$DIR/admin-gpu.sock" --state-dir "$DIR/state-gpu" \
	--host-pool "$((SIZE / 1073741824 + 4))GiB" $SIMARGS 2>"$DIR/vramd-gpu.log" &
PID=$!
i=0
while [ ! -S "$SOCK" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
if [ "$SIM" != 1 ] && ! $VRAMCTL status | grep -q '^cuda:0 *cuda'; then
	$VRAMCTL status
	echo "bench-gpu: skipped: vramd lists no CUDA device"
	exit 77
fi
say "vramd GPU bench, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
say "checkpoint $FILE, $(stat -c %s "$FILE") bytes"
[ "$SIM" = 1 ] && say "DRY RUN on a simulated GPU (BENCH_GPU_SIM=1): the numbers below mean nothing"

CAN_DROP=0
if [ "$(id -u)" -eq 0 ] && sync && echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then CAN_DROP=1; fi
drop() { [ $CAN_DROP -eq 1 ] && sync && echo 3 > /proc/sys/vm/drop_caches; }

H2D=$("$TORCHPY" - <<'PYEOF' 2>/dev/null || echo 0
import time, torch
n = 1 << 30
x = torch.empty(n, dtype=torch.uint8).pin_memory(); y = torch.empty(n, dtype=torch.uint8, device="cuda:0")
y.copy_(x, non_blocking=True); torch.cuda.synchronize()
best = 0
for _ in range(5):
    t = time.perf_counter(); y.copy_(x, non_blocking=True); torch.cuda.synchronize()
    best = max(best, n / (time.perf_counter() - t) / 1e9)
print("%.3f" % best)
PYEOF
)
drop
FIO=$(fio --name=r --filename="$FILE" --rw=read --bs=8M --iodepth=16 --ioengine=io_uring --direct=1 \
	--output-format=terse --terse-version=3 2>/dev/null | awk -F';' '{ printf "%.3f", $7 * 1024 / 1e9 }')
vr() { $VRAMCTL load "$FILE" --device cuda:0 --io auto --private --json | "$PY" -c 'import json,sys; print("%.3f" % json.load(sys.stdin)["gbps"])'; }
st() {
	"$TORCHPY" - "$FILE" <<'PYEOF' 2>/dev/null || echo 0
import os, sys, time, torch
from safetensors.torch import load_file
torch.cuda.init(); torch.zeros(1, device="cuda:0"); torch.cuda.synchronize()
t = time.perf_counter(); d = load_file(sys.argv[1], device="cuda:0"); torch.cuda.synchronize()
print("%.3f" % (os.path.getsize(sys.argv[1]) / (time.perf_counter() - t) / 1e9))
PYEOF
}
drop; VR_C=$(vr)
drop; ST_C=$(st)
VR_W=$(vr)
ST_W=$(st)
CEIL=$(awk -v a="$FIO" -v b="$H2D" 'BEGIN { m = a; if (b > 0 && b < m) m = b; printf "%.3f", m }')
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "n/a" }'; }
say "pinned H2D (torch) $H2D GB/s; storage O_DIRECT (fio) $FIO GB/s; ceiling $CEIL GB/s"
say "cold: vramd $VR_C GB/s, safetensors.torch $ST_C GB/s"
say "warm: vramd $VR_W GB/s, safetensors.torch $ST_W GB/s"
say "cold ratio vramd/ceiling $(ratio "$VR_C" "$CEIL") (target >= 0.90); vramd/safetensors $(ratio "$VR_C" "$ST_C") (target >= 5)"
[ $CAN_DROP -eq 1 ] || say "(cold runs did not drop the page cache: not root)"

# Staging ring: read size x slots, warm (the defaults are 8 MiB x 8).
say ""
say "staging sweep, warm, GB/s (rows: --chunk, columns: --staging 4 8 16)"
for ch in 4MiB 8MiB 16MiB 32MiB; do
	line="  $ch:"
	for ns in 4 8 16; do
		g=$($VRAMCTL load "$FILE" --device cuda:0 --io auto --private --chunk "$ch" --staging "$ns" --json |
			"$PY" -c 'import json,sys; print("%.3f" % json.load(sys.stdin)["gbps"])' 2>/dev/null || echo fail)
		line="$line $g"
	done
	say "$line"
done

# Conversion while streaming: an F8_E4M3 checkpoint loaded as it is and
# converted to BF16 on the GPU (twice the bytes land), warm.
FILE8="$DIR/gpu-bench-f8-$((SIZE / 2)).safetensors"
[ -s "$FILE8" ] || { "$PY" tests/make_checkpoint.py --out "$FILE8.tmp" --size "$((SIZE / 2))" --seed 5 --dtype F8_E4M3 >/dev/null &&
	mv "$FILE8.tmp" "$FILE8"; }
cat "$FILE8" > /dev/null
V8=$($VRAMCTL load "$FILE8" --device cuda:0 --json | "$PY" -c 'import json,sys; print("%.3f" % json.load(sys.stdin)["gbps"])' 2>/dev/null || echo 0)
V8C=$($VRAMCTL load "$FILE8" --device cuda:0 --cast bf16 --json | "$PY" -c 'import json,sys; d=json.load(sys.stdin); print("%.3f %d" % (d["gbps"], d["converted"]))' 2>/dev/null || echo "0 0")
say ""
say "conversion, warm, file GB/s: F8_E4M3 as is $V8; --cast bf16 ${V8C% *} (${V8C#* } tensors converted); ratio $(ratio "${V8C% *}" "$V8")"

# Paging: half the unet donated to the CPU, explicit pager against the UVM
# pager, no compute and compute 1.5x the explicit copy time.
VV=$(awk -v s="$SIZE" 'BEGIN { printf "%.3f", s * 0.75 / 2 / 1e9 }')
pg() { # $1 compute ms/GB, $2 extra flag
	$VRAMCTL bench pager "$FILE" --unet-compute-device cuda:0 --unet-virtual-vram-gb "$VV" --passes 5 \
		--compute-ms-per-gb "$1" $2 --json 2>"$DIR/pager-err.txt" |
		"$PY" -c 'import json,sys; d=json.load(sys.stdin); p=d["passes"][1:]
g=max(x["paging_gbps"] for x in p); print("%.3f %.1f" % (g, 100 * d["stall_fraction"]))' 2>/dev/null || echo "fail fail"
}
set -- $(pg 0 ""); PE=$1; PE_S=$2
set -- $(pg 0 --uvm); PU=$1; PU_S=$2
MS=$(awk -v g="$PE" 'BEGIN { if (g + 0 > 0) printf "%.1f", 1.5 * 1000 / g; else print 0 }')
set -- $(pg "$MS" ""); PEC=$1; PEC_S=$2
set -- $(pg "$MS" --uvm); PUC=$1; PUC_S=$2
say ""
say "paging ($VV GB of unet donated to the CPU), GB/s and stall % after the first pass:"
say "  no compute:           explicit $PE ($PE_S%), UVM $PU ($PU_S%)"
say "  compute $MS ms/GB:   explicit $PEC ($PEC_S%), UVM $PUC ($PUC_S%)"
[ -s "$DIR/pager-err.txt" ] && say "  (last error: $(tail -1 "$DIR/pager-err.txt"))"
say "results in $OUT"
