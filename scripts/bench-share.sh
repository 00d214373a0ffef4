#!/bin/sh
# make bench, shared copies (issue 13): one copy of a checkpoint for every
# process that loads it.  Called by scripts/bench.sh (BENCH_ONLY=share runs
# it alone); the same variables.
#
#   - the second load of the same file by another process, against the
#     first (cold) one: target >= 50x faster (a map, not a read);
#   - four processes holding it: device use = 1x the copy (+-1%);
#   - a second process that asks while the first fills: no second read
#     (bytes vramd read from disk in that run = 1x the file).
set -eu
. scripts/bench-env.sh
SOCK="$DIR/vramd-share.sock"
VRAMCTL="$BUILD/bin/vramctl --socket $SOCK"
trap bench_cleanup EXIT INT TERM
bench_checkpoint
BYTES=$(stat -c %s "$FILE")
start() {
	"$BUILD/bin/vramd" --no-config --socket "$SOCK" --admin-socket "$DIR/admin-share.sock" --state-dir "$DIR/state-share" \
		--host-pool "$((SIZE / 1073741824 * 2 + 4))GiB" --cache-max 100% --no-cuda 2>"$DIR/vramd-share.log" &
	PID=$!
	while [ ! -S "$SOCK" ]; do sleep 0.05; kill -0 $PID; done
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=; }
secs() { "$PY" -c 'import json,sys; d=json.load(sys.stdin); print("%.4f %s" % (d["seconds"], "waited" if d["shared_copy"]["waited"] else "filled" if d["shared_copy"]["filled"] else "hit" if d["shared_copy"]["hit"] else "private"))'; }
read_bytes() { awk '/^read_bytes/ { print $2 }' "/proc/$PID/io"; }

say "shared copies: $FILE, $BYTES bytes, cpu pool$([ $CAN_DROP -eq 1 ] || echo ' (page cache NOT dropped: needs root)')"
start
drop
set -- $($VRAMCTL load "$FILE" --device cpu --json | secs); T1=$1; H1=$2
set -- $($VRAMCTL load "$FILE" --device cpu --json | secs); T2=$1; H2=$2
say "  first load (cold, $H1): $T1 s; second load by another process ($H2): $T2 s"
say "  ratio first/second: $(awk -v a="$T1" -v b="$T2" 'BEGIN { printf "%.0f", (b > 0 ? a / b : 0) }')x   (target >= 50x)"

HOLDERS=
for i in 1 2 3 4; do $VRAMCTL load "$FILE" --device cpu --hold-ms 3000 >/dev/null & HOLDERS="$HOLDERS $!"; done
sleep 1.5
set -- $($VRAMCTL status --json | "$PY" -c 'import json,sys; d=json.load(sys.stdin); c=[x for x in d["devices"] if x["name"]=="cpu"][0]; print(c["used"], c["cache"], sum(1 for x in d["clients"] if x["devices"].get("cpu",{}).get("shared",0)))')
# shellcheck disable=SC2086
wait $HOLDERS
say "  four processes holding it: cpu used $1 bytes, the copy $2 bytes, $3 clients mapping it: $(awk -v u="$1" -v m="$BYTES" 'BEGIN { printf "%.3f", u / m }')x the file   (target 1x +-1%)"
stop

start
drop
R0=$(read_bytes)
$VRAMCTL load "$FILE" --device cpu --json > "$DIR/share-a.json" &
A=$!
sleep 0.3
set -- $($VRAMCTL load "$FILE" --device cpu --json | secs); HB=$2
wait $A
R1=$(read_bytes)
say "  a second process asking while the first fills: it $HB; vramd read $((R1 - R0)) bytes from disk = $(awk -v r="$((R1 - R0))" -v m="$BYTES" 'BEGIN { printf "%.3f", r / m }')x the file   (target 1x)"
stop
say ""
