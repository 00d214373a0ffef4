#!/bin/sh
# Time from calling the loader to MODEL/CLIP/VAE ready: ComfyUI's own
# CheckpointLoaderSimple against "Load Checkpoint (vramd)" on the same file,
# interleaved in one run (tests/py/comfy_bench.py): cold (the file's pages
# dropped; for the node also no shared copy), warm, the node again with its
# shared copy there, and a second ComfyUI process loading the same model
# through the node while the first holds it.  Medians of ROUNDS (default 3).
#   COMFYUI_DIR=/path/to/ComfyUI [COMFYUI_PYTHON=its python] [SHAPES="tiny sd15 sdxl"] \
#   [CKPT_DIR=dir to keep the generated checkpoints in] sh scripts/bench-comfyui.sh
# SHAPES (default "tiny sd15"): tiny (465 MB, SD1.5's widths, one UNet
# level), sd15 (2.1 GB, every SD1.5 key and shape), sdxl (6.9 GB, every
# SDXL key and shape; run with --fp16-unet --fp16-vae, the dtypes a GPU
# gets, since ComfyUI's CPU defaults would need 14 GB).  DTYPES=gpu runs
# every shape with the GPU's dtypes (fp16 UNet and VAE: nothing converted,
# by either loader); DTYPES=cpu with ComfyUI's CPU defaults (fp32 UNet and
# VAE: both loaders convert the fp16 file).  CPU only: ComfyUI
# runs with --cpu, the broker on simulated GPUs.  Exits 77 (skipped)
# without COMFYUI_DIR.  Needs free memory for two copies of the largest
# shape's converted weights (the simulated devices are sized at 4x the file: the second
# instance's plan asks for room for the copy it will share, beside the first's).
set -eu
B=${VRAM_BUILD:-build}
[ -n "${COMFYUI_DIR:-}" ] || { echo "bench-comfyui: skipped: COMFYUI_DIR is not set"; exit 77; }
PY=${COMFYUI_PYTHON:-$COMFYUI_DIR/.venv/bin/python}
[ -x "$PY" ] || PY=python3
ROOT=$(pwd)
export VRAMD_LIBRARY="$ROOT/$B/lib/libvram.so.0"
D=$(mktemp -d /tmp/vramd-bench-comfyui-XXXXXX)
CK=${CKPT_DIR:-$D/checkpoints}
mkdir -p "$CK"
PID=
cleanup() {
	[ -z "$PID" ] || { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true; }
	rm -rf "$D"
}
trap cleanup EXIT INT TERM

for shape in ${SHAPES:-tiny sd15}; do
	case $shape in
	tiny | sd15) args= ;;
	sdxl) args="--fp16-unet --fp16-vae" ;;
	*) echo "bench-comfyui: unknown shape $shape (tiny, sd15, sdxl)"; exit 2 ;;
	esac
	case ${DTYPES:-} in
	"") ;;
	gpu) args="--fp16-unet --fp16-vae" ;;
	cpu) args= ;;
	*) echo "bench-comfyui: DTYPES is gpu or cpu"; exit 2 ;;
	esac
	F=$CK/bench-$shape.safetensors
	[ -f "$F" ] || (cd "$D" && "$PY" "$ROOT/tests/py/comfy_checkpoints.py" --comfyui "$COMFYUI_DIR" \
		--kind "$shape" --out "$F")
	# room for the weights converted (fp16 -> fp32 at most), a copy being
	# filled beside one still held, and the broker's reserve
	mib=$(( $(stat -c %s "$F") / 1048576 * 4 + 1024 ))
	S=$D/$shape
	mkdir -p "$S/hold"
	"$ROOT/$B/bin/vramd" --socket "$S/vramd.sock" --admin-socket "$S/admin.sock" --state-dir "$S/state" \
		--sim-gpus "${mib}MiB" --host-pool "${mib}MiB" --cache-max 100% --no-cuda --no-config \
		2>"$S/vramd.log" &
	PID=$!
	i=0
	while [ ! -S "$S/vramd.sock" ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i + 1)); done
	common="--comfyui $COMFYUI_DIR --socket $S/vramd.sock --ckpt $F --rounds ${ROUNDS:-3}"
	# Not from a folder holding a nodes.py: the fork re-executes then.
	(cd "$S" && "$PY" "$ROOT/tests/py/comfy_bench.py" $common --comfy-args "$args" --hold "$S/hold" \
		>"$S/first.json" 2>"$S/first.err") &
	FIRST=$!
	while [ ! -f "$S/hold/ready" ]; do
		kill -0 $FIRST 2>/dev/null || { tail -20 "$S/first.err"; exit 1; }
		sleep 0.2
	done
	(cd "$S" && "$PY" "$ROOT/tests/py/comfy_bench.py" $common --comfy-args "$args" --second \
		>"$S/second.json" 2>"$S/second.err") || { touch "$S/hold/done"; tail -20 "$S/second.err"; exit 1; }
	touch "$S/hold/done"
	wait $FIRST || { tail -20 "$S/first.err"; exit 1; }
	kill "$PID"; wait "$PID" 2>/dev/null || true
	PID=
	"$PY" - "$shape" "$S/first.json" "$S/second.json" <<'PY'
import json, sys
shape, r = sys.argv[1], json.loads(open(sys.argv[2]).read().splitlines()[-1])
r.update(json.loads(open(sys.argv[3]).read().splitlines()[-1]))
print("%s: %.2f GB checkpoint, ComfyUI --cpu %s, medians of %d rounds" % (shape, r["file_bytes"] / 1e9,
      r["comfy_args"] or "(its CPU dtypes)", r["rounds"]))
rows = (("ComfyUI CheckpointLoaderSimple, cold", "comfyui_cold"), ("ComfyUI CheckpointLoaderSimple, warm", "comfyui_warm"),
        ("vramd node, cold (copy filled from disk)", "vramd_cold"), ("vramd node, warm (copy filled)", "vramd_warm"),
        ("vramd node, copy there (same process)", "vramd_hit"), ("vramd node, second ComfyUI process", "second"))
for label, k in rows:
    load = r.get(k + "_load_s")
    print("  %-44s %8.3f s%s" % (label, r[k + "_s"], "  (vram_load %.3f s)" % load if load is not None else ""))
print("  speed-up: cold %.2fx, warm %.2fx, copy there %.2fx, second instance %.2fx (vs ComfyUI warm)"
      % (r["comfyui_cold_s"] / r["vramd_cold_s"], r["comfyui_warm_s"] / r["vramd_warm_s"],
         r["comfyui_warm_s"] / r["vramd_hit_s"], r["comfyui_warm_s"] / r["second_s"]))
PY
done
