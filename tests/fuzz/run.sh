#!/bin/sh
# Runs libFuzzer targets one after another (one process at a time), each for
# SECONDS, and prints one line per target: executions, coverage, corpus.
#
#   run.sh MODE SECONDS BUILD TARGET...     (make fuzz / make fuzz-smoke)
#
# MODE smoke: inputs the run finds go to a temporary directory, removed
# after; MODE fuzz: to BUILD/corpus/TARGET, kept for `make fuzz-merge`, and
# libFuzzer's whole output to BUILD/logs/TARGET.log.
# The committed corpus, tests/fuzz/corpus/TARGET, is read, never written.
# tests/fuzz/TARGET.dict is passed as the dictionary where there is one.
# $FUZZ_ARGS is added to each libFuzzer command line (-runs=N, -seed=N).
#
# A crash (sanitizer report, failed FUZZ_ASSERT, timeout, out of memory)
# leaves its input as BUILD/crashes/TARGET-crash-HASH, prints the command
# that reproduces it, and makes the script exit 1 after the other targets.
set -u
MODE=$1 SECONDS_EACH=$2 BUILD=$3
shift 3
mkdir -p "$BUILD/crashes"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/vram-fuzz.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
failed=""

max_len() {
	case "$1" in
	proto) echo 65536 ;;        # VRAMD_MSG_MAX
	safetensors) echo 8192 ;;   # the largest fixture is 6.6 KB
	gguf | pickle) echo 16384 ;; # seed.py keeps the fixtures up to 16 KiB
	*) echo 4096 ;;
	esac
}

for t in "$@"; do
	bin="$BUILD/fuzz-$t"
	seeds="tests/fuzz/corpus/$t"
	if [ "$MODE" = smoke ]; then out="$tmp/$t"; else out="$BUILD/corpus/$t"; fi
	mkdir -p "$out" "$seeds"
	dict=""
	[ -f "tests/fuzz/$t.dict" ] && dict="-dict=tests/fuzz/$t.dict"
	if [ "$MODE" = smoke ]; then log="$tmp/$t.log"; else mkdir -p "$BUILD/logs"; log="$BUILD/logs/$t.log"; fi
	# shellcheck disable=SC2086 # FUZZ_ARGS and dict are lists of options
	"$bin" -max_total_time="$SECONDS_EACH" -max_len="$(max_len "$t")" -timeout=10 \
		-rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$BUILD/crashes/$t-" \
		$dict ${FUZZ_ARGS:-} "$out" "$seeds" >"$log" 2>&1
	rc=$?
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
	rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
	edges=$(sed -n 's/^INFO: Loaded 1 modules *(\([0-9]*\) inline 8-bit counters).*/\1/p' "$log" | head -1)
	cov=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 |
		sed -E "s/.*cov: ([0-9]+) ft: ([0-9]+) corp: ([0-9]+).*/\1 of ${edges:-?} edges, \2 features, corpus \3/")
	if [ $rc -eq 0 ]; then
		echo "fuzz-$t: ${runs:-?} runs (${rate:-?}/s), ${cov:-no coverage line}, no crash"
	else
		failed="$failed $t"
		echo "fuzz-$t: FAILED (exit $rc) after ${runs:-?} runs; its report:"
		# from the sanitizer's or FUZZ_ASSERT's first line, 40 lines
		awk '/==[0-9]+==ERROR|runtime error|deadly signal|\.c:[0-9]+: |ERROR: libFuzzer/ { on = 1 }
		     on && n++ < 40' "$log" | sed 's/^/  /'
		grep '^SUMMARY' "$log" | sed 's/^/  /'
		crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
		[ -n "$crash" ] && echo "  reproduce: $bin $crash"
	fi
done
[ -z "$failed" ] || { echo "fuzz: failed:$failed"; exit 1; }
