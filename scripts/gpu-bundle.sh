#!/bin/sh
# make gpu-bundle: run HERE (Debian 12, amd64, apt reaches its mirror).
# Fills .gpudeps/ (git-ignored) with what a lent GPU machine, which has no
# network and no package manager access, needs to build vramd and run
# check-gpu / bench-gpu there (docs/gpu-machine.md):
#   - the Debian 12 .deb files of our build dependencies and the runtime
#     libraries they need (`apt-get download`; nothing is installed here);
#     scripts/gpu-env.sh unpacks them there into a private prefix;
#   - bin/fio: a static fio built here from Debian's fio source
#     (`apt-get source`, with a private list directory), for bench-gpu's
#     storage ceiling; the Debian fio binary drags in ceph, gluster, rdma.
# Every library needs glibc <= 2.34, so Ubuntu 22.04 / 24.04 images take it.
# Run again after a Debian point release: it replaces the .debs (about 3 MiB)
# and rebuilds fio only when its version or configuration changed.
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
D=.gpudeps

# Build deps (Makefile: pkg-config liburing numa jansson libxxhash libsystemd
# check), pkgconf and make in case the image lacks them, and libsystemd0's
# own dependencies (used there only where the image lacks them).
PKGS="liburing-dev liburing2 libnuma-dev libnuma1 libjansson-dev libjansson4 \
libxxhash-dev libxxhash0 libsystemd-dev libsystemd0 check libsubunit-dev libsubunit0 \
pkgconf pkgconf-bin libpkgconf3 make \
libcap2 libgcrypt20 libgpg-error0 liblz4-1 liblzma5 libzstd1"

arch=$(dpkg --print-architecture)
[ "$arch" = amd64 ] || { echo "gpu-bundle: this machine is $arch; the GPU machine is amd64" >&2; exit 1; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

mkdir -p "$D/bin"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/vramd-gpu-bundle-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# root's apt-get warns when its _apt sandbox user cannot write the target.
A="apt-get -q -o APT::Sandbox::User=root"

# .debs: download the current versions into a fresh folder, then swap, so
# that a failed download leaves the old bundle whole.
mkdir "$tmp/debs"
if ! (cd "$tmp/debs" && $A download $PKGS >"$tmp/dl.log" 2>&1); then
	echo "gpu-bundle: apt-get download failed; apt-get update and again"
	$SUDO apt-get update -q >/dev/null
	(cd "$tmp/debs" && $A download $PKGS >"$tmp/dl.log" 2>&1) || { cat "$tmp/dl.log"; exit 1; }
fi
rm -f "$D"/*.deb
mv "$tmp"/debs/*.deb "$D/"

# fio, static.  Its version and configuration are in bin/fio.stamp.
FIO_CONF="--build-static --disable-native --disable-numa --disable-rdma --disable-rados \
--disable-rbd --disable-http --disable-gfapi --disable-libnfs --disable-pmem --disable-xnvme \
--disable-libzbc --disable-tcmalloc --disable-dfs"
fio_ver=$(apt-cache show --no-all-versions fio 2>/dev/null | sed -n 's/^Version: //p')
stamp="fio $fio_ver; $FIO_CONF"
if [ -x "$D/bin/fio" ] && [ "$(cat "$D/bin/fio.stamp" 2>/dev/null)" = "$stamp" ]; then
	:
elif (
	# (set -e does not hold inside an if's condition: every step is chained)
	mkdir -p "$tmp/src/lists/partial" "$tmp/src/parts" &&
		printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
			>"$tmp/src/parts/src.sources" &&
		S="-o Dir::State::Lists=$tmp/src/lists -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=$tmp/src/parts" &&
		$A $S update &&
		cd "$tmp/src" &&
		$A $S source --download-only "fio=$fio_ver" &&
		tar -xf "$(ls fio_*.orig.tar.* | grep -v '\.asc$')" &&
		cd fio-*/ &&
		./configure $FIO_CONF &&
		make -j"$(nproc)" fio &&
		strip -o "$ROOT/$D/bin/fio" fio &&
		echo "$stamp" >"$ROOT/$D/bin/fio.stamp"
) >"$tmp/fio.log" 2>&1; then
	echo "gpu-bundle: built a static fio $fio_ver"
else
	tail -n 20 "$tmp/fio.log"
	echo "gpu-bundle: WARNING: no static fio (bench-gpu lacks the storage ceiling where the GPU machine has no fio)"
	rm -f "$D/bin/fio" "$D/bin/fio.stamp"
fi

# What is in the bundle; gpu-env.sh keys its unpacked prefix on this file.
{
	echo "# vramd GPU-machine bundle, $(date -u +%Y-%m-%dT%H:%M:%SZ), made by scripts/gpu-bundle.sh"
	for f in "$D"/*.deb; do
		dpkg-deb --show --showformat='${Package} ${Version}\n' "$f"
	done
	[ -x "$D/bin/fio" ] && echo "bin/fio: $(cat "$D/bin/fio.stamp")"
} >"$D/MANIFEST"
n=$(ls "$D"/*.deb | wc -l)
echo "gpu-bundle: $D: $n packages$( [ -x "$D/bin/fio" ] && echo ' + static fio'), $(du -sh "$D" | cut -f1) (carry it: docs/gpu-machine.md)"
