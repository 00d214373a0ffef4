#!/bin/sh
# Time from calling the loader to MODEL/CLIP/VAE ready: ComfyUI's own
# CheckpointLoaderSimple against "Load Checkpoint (vramd)", cold (the file's
# pages dropped with posix_fadvise) and warm, same file, interleaved in one
# run; medians of ROUNDS (default 3).  Needs a ComfyUI checkout:
#   COMFYUI_DIR=/path/to/ComfyUI [COMFYUI_PYTHON=its python] sh scripts/bench-comfyui.sh
# Exits 77 (skipped) without COMFYUI_DIR.  CPU-only (--cpu): the second
# instance figure waits for shared copies (docs/comfyui.md).
set -eu
B=${VRAM_BUILD:-build}
[ -n "${COMFYUI_DIR:-}" ] || { echo "bench-comfyui: skipped: COMFYUI_DIR is not set"; exit 77; }
PY=${COMFYUI_PYTHON:-$COMFYUI_DIR/.venv/bin/python}
[ -x "$PY" ] || PY=python3
ROOT=$(pwd)
D=$(mktemp -d /tmp/vramd-bench-comfyui-XXXXXX)
"$B/bin/vramd" --socket "$D/vramd.sock" --admin-socket "$D/admin.sock" --state-dir "$D/state" \
	--sim-gpus 2GiB --host-pool 4GiB --no-cuda 2>"$D/vramd.log" &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$D"' EXIT INT TERM
i=0
while [ ! -S "$D/vramd.sock" ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i + 1)); done
cd "$D"
VRAMD_LIBRARY="$ROOT/$B/lib/libvram.so.0" "$PY" "$ROOT/tests/py/comfy_compare.py" --comfyui "$COMFYUI_DIR" \
	--socket "$D/vramd.sock" --dir "$D" --bench --rounds "${ROUNDS:-3}" 2>"$D/bench.err" | tail -1 > "$D/res.json" ||
	{ tail -20 "$D/bench.err"; exit 1; }
"$PY" - "$D/res.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("checkpoint: %.0f MB (SD1.5-shaped, fp16), medians of %d rounds" % (r["file_bytes"] / 1e6, r["rounds"]))
print("%-28s %10s %10s" % ("", "cold s", "warm s"))
for k in ("comfyui", "vramd"):
    print("%-28s %10.3f %10.3f" % ({"comfyui": "ComfyUI CheckpointLoaderSimple", "vramd": "Load Checkpoint (vramd)"}[k],
                                   r[k]["cold_s"], r[k]["warm_s"]))
print("vramd / ComfyUI speed-up: cold %.2fx, warm %.2fx" % (r["cold_speedup"], r["warm_speedup"]))
PY
