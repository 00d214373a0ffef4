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
#   - import by UUID when CUDA_VISIBLE_DEVICES renumbers or hides devices;
#   - restart survival: a client holds grants written through the device, the
#     broker is stopped (SIGTERM) and started again with the same command
#     line; the client reconnects and re-registers them (REGISTER of its kept
#     exports), the device's used bytes equal those before the restart, the
#     bytes are intact, and the used bytes return to the baseline after it
#     frees them.
# Exits 77 (skipped) with the reason when there is no NVIDIA driver or no
# GPU vramd can use; 0 when every check passed, 1 otherwise.
#
# Environment: VRAM_BUILD (build directory, default build), MAKE, and
# VRAM_GPU_SIZE (bytes per grant in the larger checks, default 256MiB).
# CHECK_GPU_SIM=1 dry-runs the restart check's script logic against a
# simulated GPU (--sim-gpus, --no-cuda; the holder writes through the host
# mapping): nothing about CUDA is checked, and no other check runs.
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
VRAMCTL=$BUILD/bin/vramctl
SIM=${CHECK_GPU_SIM:-0}

$MAKE --no-print-directory -j"$(nproc 2>/dev/null || echo 2)" "$VRAMD" "$VRAMCTL" "$H" >/dev/null || {
	echo "check-gpu: build failed"
	exit 1
}

SIMARGS=""
if [ "$SIM" = 1 ]; then
	echo "check-gpu: DRY RUN on a simulated GPU (CHECK_GPU_SIM=1): only the restart check's script logic runs, nothing about CUDA is checked"
	SIMARGS="--no-cuda --sim-gpus 2GiB"
else
	probe=$("$H" probe 2>&1)
	rc=$?
	if [ $rc -eq 77 ]; then
		echo "check-gpu: skipped: $probe"
		exit 77
	fi
	echo "$probe"
	[ $rc -eq 0 ] || { echo "check-gpu: probe failed"; exit 1; }
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/vramd-gpu-XXXXXX") || exit 1
sock=$tmp/vramd.sock
admin=$tmp/admin.sock
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

# The fd store is systemd's: none here, whatever the environment says (the
# restart check is about re-registering).
unset NOTIFY_SOCKET

# Starts vramd in the background (pid in $pid), logging to $1, and waits
# until it listens: the admin socket is bound after the client socket's
# listen().  Every start, the restart included, uses this one command line;
# the admin socket and state directory are in $tmp, not the installed
# defaults (/run/vramd, /var/lib/vramd).
start_broker() {
	rm -f "$sock" "$admin"
	# shellcheck disable=SC2086
	"$VRAMD" --socket "$sock" --admin-socket "$admin" --state-dir "$tmp/state" --host-pool 1GiB $SIMARGS \
		-v 2>"$1" &
	pid=$!
	i=0
	while { [ ! -S "$sock" ] || [ ! -S "$admin" ]; } && [ $i -lt 300 ]; do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
		i=$((i + 1))
	done
	if [ ! -S "$sock" ] || [ ! -S "$admin" ]; then
		echo "check-gpu: vramd did not start:"
		cat "$1"
		return 1
	fi
	sed 's/^<[0-9]>/vramd: /' "$1"
}

# Stops vramd with SIGTERM and waits (30 s at most, then SIGKILL); 0 when
# it exited with status 0.
stop_broker() {
	kill -TERM "$pid" 2>/dev/null
	i=0
	while kill -0 "$pid" 2>/dev/null && [ $i -lt 300 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	if kill -0 "$pid" 2>/dev/null; then
		echo "check-gpu: vramd $pid did not exit within 30 s of SIGTERM; killed"
		kill -9 "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
		pid=""
		return 1
	fi
	wait "$pid"
	st=$?
	pid=""
	if [ $st -ne 0 ]; then
		echo "check-gpu: vramd exited with status $st"
		return 1
	fi
	return 0
}

start_broker "$log" || exit 1

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

# Bytes used on device $1 as `vramctl status --json` reports them (the
# devices come before the clients; each device object's keys one a line).
used_bytes() {
	_j=$("$VRAMCTL" --socket "$sock" status --json) || { echo "check-gpu: vramctl status failed" >&2; return 1; }
	_u=$(printf '%s\n' "$_j" | awk -v dev="$1" '
		/^  "devices": \[/ { indev = 1; next }
		/^  "clients": \[/ { indev = 0 }
		!indev { next }
		/^    \{/ { name = ""; used = "" }
		/^      "name": / { name = $0; sub(/^      "name": "/, "", name); sub(/",?$/, "", name) }
		/^      "used": / { used = $0; gsub(/[^0-9]/, "", used) }
		/^    \}/ { if (name == dev && used != "") { print used; exit } }')
	case $_u in
	'' | *[!0-9]*)
		echo "check-gpu: no used bytes for $1 in vramctl status --json:" >&2
		printf '%s\n' "$_j" >&2
		return 1
		;;
	esac
	echo "$_u"
}

# Waits for file $1 (up to $2 tenths of a second) while the holder runs.
wait_file() {
	i=0
	while [ ! -e "$1" ]; do
		if ! kill -0 "$holder" 2>/dev/null || [ $i -ge "$2" ]; then
			return 1
		fi
		sleep 0.1
		i=$((i + 1))
	done
	return 0
}

# Ends the holder: waits up to $1 tenths of a second for it to exit, then
# SIGKILL; its exit status in $hst.
end_holder() {
	i=0
	while kill -0 "$holder" 2>/dev/null && [ $i -lt "$1" ]; do
		sleep 0.1
		i=$((i + 1))
	done
	kill -9 "$holder" 2>/dev/null
	wait "$holder" 2>/dev/null
	hst=$?
	holder=""
}

# Restart survival (the hand-shake is restart-holder's, in helper-gputest.c).
restart_test() {
	rdev=$1
	rf=$tmp/restart
	rm -f "$rf".*
	base=$(used_bytes "$rdev") || return 1
	mem=""
	if [ "$SIM" != 1 ]; then
		mem=$("$H" $S --device "$rdev" meminfo) || return 1
	fi
	# shellcheck disable=SC2086
	VRAMD_RECONNECT_TIMEOUT_MS=30000 "$H" $S --device "$rdev" --size "$SIZE" --count 4 --timeout-ms 30000 \
		$HOLDER_SIM restart-holder "$rf.ready" "$rf.registered" "$rf.go" >"$rf.out" 2>&1 &
	holder=$!
	if ! wait_file "$rf.ready" 300; then
		end_holder 0
		cat "$rf.out"
		echo "restart: the holder did not get ready (exit status $hst)"
		return 1
	fi
	held=$(cat "$rf.ready")
	case $held in '' | *[!0-9]*) held=-1 ;; esac
	before=$(used_bytes "$rdev") || { end_holder 0; cat "$rf.out"; return 1; }
	ok=1
	if [ "$before" -eq $((base + held)) ]; then
		echo "restart: $rdev: $before bytes used with the holder's $held, $base before it: PASS"
	else
		echo "restart: $rdev: $before bytes used with the holder's $held, $base before it: FAIL"
		ok=0
	fi
	old=$pid
	if ! stop_broker; then
		end_holder 0
		cat "$rf.out"
		echo "restart: stopping vramd $old failed"
		return 1
	fi
	if ! start_broker "$tmp/vramd-restarted.log"; then
		end_holder 0
		cat "$rf.out"
		echo "restart: vramd did not start again"
		return 1
	fi
	echo "restart: vramd $old stopped (SIGTERM, status 0), vramd $pid started with the same command line"
	if ! wait_file "$rf.registered" 300; then
		end_holder 0
		cat "$rf.out"
		echo "restart: the holder did not re-register its grants (exit status $hst)"
		return 1
	fi
	after=$(used_bytes "$rdev") || { end_holder 0; cat "$rf.out"; return 1; }
	if [ "$after" -eq "$before" ]; then
		echo "restart: $rdev: $after bytes used after the restart, $before before: PASS"
	else
		echo "restart: $rdev: $after bytes used after the restart, $before before: FAIL"
		ok=0
	fi
	: >"$rf.go"
	end_holder 300
	cat "$rf.out"
	if [ $hst -ne 0 ]; then
		echo "restart: the holder exited with status $hst: FAIL"
		ok=0
	fi
	i=0
	while now=$(used_bytes "$rdev") && [ "$now" -ne "$base" ] && [ $i -lt 100 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	if [ "${now:-}" = "$base" ]; then
		echo "restart: $rdev: $now bytes used after the holder, $base before it: PASS"
	else
		echo "restart: $rdev: ${now:-?} bytes used after the holder, $base before it: FAIL"
		ok=0
	fi
	# The device got the memory back too (the new broker released what it
	# imported; within expect-empty's slack).
	if [ -n "$mem" ] && ! "$H" $S --device "$rdev" --baseline "$mem" --timeout-ms 20000 expect-empty; then
		echo "restart: $rdev: the device did not get the memory back: FAIL"
		ok=0
	fi
	[ $ok -eq 1 ]
}

# The end of every run: the broker alive, no errors in its logs, a clean
# exit, the totals.
finish() {
	if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
		fail=$((fail + 1))
		failed="$failed broker-alive"
		echo "check-gpu: vramd died"
	fi
	# Every broker's log: the first and, after the restart check, the restarted one.
	if grep -q '^<3>' "$tmp"/vramd*.log; then
		echo "check-gpu: vramd logged errors:"
		grep -h '^<3>' "$tmp"/vramd*.log
		fail=$((fail + 1))
		failed="$failed broker-log"
	fi
	if [ -n "$pid" ] && ! stop_broker; then
		fail=$((fail + 1))
		failed="$failed broker-exit"
	fi
	echo
	[ "$SIM" = 1 ] && echo "check-gpu: DRY RUN on a simulated GPU (CHECK_GPU_SIM=1): nothing about CUDA was checked"
	echo "check-gpu: $pass passed, $fail failed"
	[ $fail -eq 0 ] || { echo "failed:$failed"; exit 1; }
	exit 0
}

HOLDER_SIM=""
if [ "$SIM" = 1 ]; then
	HOLDER_SIM=--sim-ok
	check broker-restart restart_test cuda:0
	finish
fi

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

# The broker restarted under a client holding grants on the first device
# (the restarted broker serves the checks after it).
first=$("$H" $S devices | sed -n 's/^\(cuda:[0-9]*\):.*/\1/p' | head -n 1)
check broker-restart restart_test "$first"

check all-returned "$H" $S expect-empty
finish
