#!/bin/sh
# GPU tests: a real vramd on a temporary socket with the machine's real GPUs,
# driven by client processes (tests/helper-gputest.c):
#   - the broker lists every usable GPU (by UUID, not simulated);
#   - grant, import, zero on arrival, write and read back through the device;
#   - a new grant never holds an old grant's bytes (same process and across
#     processes, also when the writer exits without freeing);
#   - copier, multi-device sink and pinning of a cpu-pool grant;
#   - a client SIGKILLed while holding grants: the broker releases them and
#     the device gets the memory back;
#   - import by UUID when CUDA_VISIBLE_DEVICES renumbers or hides devices.
# Exits 77 (skipped) with the reason when there is no NVIDIA driver or no
# GPU vramd can use; 0 when every check passed, 1 otherwise.
#
# Environment: VRAM_BUILD (build directory, default build), MAKE, and
# VRAM_GPU_SIZE (bytes per grant in the larger checks, default 256MiB).
set -u

cd "$(dirname "$0")/.." || exit 1
# Without the build dependencies (a lent GPU machine, docs/gpu-machine.md):
# the bundle that `make gpu-bundle` made, if it was carried.
if [ -d .gpudeps ] && ! pkg-config --exists liburing numa jansson libxxhash libsystemd check 2>/dev/null; then
	. scripts/gpu-env.sh || exit 1
fi
BUILD=${VRAM_BUILD:-build}
MAKE=${MAKE:-make}
SIZE=${VRAM_GPU_SIZE:-256MiB}
H=$BUILD/tests/helper-gputest
VRAMD=$BUILD/bin/vramd

$MAKE --no-print-directory -j"$(nproc 2>/dev/null || echo 2)" "$VRAMD" "$H" >/dev/null || {
	echo "check-gpu: build failed"
	exit 1
}

probe=$("$H" probe 2>&1)
rc=$?
if [ $rc -eq 77 ]; then
	echo "check-gpu: skipped: $probe"
	exit 77
fi
echo "$probe"
[ $rc -eq 0 ] || { echo "check-gpu: probe failed"; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/vramd-gpu-XXXXXX") || exit 1
sock=$tmp/vramd.sock
log=$tmp/vramd.log
pid=""
holder=""

cleanup() {
	[ -n "$holder" ] && kill -9 "$holder" 2>/dev/null
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid"
		i=0
		while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
		kill -9 "$pid" 2>/dev/null
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

"$VRAMD" --socket "$sock" --host-pool 1GiB -v 2>"$log" &
pid=$!
i=0
while [ ! -S "$sock" ] && [ $i -lt 300 ]; do
	kill -0 "$pid" 2>/dev/null || break
	sleep 0.1
	i=$((i + 1))
done
if [ ! -S "$sock" ]; then
	echo "check-gpu: vramd did not start:"
	cat "$log"
	exit 1
fi
sed 's/^<[0-9]>/vramd: /' "$log"

pass=0 fail=0 failed=""
check() {
	name=$1
	shift
	echo "== $name"
	if "$@"; then
		pass=$((pass + 1))
	else
		fail=$((fail + 1))
		failed="$failed $name"
		echo "$name: FAILED"
	fi
}
S="--socket $sock"

# A GPU the probe calls usable but the broker does not list: say why.
if ! "$H" $S devices >/dev/null 2>&1; then
	"$H" $S devices
	echo "check-gpu: vramd lists no usable CUDA device (see the note above); log:"
	sed 's/^<[0-9]>/vramd: /' "$log"
	exit 1
fi

check devices "$H" $S devices
check rw "$H" $S rw
check rw-large "$H" $S --size "$SIZE" --count 2 rw
check stale "$H" $S --size "$SIZE" --count 4 stale
check stale-across-processes sh -c "'$H' $S --size '$SIZE' --count 2 fill && '$H' $S --size '$SIZE' --count 2 zero"
check stale-after-exit sh -c "'$H' $S --size '$SIZE' --count 2 --no-free fill && '$H' $S expect-empty && '$H' $S --size '$SIZE' --count 2 zero"
check copy "$H" $S --size "$SIZE" copy

# SIGKILL while holding grants on every device.
kill_test() {
	base=$("$H" $S meminfo) || return 1
	"$H" $S --size "$SIZE" --count 4 hold >"$tmp/hold.out" 2>&1 &
	holder=$!
	i=0
	while ! grep -q ready "$tmp/hold.out" 2>/dev/null; do
		if ! kill -0 "$holder" 2>/dev/null || [ $i -ge 600 ]; then
			cat "$tmp/hold.out"
			return 1
		fi
		sleep 0.1
		i=$((i + 1))
	done
	kill -9 "$holder"
	wait "$holder" 2>/dev/null
	holder=""
	"$H" $S --baseline "$base" --timeout-ms 20000 expect-empty
}
check sigkill-releases kill_test

# The device by UUID: alone in CUDA_VISIBLE_DEVICES it becomes ordinal 0;
# hidden, the import fails cleanly.
last=$("$H" $S devices | sed -n 's/^\(cuda:[0-9]*\):.*/\1/p' | tail -n 1)
uuid=$("$H" $S --device "$last" uuid)
check visible-by-uuid env CUDA_VISIBLE_DEVICES="$uuid" "$H" $S --device "$last" rw
check hidden-device env CUDA_VISIBLE_DEVICES=-1 "$H" $S --device "$last" expect-invisible

check all-returned "$H" $S expect-empty
if ! kill -0 "$pid" 2>/dev/null; then
	fail=$((fail + 1))
	failed="$failed broker-alive"
	echo "check-gpu: vramd died"
fi
if grep -q '^<3>' "$log"; then
	echo "check-gpu: vramd logged errors:"
	grep '^<3>' "$log"
	fail=$((fail + 1))
	failed="$failed broker-log"
fi
kill -TERM "$pid"
wait "$pid"
st=$?
pid=""
if [ $st -ne 0 ]; then
	echo "check-gpu: vramd exited with status $st"
	fail=$((fail + 1))
	failed="$failed broker-exit"
fi

echo
echo "check-gpu: $pass passed, $fail failed"
[ $fail -eq 0 ] || { echo "failed:$failed"; exit 1; }
exit 0
