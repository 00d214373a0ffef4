#!/bin/sh
# Runs every Check suite given, each bounded in time; prints a total line.
# A suite exits 77 to say it was skipped (missing feature), as liburing does.
# Each suite gets 300 s, times $CK_TIMEOUT_MULTIPLIER (make asan sets 3).
set -u
limit=$((300 * ${CK_TIMEOUT_MULTIPLIER:-1}))
pass=0 fail=0 skip=0 failed=""
for t in "$@"; do
	name=$(basename "$t")
	echo "== $name"
	t0=$(date +%s)
	timeout -k 10 "$limit" "$t"
	rc=$?
	echo "$name: $(($(date +%s) - t0)) s"
	if [ $rc -eq 0 ]; then pass=$((pass + 1))
	elif [ $rc -eq 77 ]; then skip=$((skip + 1)); echo "$name: skipped"
	else fail=$((fail + 1)); failed="$failed $name"; echo "$name: FAILED (exit $rc)"
	fi
done
echo
echo "suites: $pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ] || { echo "failed:$failed"; exit 1; }
