#!/bin/sh
# SPDX-License-Identifier: MIT
# Keeps libvram's ABI honest: the functions runtime/vram.h declares VRAM_API,
# the symbols runtime/libvram.map lists, and the symbols libvram.so exports
# must be the same set, each exported in the version node that lists it.
#
#   scripts/check-abi.sh LIBVRAM_SO [VRAM_H] [LIBVRAM_MAP]
#
# Prints every difference and exits 1, or prints "abi: N symbols" and exits 0.
set -eu
so=$1
hdr=${2:-runtime/vram.h}
map=${3:-runtime/libvram.map}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# VRAM_API declarations: "VRAM_API <type> name(" on one line.
sed -n 's/^VRAM_API [^(]*[^A-Za-z0-9_]\([A-Za-z_][A-Za-z0-9_]*\)(.*/\1/p' "$hdr" | sort >"$tmp/header"
# The map: "symbol;" lines inside a node, as "symbol NODE".
awk '/^[A-Za-z_][A-Za-z0-9_.]* *\{/ { node = $1; sub(/\{.*/, "", node) }
     /^[ \t]+[A-Za-z_][A-Za-z0-9_]*;/ { s = $1; sub(/;.*/, "", s); print s, node }' "$map" |
	sort >"$tmp/map-nodes"
cut -d' ' -f1 "$tmp/map-nodes" >"$tmp/map"
# Exported: "symbol@@NODE" (the node names themselves are absolute symbols).
nm -D --defined-only "$so" | awk '$2 != "A" { print $3 }' | sed 's/@@*/ /' | sort >"$tmp/so-nodes"
cut -d' ' -f1 "$tmp/so-nodes" >"$tmp/so"

bad=0
report() { # title file
	if [ -s "$2" ]; then
		echo "abi: $1:"
		sed 's/^/  /' "$2"
		bad=1
	fi
}
comm -23 "$tmp/header" "$tmp/map" >"$tmp/d1"
report "declared VRAM_API in $hdr but not listed in $map" "$tmp/d1"
comm -13 "$tmp/header" "$tmp/map" >"$tmp/d2"
report "listed in $map but not declared VRAM_API in $hdr" "$tmp/d2"
comm -23 "$tmp/map" "$tmp/so" >"$tmp/d3"
report "listed in $map but not exported by $so" "$tmp/d3"
comm -13 "$tmp/map" "$tmp/so" >"$tmp/d4"
report "exported by $so but not listed in $map" "$tmp/d4"
uniq -d "$tmp/map" >"$tmp/d5"
report "listed twice in $map" "$tmp/d5"
# Same symbol, same node (a symbol without a version has none).
join "$tmp/map-nodes" "$tmp/so-nodes" | awk '$2 != $3 { print $1 ": map " $2 ", exported as " ($3 ? $3 : "(no version)") }' >"$tmp/d6"
report "exported in another version node than $map lists" "$tmp/d6"
[ $bad -eq 0 ] || exit 1
echo "abi: $(wc -l <"$tmp/header") symbols: $hdr, $map and $so agree"
