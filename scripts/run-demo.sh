#!/bin/sh
# make run: starts a broker on a temp socket (simulated GPUs where no NVIDIA
# driver is present), shows its status, then inspects, plans and loads a
# demo checkpoint with SDXL-like tensor names.
set -eu
BUILD=${VRAM_BUILD:-build}
PY=${VRAM_PYTHON:-.venv/bin/python}
DEMO_SIZE=${DEMO_SIZE:-300000000}
DIR=$(mktemp -d "${TMPDIR:-/var/tmp}/vramd-run.XXXXXX")
SOCK="$DIR/vramd.sock"
CKPT="$BUILD/demo/demo.safetensors"
VRAMCTL="$BUILD/bin/vramctl --socket $SOCK"

cleanup() {
	[ -n "${PID:-}" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
	rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

if [ ! -s "$CKPT" ]; then
	mkdir -p "$BUILD/demo"
	echo "== writing a demo checkpoint ($DEMO_SIZE bytes, SDXL-like names) to $CKPT"
	"$PY" tests/make_checkpoint.py --out "$CKPT.tmp" --size "$DEMO_SIZE" --seed 1
	mv "$CKPT.tmp" "$CKPT"
fi

if ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1'; then
	ARGS="--host-pool 4GiB"
	echo "== starting vramd (NVIDIA driver found: real GPUs) on $SOCK"
else
	ARGS="--sim-gpus 8GiB,4GiB --host-pool 4GiB"
	echo "== starting vramd with simulated GPUs (no NVIDIA driver here) on $SOCK"
fi
# shellcheck disable=SC2086
"$BUILD/bin/vramd" --socket "$SOCK" --admin-socket "$DIR/admin.sock" --state-dir "$DIR/state" $ARGS 2>"$DIR/vramd.log" &
PID=$!
i=0
while [ ! -S "$SOCK" ]; do
	i=$((i + 1))
	if [ $i -gt 100 ] || ! kill -0 "$PID" 2>/dev/null; then
		cat "$DIR/vramd.log" >&2
		echo "vramd did not start" >&2
		exit 1
	fi
	sleep 0.05
done

echo
echo "== vramctl status"
$VRAMCTL status
echo
echo "== vramctl inspect $CKPT"
$VRAMCTL inspect "$CKPT"
echo
echo "== vramctl plan (unet on cuda:0 with 0.1 GB of virtual VRAM donated by cpu)"
$VRAMCTL plan "$CKPT" --unet-virtual-vram-gb 0.1
echo
echo "== vramctl load (by that plan)"
$VRAMCTL load "$CKPT" --unet-virtual-vram-gb 0.1
echo
echo "== vramctl load --cast bf16 --cast-from f16 (converted while streaming, onto cuda:0)"
$VRAMCTL load "$CKPT" --device cuda:0 --cast bf16 --cast-from f16
echo
echo "== vramctl bench pager (3 passes, 100 ms of compute per GB)"
$VRAMCTL bench pager "$CKPT" --unet-virtual-vram-gb 0.1 --passes 3 --compute-ms-per-gb 100
echo
echo "== broker log"
cat "$DIR/vramd.log"
