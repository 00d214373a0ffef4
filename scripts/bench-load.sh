#!/bin/sh
# make bench, the loading part (scripts/bench.sh runs it; alone:
# BENCH_FILE=... sh scripts/bench-load.sh).  Loading a checkpoint into the
# cpu pool against the disk's ceiling and the peers, in interleaved rounds
# (each contender once per round, in turn), medians over the rounds:
#
#   cold   page cache dropped before each run: fio O_DIRECT in several
#          shapes (the ceiling: the best shape of each round), vramd with
#          its ready reserve full and with none (a second broker), the
#          safetensors library (load_file, then every byte read), the
#          fastsafetensors library (nogds, cpu; installed into the venv from
#          PyPI when missing), mmap + copy (helper-mmapload)
#   warm   file in the page cache: fio buffered, vramd (reserve / none),
#          mmap + copy
#   alloc  ALLOC round trips of 256 MiB served by the reserve, and of a small
#          grant with its FREE (helper-allocbench)
#
#   BENCH_FILE        the checkpoint (required)
#   BENCH_DIR         sockets and logs (default: the file's directory)
#   BENCH_OUT         results, appended (default $BUILD/bench/results.txt)
#   BENCH_ROUNDS      interleaved rounds (default 3)
#   BENCH_FIO_SHAPES  fio's block size:depth pairs (default 1M:64 4M:16 4M:128 16M:16 16M:64)
#   BENCH_ALLOC_N     ALLOC round trips of each kind (default 1000; each
#                     256 MiB one waits for the reserve to refill)
#
# Cold runs need root (echo 3 > /proc/sys/vm/drop_caches); without it they
# are skipped and the report says so.  Every figure is a ratio to another
# measured in the same run: the disk here swings 0.9-2 GB/s minute to minute.
set -eu
BUILD=${VRAM_BUILD:-build}
PY=${VRAM_PYTHON:-.venv/bin/python}
FILE=${BENCH_FILE:?BENCH_FILE names the checkpoint}
DIR=${BENCH_DIR:-$(dirname "$FILE")}
OUT=${BENCH_OUT:-$BUILD/bench/results.txt}
ROUNDS=${BENCH_ROUNDS:-3}
SHAPES=${BENCH_FIO_SHAPES:-"1M:64 4M:16 4M:128 16M:16 16M:64"}
ALLOC_N=${BENCH_ALLOC_N:-1000}
BYTES=$(stat -L -c %s "$FILE")
GIB=$((BYTES / 1073741824 + 1))
T="$DIR/bench-load.tmp"
mkdir -p "$T" "$(dirname "$OUT")"
rm -f "$T"/*

say() { echo "$*" | tee -a "$OUT"; }
LPIDS=""
lcleanup() {
	for p in $LPIDS; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
	rm -f "$DIR/load-r.sock" "$DIR/load-0.sock"
}
trap lcleanup EXIT INT TERM

CAN_DROP=0
if [ "$(id -u)" -eq 0 ] && sync && echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then CAN_DROP=1; fi
drop() { sync && echo 3 > /proc/sys/vm/drop_caches; }

# Two brokers: R keeps a ready reserve as large as the checkpoint and 1 GiB,
# Z keeps none.  Their pools are large enough for one load each.
broker() { # $1 name, $2 reserve
	rm -f "$DIR/load-$1.sock"
	"$BUILD/bin/vramd" --socket "$DIR/load-$1.sock" --admin-socket "$DIR/load-$1-admin.sock" \
		--state-dir "$DIR/load-$1-state" --no-config --no-cuda --host-pool "$((2 * GIB + 2))GiB" \
		--ready-reserve "$2" --ready-min-free 0 2>"$DIR/load-$1.log" &
	LPIDS="$LPIDS $!"
	while [ ! -S "$DIR/load-$1.sock" ]; do sleep 0.05; done
}
broker r "$((GIB + 1))GiB"
broker 0 0
CTL_R="$BUILD/bin/vramctl --socket $DIR/load-r.sock"
CTL_0="$BUILD/bin/vramctl --socket $DIR/load-0.sock"

# The cpu pool's reserve figures of broker R: ready target hits misses refilled pages.
reserve() {
	$CTL_R status --json | "$PY" -c 'import json,sys
d=[x for x in json.load(sys.stdin)["devices"] if x["name"] == "cpu"][0]
print(d["ready"], d["ready_target"], d["ready_hits"], d["ready_misses"], d.get("ready_refilled", 0), d["pages"])'
}
# Waits until R's reserve is full (to within a piece too small to make), so
# that its refill never runs beside a measurement.
full() {
	while :; do
		set -- $(reserve)
		[ $(($1 + 16777216)) -ge "$2" ] && return
		sleep 0.2
	done
}

# Each contender prints "GB/s CPU-s/GB".
fio_run() { # $1 direct, $2 bs, $3 depth
	fio --name=r --filename="$FILE" --rw=read --bs="$2" --iodepth="$3" --ioengine=io_uring \
	    --direct="$1" --output-format=terse --terse-version=3 2>/dev/null |
		awk -F';' '{ printf "%.3f -\n", $7 * 1024 / 1e9 }' # read bandwidth, KiB/s
}
vramd_run() { # $1 vramctl
	$1 load "$FILE" --device cpu --private --json |
		"$PY" -c 'import json,sys; d=json.load(sys.stdin); print("%.3f %.3f" % (d["gbps"], d["cpu_seconds"] / (d["bytes"] / 1e9)))'
}
mmap_run() { "$BUILD/tests/helper-mmapload" "$FILE" | awk '{ printf "%.3f %.3f\n", $1 / $2 / 1e9, $3 / ($1 / 1e9) }'; }
peer_run() { "$PY" scripts/bench-peers.py "$1" "$FILE"; }

# Records contender $1's figures from the rest of the line.
rec() {
	n=$1; shift; set -- $* -
	echo "${1:-0}" >> "$T/$n.gbps"
	[ "$2" = - ] || echo "$2" >> "$T/$n.cpu"
}
med() { [ -s "$T/$1.$2" ] && sort -g "$T/$1.$2" | awk '{ a[NR] = $1 } END { printf "%.3f", NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }' || printf "n/a"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a != "n/a") printf "%.2f", a / b; else printf "n/a" }'; }
line() { printf "  %-44s %7s  %7s\n" "$1" "$(med "$2" gbps)" "$(med "$2" cpu)" | tee -a "$OUT"; }

PEERS="safetensors"
if ! "$PY" -c 'import fastsafetensors' 2>/dev/null; then
	"$PY" -m pip install -q --disable-pip-version-check fastsafetensors==0.5.0 >/dev/null 2>&1 || true
fi
if "$PY" -c 'import fastsafetensors' 2>/dev/null; then PEERS="$PEERS fastsafetensors"; fi

say "loading: $FILE, $BYTES bytes; $ROUNDS interleaved rounds, medians; broker R: ready reserve $((GIB + 1)) GiB ($(reserve | awk '{ print $6 }') pages), broker Z: none"
full
say "  reserve filled: $(reserve | awk '{ printf "%.2f GiB", $1 / 2^30 }')"
if [ $CAN_DROP -eq 1 ]; then
	for r in $(seq "$ROUNDS"); do
		best=0
		for s in $SHAPES; do
			drop; x=$(fio_run 1 "${s%:*}" "${s#*:}"); rec "fio-$s" "$x"
			best=$(echo "$x $best" | awk '{ print ($1 > $3 ? $1 : $3) }')
		done
		echo "$best" >> "$T/ceiling.gbps"
		full; drop; rec vramd-r "$(vramd_run "$CTL_R")"
		full; drop; rec vramd-0 "$(vramd_run "$CTL_0")"
		for p in $PEERS; do full; drop; rec "$p" "$(peer_run "$p")"; done
		full; drop; rec mmap "$(mmap_run)"
		echo "  round $r: ceiling $best, vramd $(tail -1 "$T/vramd-r.gbps") (no reserve $(tail -1 "$T/vramd-0.gbps")) GB/s"
	done
	say "cold (page cache dropped before each run)       GB/s  CPU s/GB"
	for s in $SHAPES; do line "fio O_DIRECT io_uring bs ${s%:*} depth ${s#*:}" "fio-$s"; done
	line "ceiling (best fio shape of each round)" ceiling
	line "vramd -> cpu pool, reserve full" vramd-r
	line "vramd -> cpu pool, no reserve" vramd-0
	for p in $PEERS; do line "$p (cpu)" "$p"; done
	line "mmap + copy (helper-mmapload)" mmap
	C=$(med ceiling gbps); VR=$(med vramd-r gbps)
	say "  vramd (reserve) / ceiling      $(ratio "$VR" "$C")   (target >= 0.90)"
	say "  vramd (no reserve) / ceiling   $(ratio "$(med vramd-0 gbps)" "$C")"
	for p in $PEERS; do say "  vramd (reserve) / $p   $(ratio "$VR" "$(med "$p" gbps)")   (target > 1)"; done
	say "  vramd (reserve) / mmap + copy  $(ratio "$VR" "$(med mmap gbps)")   (target >= 3)"
else
	say "cold: skipped (dropping the page cache needs root)"
fi

cat "$FILE" > /dev/null
for r in $(seq "$ROUNDS"); do
	rec w-fio "$(fio_run 0 4M 16)"
	full; rec w-vramd-r "$(vramd_run "$CTL_R")"
	full; rec w-vramd-0 "$(vramd_run "$CTL_0")"
	full; rec w-mmap "$(mmap_run)"
done
say "warm (file in the page cache)                   GB/s  CPU s/GB"
line "fio buffered io_uring bs 4M depth 16" w-fio
line "vramd -> cpu pool, reserve full" w-vramd-r
line "vramd -> cpu pool, no reserve" w-vramd-0
line "mmap + copy (helper-mmapload)" w-mmap
say "  vramd (reserve) / fio buffered   $(ratio "$(med w-vramd-r gbps)" "$(med w-fio gbps)")   (target >= 0.80)"
say "  vramd (no reserve) / fio buffered   $(ratio "$(med w-vramd-0 gbps)" "$(med w-fio gbps)")"

full
set -- $("$BUILD/tests/helper-allocbench" "$DIR/load-r.sock" cpu 256MiB "$ALLOC_N")
say "ALLOC round trips, $ALLOC_N each (request to mapped grant; refill idle):"
say "  256 MiB from the reserve: $1 hits, $2 misses; p50 $3 us, p99 $4 us, max $5 us   (target p99 < 1000)"
say "  ALLOC+FREE of 2 MiB: p50 $6 us, p99 $7 us   (target p99 < 100)"
say "  refill while waited for: $8 GB/s"
set -- $(reserve)
say "broker R's reserve over the whole run: $3 hits, $4 misses, refilled $(awk -v b="$5" 'BEGIN { printf "%.1f GiB", b / 2^30 }')"
say ""
rm -rf "$T"
