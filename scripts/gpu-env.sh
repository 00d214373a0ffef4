# Sourced (POSIX sh) on a machine that lacks vramd's build dependencies and
# cannot install them, such as the lent GPU machine (docs/gpu-machine.md),
# from the repository root:
#
#   . scripts/gpu-env.sh
#
# Where pkg-config already finds liburing numa jansson libxxhash libsystemd
# check, it changes nothing.  Otherwise it unpacks every .deb in .gpudeps/
# (made here by `make gpu-bundle`) into a private prefix, never into /, and
# exports PKG_CONFIG_PATH and PKG_CONFIG_LIBDIR (the .pc files rewritten to
# that prefix), CPATH, LIBRARY_PATH, LD_LIBRARY_PATH, LDFLAGS (an rpath to
# $PREFIX/rtlib) and PATH (appended: the image's own tools come first).  LD_LIBRARY_PATH gets $PREFIX/rtlib, which links the
# bundle's libraries that vramd links against (liburing, libnuma, jansson,
# xxhash, subunit, pkgconf's) and, of libsystemd0 and its dependencies,
# only those the image lacks: older Debian copies must not shadow the
# image's own for its other programs.  A static fio in .gpudeps/bin is put
# on PATH where the image has no fio.  Idempotent; prints one line.
#
#   VRAMD_GPUDEPS  the bundle (default .gpudeps)
#   VRAMD_DEPS     the prefix (default /tmp/vramd-deps)
#   VRAMD_DEPS_FORCE=1  use the bundle even where the image has the packages
#                       (to test the bundle on a machine that has them)

_vramd_gpu_env() {
	_b=${VRAMD_GPUDEPS:-.gpudeps}
	_p=${VRAMD_DEPS:-/tmp/vramd-deps}
	_pk="liburing numa jansson libxxhash libsystemd check"
	_did=""
	# The prefix: a folder of its own, never / nor a folder this did not make.
	case "$_p" in
	/?*) ;;
	*) echo "gpu-env: VRAMD_DEPS ($_p) must be an absolute path other than /"; return 1 ;;
	esac
	if [ -d "$_p" ] && [ ! -e "$_p/.vramd-deps" ] && [ -n "$(ls -A "$_p")" ]; then
		echo "gpu-env: $_p exists and is not ours (no .vramd-deps in it); set VRAMD_DEPS to a new folder"
		return 1
	fi

	# fio (bench-gpu's storage ceiling) where the image has none.
	if ! command -v fio >/dev/null 2>&1 && [ -x "$_b/bin/fio" ]; then
		mkdir -p "$_p/bin" && : >"$_p/.vramd-deps" && cp -f "$_b/bin/fio" "$_p/bin/fio" &&
			PATH=$PATH:$_p/bin && export PATH && _did="fio from $_b/bin"
	fi

	case ":${PKG_CONFIG_PATH:-}:" in
	*":$_p/usr/lib/x86_64-linux-gnu/pkgconfig:"*)
		echo "gpu-env: already set to $_p${_did:+ ($_did)}"
		return 0
		;;
	esac
	if [ "${VRAMD_DEPS_FORCE:-0}" != 1 ] && command -v pkg-config >/dev/null 2>&1 &&
		pkg-config --exists $_pk 2>/dev/null; then
		echo "gpu-env: build dependencies installed; nothing to do${_did:+ (but $_did)}"
		return 0
	fi
	if ! ls "$_b"/*.deb >/dev/null 2>&1; then
		echo "gpu-env: build dependencies missing and no bundle in $_b (make gpu-bundle on a machine with apt, then carry .gpudeps)"
		return 1
	fi

	# Unpack once per bundle (its MANIFEST) and prefix.
	_key=$(cat "$_b/MANIFEST" 2>/dev/null; ls -l "$_b"/*.deb)
	if [ "$(cat "$_p/.bundle" 2>/dev/null)" != "$_key" ]; then
		mkdir -p "$_p" && : >"$_p/.vramd-deps" || return 1
		rm -rf "${_p:?}/usr" "${_p:?}/lib" "${_p:?}/rtlib" "${_p:?}/.bundle" || return 1
		for _f in "$_b"/*.deb; do
			if command -v dpkg-deb >/dev/null 2>&1; then
				dpkg-deb -x "$_f" "$_p" || { echo "gpu-env: cannot unpack $_f"; return 1; }
			else
				_t=$(mktemp -d) || return 1
				case "$_f" in /*) _n=$_f ;; *) _n=$PWD/$_f ;; esac
				(cd "$_t" && ar x "$_n" && tar -xf data.tar.* -C "$_p") ||
					{ rm -rf "$_t"; echo "gpu-env: cannot unpack $_f (no dpkg-deb; ar+tar failed)"; return 1; }
				rm -rf "$_t"
			fi
		done
		# The .pc files say /usr: point them at the prefix.
		for _f in "$_p"/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc "$_p"/usr/share/pkgconfig/*.pc; do
			[ -f "$_f" ] || continue
			sed -i -e "s|^\([A-Za-z_]*\)=/usr|\1=$_p/usr|" -e "s|^\([A-Za-z_]*\)=/lib|\1=$_p/lib|" "$_f"
		done
		# Runtime libraries: those vramd links against always, libsystemd0's
		# family only where the image lacks the soname.
		mkdir -p "$_p/rtlib"
		for _f in "$_p"/usr/lib/x86_64-linux-gnu/lib*.so.* "$_p"/lib/x86_64-linux-gnu/lib*.so.*; do
			[ -e "$_f" ] || continue
			_n=${_f##*/}
			case "$_n" in
			*.so.*.*) continue ;; # the soname link is enough
			libsystemd.so.* | libcap.so.* | libpsx.so.* | libgcrypt.so.* | libgpg-error.so.* | \
				liblz4.so.* | liblzma.so.* | libzstd.so.*)
				if { /sbin/ldconfig -p 2>/dev/null || ldconfig -p 2>/dev/null; } | grep -q "^[[:space:]]*$_n " ||
					[ -e "/usr/lib/x86_64-linux-gnu/$_n" ] || [ -e "/lib/x86_64-linux-gnu/$_n" ]; then
					continue
				fi
				;;
			esac
			ln -sf "$_f" "$_p/rtlib/$_n"
		done
		echo "$_key" >"$_p/.bundle"
		_did="unpacked $(ls "$_b"/*.deb | wc -l) packages from $_b into $_p${_did:+, $_did}"
	else
		_did="reused $_p${_did:+, $_did}"
	fi

	_l=$_p/usr/lib/x86_64-linux-gnu:$_p/lib/x86_64-linux-gnu
	PKG_CONFIG_PATH=$_p/usr/lib/x86_64-linux-gnu/pkgconfig:$_p/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
	CPATH=$_p/usr/include${CPATH:+:$CPATH}
	LIBRARY_PATH=$_l${LIBRARY_PATH:+:$LIBRARY_PATH}
	LD_LIBRARY_PATH=$_p/rtlib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
	PATH=$PATH:$_p/usr/bin
	# Also ahead of pkg-config's default search path (PKG_CONFIG_LIBDIR): a
	# command that replaces PKG_CONFIG_PATH (test-systemd's build against
	# the installed vram.pc) must still find vram.pc's Requires.private.
	_l=$(pkg-config --variable pc_path pkg-config 2>/dev/null)
	[ -n "$_l" ] || _l=/usr/local/lib/x86_64-linux-gnu/pkgconfig:/usr/local/lib/pkgconfig:/usr/local/share/pkgconfig:/usr/lib/x86_64-linux-gnu/pkgconfig:/usr/lib/pkgconfig:/usr/share/pkgconfig
	PKG_CONFIG_LIBDIR=$_p/usr/lib/x86_64-linux-gnu/pkgconfig:$_p/usr/share/pkgconfig:${PKG_CONFIG_LIBDIR:-$_l}
	# What is built here finds its libraries without LD_LIBRARY_PATH too (a
	# command that replaces it: test-systemd's run of a program linked
	# against the installed libvram.so): make reads LDFLAGS from here.
	case " ${LDFLAGS:-} " in
	*" -Wl,-rpath,$_p/rtlib "*) ;;
	*) LDFLAGS="-Wl,-rpath,$_p/rtlib${LDFLAGS:+ $LDFLAGS}" ;;
	esac
	export PKG_CONFIG_PATH PKG_CONFIG_LIBDIR CPATH LIBRARY_PATH LD_LIBRARY_PATH PATH LDFLAGS
	if ! pkg-config --exists $_pk; then
		echo "gpu-env: $_did, but pkg-config still misses some of: $_pk"
		return 1
	fi
	echo "gpu-env: $_did; PKG_CONFIG_PATH/LIBDIR, CPATH, LIBRARY_PATH, LD_LIBRARY_PATH and LDFLAGS' rpath ($_p/rtlib: $(ls "$_p/rtlib" | tr '\n' ' ' | sed 's/ $//')), PATH set"
}
_vramd_gpu_env
_vramd_gpu_rc=$?
unset -f _vramd_gpu_env
unset _b _p _pk _did _key _f _t _n _l
# `return` ends a sourced file; outside one (sh scripts/gpu-env.sh) it fails,
# and the status is the script's own.
return $_vramd_gpu_rc 2>/dev/null || exit $_vramd_gpu_rc
