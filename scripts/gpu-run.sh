#!/bin/sh
# The one command for a lent GPU machine (docs/gpu-machine.md): no network,
# no apt, so `make check-gpu` / `make bench-gpu` (which run `make deps`)
# cannot be used there.  This sources scripts/gpu-env.sh (the carried
# .gpudeps bundle, where the image lacks our build dependencies), builds
# with `make all` (nvcc too, where the image has it), then runs, each as its
# make target does: scripts/check-gpu.sh (make check-gpu); every Check
# suite (make check; test-kernels then also compares the CUDA kernels with
# the C references on the GPU); scripts/bench-gpu.sh (make bench-gpu).  It
# prints a short summary.  All of it fits in GPU_RUN_BUDGET seconds (default
# 540; the device tool allows 600), each step bounded by timeout.
#
# Files written to $OUT (else build/gpu-run), 7 at most: env.txt (what
# gpu-env.sh did; the image: OS, tools, driver, GPU), build.log,
# check-gpu.log, tests.log, bench-gpu.log, gpu-results.txt (bench-gpu's
# results), summary.txt.
# Exits 0 when the build passed and every step passed or was skipped (77),
# else 1.
#
#   GPU_RUN_STEPS   which steps after the build, in order (default
#                   "check tests bench")
#   BENCH_GPU_SIZE  passed on to bench-gpu.sh (default there: 4 GiB)
set -u
cd "$(dirname "$0")/.." || exit 1
start=$(date +%s)
BUDGET=${GPU_RUN_BUDGET:-540}
O=${OUT:-build/gpu-run}
mkdir -p "$O" || exit 1
O=$(cd "$O" && pwd)
STEPS=${GPU_RUN_STEPS:-check tests bench}
JOBS=$(nproc 2>/dev/null || echo 4)

say() { echo "$*" | tee -a "$O/summary.txt"; }
: >"$O/summary.txt"
left() { echo $((BUDGET - ($(date +%s) - start))); }
# timeout for a step: at most $1 seconds, never past the budget.
cap() { l=$(left); [ "$1" -lt "$l" ] && l=$1; [ "$l" -lt 10 ] && l=10; echo "$l"; }

. scripts/gpu-env.sh >"$O/env.txt" 2>&1
env_rc=$?
say "$(tail -n 1 "$O/env.txt")"

{
	echo "== date"; date -u +%Y-%m-%dT%H:%M:%SZ
	echo "== uname"; uname -a
	echo "== os-release"; cat /etc/os-release 2>/dev/null
	echo "== cpus $(nproc 2>/dev/null), memory"; free -g 2>/dev/null | head -2
	echo "== disk"; df -h . /var/tmp 2>/dev/null
	echo "== tools"
	for t in cc gcc make pkg-config nvcc python3 fio ldconfig dpkg-deb timeout nvidia-smi; do
		printf '%s: %s\n' "$t" "$(command -v "$t" || echo MISSING)"
	done
	cc --version 2>&1 | head -n 1
	make --version 2>&1 | head -n 1
	nvcc --version 2>&1 | tail -n 2
	fio --version 2>&1
	python3 -c 'import sys, torch, numpy, safetensors; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(), "numpy", numpy.__version__, "safetensors", safetensors.__version__)' 2>&1 | tail -n 1
	echo "== driver"
	nvidia-smi 2>&1 | head -n 15
	echo "== libcuda in ld.so.cache"; ldconfig -p 2>/dev/null | grep -E 'libcuda\.so|libnvidia-ml' || echo none
	echo "== environment"; env | grep -E '^(PATH|LD_LIBRARY_PATH|LIBRARY_PATH|CPATH|LDFLAGS|PKG_CONFIG_[A-Z]*|CUDA[A-Z_]*|NVIDIA[A-Z_]*)=' | sort
	echo "== pkg-config"; pkg-config --modversion liburing numa jansson libxxhash libsystemd check 2>&1 | paste -sd' ' -
} >>"$O/env.txt" 2>&1

if [ $env_rc -ne 0 ]; then
	say "build: not tried (gpu-env failed; see env.txt)"
	exit 1
fi

t0=$(date +%s)
timeout -k 10 "$(cap 240)" make -j"$JOBS" all >"$O/build.log" 2>&1
build_rc=$?
if [ $build_rc -ne 0 ]; then
	say "build: FAILED (exit $build_rc, $(($(date +%s) - t0)) s); last lines of build.log:"
	tail -n 25 "$O/build.log" | tee -a "$O/summary.txt"
	exit 1
fi
say "build: ok ($(($(date +%s) - t0)) s, -j$JOBS, kernels: $(sed -n 's/^nvcc=\([^ ]*\).*/\1/p' build/gen/kernels.config 2>/dev/null | grep . || echo 'no nvcc'))"

# VRAM_PYTHON (a path: the tests check it with access()) for the tests'
# fixtures and bench-gpu's checkpoint writer: .venv where `make deps` made
# one, else the image's python3 (numpy, safetensors).
PY=$(command -v python3)
[ -x .venv/bin/python ] && .venv/bin/python -c 'import numpy, safetensors' 2>/dev/null && PY=$(pwd)/.venv/bin/python
"$PY" -c 'import numpy, safetensors' 2>/dev/null ||
	say "python: $PY lacks numpy or safetensors: the suites and bench-gpu that use them fail"

# bench-gpu looks for the driver in ld.so.cache; a stale cache (root: rebuilt
# once) or a driver reached only through LD_LIBRARY_PATH would skip it.
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1'; then
	[ "$(id -u)" -eq 0 ] && ldconfig 2>/dev/null
	if ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1'; then
		say "libcuda.so.1: in ld.so.cache after ldconfig"
	else
		say "libcuda.so.1: not in ld.so.cache (bench-gpu skips; check-gpu's probe says whether dlopen finds it)"
	fi
fi

rc=0
step() { # name log timeout command...
	n=$1 log=$2 t=$3
	shift 3
	t0=$(date +%s)
	timeout -k 10 "$t" "$@" >"$O/$log" 2>&1
	r=$?
	case $r in
	0) st="ok" ;;
	77) st="skipped" ;;
	124 | 137) st="TIMED OUT after $t s"; rc=1 ;;
	*) st="FAILED (exit $r)"; rc=1 ;;
	esac
	say "$n: $st ($(($(date +%s) - t0)) s)"
}
for s in $STEPS; do
	case $s in
	check)
		step check-gpu check-gpu.log "$(cap 180)" env VRAM_BUILD=build sh scripts/check-gpu.sh
		grep -E '^check-gpu: |^failed:|FAILED' "$O/check-gpu.log" | sed 's/^/  /' | tee -a "$O/summary.txt"
		;;
	tests)
		step tests tests.log "$(cap 200)" env VRAM_BUILD=build VRAM_PYTHON="$PY" \
			sh scripts/run-tests.sh build/tests/test-*
		grep -E '^suites: |^failed:|FAILED|GPU check|skipped' "$O/tests.log" | sed 's/^/  /' | tee -a "$O/summary.txt"
		;;
	bench)
		step bench-gpu bench-gpu.log "$(cap 420)" env VRAM_BUILD=build VRAM_PYTHON="$PY" \
			BENCH_OUT="$O/gpu-results.txt" sh scripts/bench-gpu.sh
		if [ -s "$O/gpu-results.txt" ]; then
			sed 's/^/  /' "$O/gpu-results.txt" | tee -a "$O/summary.txt"
		else
			grep -E 'skipped|rror' "$O/bench-gpu.log" | head -n 5 | sed 's/^/  /' | tee -a "$O/summary.txt"
		fi
		;;
	*) say "unknown step $s (check, tests, bench)"; rc=1 ;;
	esac
done
say "gpu-run: $([ $rc -eq 0 ] && echo ok || echo FAILED), $(($(date +%s) - start)) s; files in $O"
exit $rc
