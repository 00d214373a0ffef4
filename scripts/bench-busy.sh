#!/bin/sh
# make bench, busy part (issue 12, BENCH_ONLY=busy): busy clients on one simulated GPU.
#
#   1. Two clients, each with its UNet wholly on a GPU too small for both
#      (issue 12: 2 GiB SDXL-shaped checkpoint, 2.5 GiB GPU, 6 GiB host
#      pool, "cuda:0,100%", 6 passes), the second started while the first
#      is mid-pass, BENCH_BUSY_RUNS times: both finish every pass; the
#      second gets every grant of its load quickly (its first ALLOC is one
#      of them); RECLAIMs answered, none ignored; nothing accounted after.
#   2. Four clients on a GPU smaller than any two of their models, loaded,
#      then all busy at once: what each holds on the GPU, averaged over its
#      passes, against the fair share (a quarter: each wants more); the
#      paging stall per client; RECLAIM answer times while mid-pass.
#
#   BENCH_BUSY_SCALE sizes as a fraction of issue 12's (default 0.25: a
#                    512 MiB checkpoint; 1 runs the issue's sizes)
#   BENCH_BUSY_RUNS  two-client runs (default 20)
#   BENCH_DIR, BENCH_OUT, VRAM_BUILD, VRAM_PYTHON as bench.sh
set -eu
BUILD=${VRAM_BUILD:-build}
PY=${VRAM_PYTHON:-.venv/bin/python}
DIR=${BENCH_DIR:-/var/tmp/vramd-bench}
OUT=${BENCH_OUT:-$BUILD/bench/results.txt}
S=${BENCH_BUSY_SCALE:-0.25}
RUNS=${BENCH_BUSY_RUNS:-20}
SOCK="$DIR/busy.sock"
VRAMCTL="$BUILD/bin/vramctl --socket $SOCK"
mkdir -p "$DIR" "$(dirname "$OUT")"

say() { echo "$*" | tee -a "$OUT"; }
mib() { awk -v s="$S" -v b="$1" 'BEGIN { printf "%d", s * b / 1048576 }'; }
cleanup() {
	[ -n "${PID:-}" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
	for p in ${KIDS:-}; do kill "$p" 2>/dev/null || true; done
	rm -f "$SOCK"
}
trap cleanup EXIT INT TERM

FILE_MIB=$(mib 2147483648)
FILE="$DIR/busy-${FILE_MIB}MiB.safetensors"
if [ ! -s "$FILE" ]; then
	"$PY" tests/make_checkpoint.py --out "$FILE.tmp" --size $((FILE_MIB * 1048576)) --seed 12 >/dev/null
	mv "$FILE.tmp" "$FILE"
fi
# Compute as in the issue (100 ms/GB) at full size; a smaller checkpoint
# gets proportionally more, so that the passes last about as long.
MS=$(awk -v s="$S" 'BEGIN { printf "%d", 100 / s }')

broker() { # GPU-MiB HOST-MiB LOG
	rm -f "$SOCK"
	"$BUILD/bin/vramd" --socket "$SOCK" --admin-socket "$DIR/busy-admin.sock" --state-dir "$DIR/busy-state" \
		--no-config --sim-gpus "$1MiB" --host-pool "$2MiB" --no-cuda -v 2>"$3" &
	PID=$!
	while [ ! -S "$SOCK" ]; do sleep 0.05; kill -0 $PID; done
}
used() { $VRAMCTL status --json | "$PY" -c 'import json,sys; print(sum(d["used"] for d in json.load(sys.stdin)["devices"]))'; }
settle() { # waits (bounded) for nothing to be accounted; prints what is
	i=0
	while [ "$(used)" != 0 ] && [ $i -lt 100 ]; do i=$((i + 1)); sleep 0.05; done
	used
}
bench() { # ARGS...: one bench pager client, JSON on stdout
	$VRAMCTL bench pager "$FILE" --unet-expert-mode-allocations "cuda:0,100%" --compute-ms-per-gb "$MS" --json "$@"
}

say "busy clients sharing one GPU (scale $S of issue 12's sizes: ${FILE_MIB} MiB checkpoint, compute $MS ms/GB)"

# ---- 1. two clients, the second starting mid-pass ------------------------
GPU=$(mib 2684354560)
HOST=$(mib 6442450944)
broker "$GPU" "$HOST" "$DIR/busy1.log"
: >"$DIR/busy1.tsv"
for i in $(seq 1 "$RUNS"); do
	rm -f "$DIR/busy-first.ready"
	bench --passes 6 --ready-file "$DIR/busy-first.ready" >"$DIR/busy-first.json" 2>"$DIR/busy-first.err" &
	KIDS=$!
	while [ ! -e "$DIR/busy-first.ready" ] && kill -0 $KIDS 2>/dev/null; do sleep 0.02; done
	R2=0; bench --passes 6 >"$DIR/busy-second.json" 2>"$DIR/busy-second.err" || R2=$?
	R1=0; wait $KIDS || R1=$?
	KIDS=
	LEFT=$(settle)
	"$PY" - "$DIR/busy-first.json" "$DIR/busy-second.json" "$R1" "$R2" "$LEFT" >>"$DIR/busy1.tsv" <<'PYEOF'
import json, sys
def load(p):
    try:
        return json.load(open(p))
    except Exception:
        return {}
a, b = load(sys.argv[1]), load(sys.argv[2])
br = a.get("broker_reclaims", {})
print("\t".join(str(x) for x in (sys.argv[3], sys.argv[4], b.get("grants_s", -1), br.get("p99_ms", -1),
      br.get("answered", 0), br.get("missed", 0), a.get("reclaim_max_ms", 0), sys.argv[5],
      b.get("first_alloc_ms", -1), b.get("max_alloc_ms", -1))))
PYEOF
done
IGNORED=$(grep -c "ignored RECLAIM" "$DIR/busy1.log" || true)
kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
"$PY" - "$DIR/busy1.tsv" "$RUNS" "$GPU" "$IGNORED" <<'PYEOF' | tee -a "$OUT"
import sys
rows = [l.split("\t") for l in open(sys.argv[1]) if l.strip()]
runs, gpu, ignored = int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
ok = sum(1 for r in rows if r[0] == "0" and r[1] == "0")
grants = sorted(float(r[2]) * 1e3 for r in rows if float(r[2]) >= 0)
first = sorted(float(r[8]) for r in rows if len(r) > 9 and float(r[8]) >= 0)
slowest = sorted(float(r[9]) for r in rows if len(r) > 9 and float(r[9]) >= 0)
p99s = [float(r[3]) for r in rows if float(r[3]) >= 0 and int(r[4]) > 0]
answered = sum(int(r[4]) for r in rows)
missed = sum(int(r[5]) for r in rows)
mx = max([float(r[6]) for r in rows] or [0])
left = sum(1 for r in rows if r[7].strip() != "0")
def pct(v, q):
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")
print("  two clients, %s MiB GPU, the second starting mid-pass, %d runs:" % (gpu, runs))
print("    both finished every pass in %d of %d runs" % (ok, runs))
print("    second client, its first ALLOC answered in: p50 %.1f ms, p99 %.1f ms (target p99 < 200 ms); its slowest ALLOC: p50 %.1f ms, p99 %.1f ms"
      % (pct(first, 0.5), pct(first, 0.99), pct(slowest, 0.5), pct(slowest, 0.99)))
print("    second client, load start to every grant: p50 %.0f ms, p99 %.0f ms"
      % (pct(grants, 0.5), pct(grants, 0.99)))
print("    first client: %d RECLAIMs answered, %d missed, %d ignored in the broker's log (target 0); broker-measured answer p99 per run, worst %.2f ms; longest in the pager %.2f ms"
      % (answered, missed, ignored, max(p99s or [0]), mx))
print("    runs that left memory accounted after both exited: %d (target 0)" % left)
PYEOF

# ---- 2. four clients, all busy at once -----------------------------------
# What one client places on the GPU: the UNet and the VAE (~80% of the file).
MODEL=$((FILE_MIB * 80 / 100))
GPU4=$((MODEL * 3 / 2))
broker "$GPU4" $((FILE_MIB * 6)) "$DIR/busy4.log"
rm -f "$DIR"/busy-c*.ready "$DIR/busy-go"
KIDS=
for c in 1 2 3 4; do
	bench --passes 12 --ready-file "$DIR/busy-c$c.ready" --go-file "$DIR/busy-go" >"$DIR/busy-c$c.json" 2>"$DIR/busy-c$c.err" &
	KIDS="$KIDS $!"
	while [ ! -e "$DIR/busy-c$c.ready" ] && kill -0 $! 2>/dev/null; do sleep 0.02; done
done
touch "$DIR/busy-go"
RC=0
for p in $KIDS; do wait "$p" || RC=$((RC + 1)); done
KIDS=
LEFT=$(settle)
IGNORED=$(grep -c "ignored RECLAIM" "$DIR/busy4.log" || true)
kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
"$PY" - "$GPU4" "$MODEL" "$RC" "$LEFT" "$IGNORED" "$DIR"/busy-c1.json "$DIR"/busy-c2.json "$DIR"/busy-c3.json "$DIR"/busy-c4.json <<'PYEOF' | tee -a "$OUT"
import json, sys
gpu, model, failed, left, ignored = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
fair = gpu / 4 * 2**20  # each wants more than a quarter
print("  four clients, each wanting ~%d MiB of a %d MiB GPU, all busy: %d failed (target 0)" % (model, gpu, failed))
worst, p99 = 0, 0
for i, path in enumerate(sys.argv[6:], 1):
    try:
        d = json.load(open(path))
    except Exception:
        print("    client %d: no report" % i)
        worst = float("inf")
        continue
    held, share = d.get("held_avg", 0), d.get("share_avg", 0)
    dev = held / fair - 1
    worst = max(worst, abs(dev))
    br = d.get("broker_reclaims", {})
    p99 = max(p99, br.get("p99_ms", 0))
    print("    client %d: held %.0f MiB on average (fair share %.0f MiB: %+.1f%%; the broker's figure %.0f MiB), "
          "paging stall %.2f s in %d passes, %d RECLAIMs answered (p99 %.2f ms), %d missed"
          % (i, held / 2**20, fair / 2**20, 100 * dev, share / 2**20, d.get("stall_total_s", 0), len(d.get("passes", [])),
             br.get("answered", 0), br.get("p99_ms", 0), br.get("missed", 0)))
print("    worst deviation from the fair share %.1f%% (target within 15%%)" % (100 * worst))
print("    RECLAIM answered mid-pass: worst per-client p99 %.2f ms (target < 20 ms); ignored %s; accounted after: %s B"
      % (p99, ignored, left))
PYEOF
say ""
