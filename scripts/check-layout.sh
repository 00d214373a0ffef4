#!/bin/sh
# The tree's shape, as issue 11 set it (docs/design.md):
#  - no file in broker/ over 800 lines;
#  - no function in broker/, runtime/, common/ or tools/ over 150 lines;
#  - broker/: a file includes only the headers of layers below its own
#    (log/pool/config < internal < conn < grant < cache < fair < alloc <
#    admin < dispatch < client < broker), and config.c and the pool backends include only
#    pool/config/log headers.
# Prints each breach and exits 1 if there is one.
set -u
cd "$(dirname "$0")/.."
fail=0

for f in broker/*.c broker/*.h; do
	n=$(wc -l < "$f")
	if [ "$n" -gt 800 ]; then
		echo "check-layout: $f has $n lines (at most 800)"
		fail=1
	fi
done

# A function: a line opening with "{" in column 0 up to the next "}" in
# column 0; its name is on the line before the brace (or the line before
# that, for a declaration split over two lines).
for f in broker/*.c runtime/*.c common/*.c tools/*.c; do
	awk -v file="$f" '
		/^\{/ { start = NR; name = prev; next }
		/^\}/ && start { len = NR - start - 1
			if (len > 150) { printf "check-layout: %s: %s is %d lines (at most 150)\n", file, name, len; bad = 1 }
			start = 0 }
		$0 ~ /^[a-zA-Z_].*\(/ { prev = $0 }
		END { exit bad }' "$f" || fail=1
done

# Layers of broker/: rank of each header; a file may include ranks below
# its own.  main.c is the program, above everything.
rank() {
	case "$1" in
	log.h|pool.h|config.h|quota.h) echo 0 ;;
	internal.h) echo 1 ;;
	conn.h) echo 2 ;;
	grant.h) echo 3 ;;
	cache.h|cache-int.h) echo 4 ;;
	fair.h) echo 5 ;;
	alloc.h) echo 6 ;;
	admin.h) echo 7 ;;
	dispatch.h) echo 8 ;;
	client.h) echo 9 ;;
	broker.h) echo 10 ;;
	*) echo 99 ;;
	esac
}
for f in broker/*.c broker/*.h; do
	base=$(basename "$f")
	case "$base" in
	main.c) own=11 ;;
	config.c|pool.c|pool-*.c|log.c) own=base ;;
	quota.c|quota-*.c) own=quota ;;
	cache.c|cache-*.c|cache-int.h) own=cache ;;
	*.c) own=$(rank "${base%.c}.h") ;;
	*.h) own=$(rank "$base") ;;
	esac
	for inc in $(sed -n 's|^#include "broker/\(.*\)"|\1|p' "$f"); do
		[ "$inc" = "${base%.c}.h" ] && continue
		case "$own:$inc" in
		base:log.h|base:pool.h|base:config.h|quota:quota.h|cache:cache.h|cache:cache-int.h) continue ;;
		base:*|quota:*) ok=no ;;
		cache:*) r=$(rank "$inc"); if [ "$r" -lt 4 ]; then ok=yes; else ok=no; fi ;;
		*) r=$(rank "$inc"); if [ "$r" -lt "$own" ]; then ok=yes; else ok=no; fi ;;
		esac
		if [ "$ok" = no ]; then
			echo "check-layout: $f includes broker/$inc, a layer not below its own"
			fail=1
		fi
	done
done
exit $fail
