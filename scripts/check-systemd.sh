#!/bin/bash
# vramd under a real systemd: boots a Debian 12 container with systemd as
# PID 1 (systemd-nspawn), installs the freshly built vramd into it the
# documented way (docs/admin.md: make install, systemd-sysusers,
# systemd-tmpfiles, daemon-reload, enable --now vramd.socket vramd.service)
# and checks, one PASS/FAIL line each (docs/systemd-test.md lists them):
# install, units load without warnings, Type=notify, journal identifier,
# hardening in force, a libvram program built with the installed vram.pc
# alone, socket activation, reload (a config created after the start, a
# broken one fails, a good one succeeds), uid ceilings and ownership of
# grants across `systemctl kill -s SIGKILL vramd`, a FREE after that
# restart, quotas across a reboot, two pagers across a restart, the
# watchdog, `systemd-analyze security`, `make uninstall` on the running
# system.
#
# Needs root, systemd-nspawn and debootstrap (installed with apt-get when
# missing), and the network for the first run (debootstrap from Debian's
# mirror; the rootfs is cached in $VRAMD_NSPAWN_CACHE and reused).  Exits
# 77 with one line saying why where this machine cannot boot a container,
# 0 when every check passed, 1 otherwise.  Not part of `make check`: it
# takes minutes.
#
# Environment:
#   VRAM_BUILD            build directory (default build)
#   VRAM_PYTHON           python with numpy, for the pager's checkpoint
#                         (default .venv/bin/python)
#   VRAMD_NSPAWN_CACHE    rootfs cache and scratch (default /var/tmp/vramd-nspawn)
#   VRAMD_NSPAWN_MIRROR   Debian mirror (default http://deb.debian.org/debian)
#   VRAMD_NSPAWN_KEEP=1   keep the container's tree after the run (for a look)
#   VRAMD_NSPAWN_KNOWN    checks that fail through a known defect being
#                         fixed elsewhere: reported XFAIL, not failing the
#                         run (an XPASS fails it: take the name out)
set -u

cd "$(dirname "$0")/.." || exit 1
REPO=$PWD
BUILD=${VRAM_BUILD:-build}
MAKE=${MAKE:-make}
PYTHON=${VRAM_PYTHON:-$REPO/.venv/bin/python}
CACHE=${VRAMD_NSPAWN_CACHE:-/var/tmp/vramd-nspawn}
MIRROR=${VRAMD_NSPAWN_MIRROR:-http://deb.debian.org/debian}
KNOWN=${VRAMD_NSPAWN_KNOWN-}
MAX_EXPOSURE=2.0
SUITE=bookworm
# What the container has besides debootstrap's minbase: systemd as init,
# the libraries vramd and libvram load, a compiler and pkg-config for the
# vram.pc check (deliberately not liburing-dev or libjansson-dev), make for
# `make uninstall`, jq to read `vramctl --json status`.
PKGS=systemd,systemd-sysv,dbus,liburing2,libjansson4,libnuma1,libxxhash0,libsystemd0,make,gcc,libc6-dev,pkg-config,jq,procps
STAMP="$SUITE $PKGS 1"
CPATH_=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

t_start=$SECONDS
NSPAWN="" LEADER="" WORK="" RUN="" CONSOLE="" BOOTS=0 MADE_RUNDIR=0 DONE=0
npass=0 nfail=0 nskip=0 nxfail=0 failed="" xfailed=""

say() { echo "check-systemd: $*"; }
skip_all() { DONE=1; say "skipped: $*"; exit 77; }

# ---- results -----------------------------------------------------------------

known() { case " $KNOWN " in *" $1 "*) return 0 ;; esac; return 1; }
defect() {
	case $1 in
	*) echo "listed in VRAMD_NSPAWN_KNOWN" ;;
	esac
}
pass() {
	if known "$1"; then
		echo "XPASS $1: $2 -- the known defect ($(defect "$1")) no longer shows: take $1 out of KNOWN in $0"
		nfail=$((nfail + 1)); failed="$failed $1"
	else
		echo "PASS $1: $2"
		npass=$((npass + 1))
	fi
}
fail() {
	if known "$1"; then
		echo "XFAIL $1: $2 [known defect: $(defect "$1")]"
		nxfail=$((nxfail + 1)); xfailed="$xfailed $1"
	else
		echo "FAIL $1: $2"
		nfail=$((nfail + 1)); failed="$failed $1"
	fi
}
skip() { echo "SKIP $1: $2"; nskip=$((nskip + 1)); }
# check NAME DETAIL-ON-PASS DETAIL-ON-FAIL CONDITION: CONDITION is shell
# text, evaluated here; returns its status.
check() {
	if eval "$4"; then pass "$1" "$2"; return 0; fi
	fail "$1" "$3"
	return 1
}

# ---- the container -----------------------------------------------------------

# cx CMD...: runs CMD inside the booted container as root, with a clean
# environment, bounded by $T seconds (default 60).
cx() {
	timeout -k 5 "${T:-60}" nsenter -t "$LEADER" -m -u -i -n -p -C -- \
		/usr/bin/env -i PATH=$CPATH_ HOME=/root LANG=C.UTF-8 TERM=dumb SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}
# cxu CMD...: the same as the unprivileged user vramtest (member of vram).
cxu() { cx setpriv --reuid=vramtest --regid=vramtest --init-groups -- "$@"; }
# cxs SCRIPT: a shell snippet inside the container.
cxs() { cx /bin/sh -c "$1"; }

# wait_for SECONDS CMD...: polls CMD every 0.5 s until it succeeds.
wait_for() {
	local end=$((SECONDS + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		[ $SECONDS -lt "$end" ] || return 1
		sleep 0.5
	done
}

find_leader() {
	local p
	kill -0 "$NSPAWN" 2>/dev/null || return 1
	for p in $(pgrep -P "$NSPAWN"); do
		[ "$(cat /proc/"$p"/comm 2>/dev/null)" = systemd ] && { LEADER=$p; return 0; }
	done
	return 1
}
booted() {
	local s
	s=$(T=10 cx systemctl is-system-running 2>/dev/null)
	[ "$s" = running ] || [ "$s" = degraded ]
}
# For wait_for: also done when nspawn has exited (no use waiting then).
leader_or_gone() { find_leader || ! kill -0 "$NSPAWN" 2>/dev/null; }
booted_or_gone() { booted || ! kill -0 "$NSPAWN" 2>/dev/null; }

# boot: starts the container and waits (90 s at most) until systemd in it
# says its start-up is done.  Returns 1 with $BOOT_ERR set otherwise.
boot() {
	BOOTS=$((BOOTS + 1))
	CONSOLE=$WORK/console.$BOOTS.log
	# nspawn's propagation directory on a private tmpfs: it cannot remove
	# it from a /run that is not tmpfs, and the host's /run stays clean.
	[ -d /run/systemd/nspawn ] || MADE_RUNDIR=1
	unshare -m /bin/sh -c 'mkdir -p /run/systemd/nspawn && mount -t tmpfs tmpfs /run/systemd/nspawn && exec "$@"' sh \
		systemd-nspawn -q -D "$RUN" -M vramd-check --keep-unit --register=no --private-network \
		--console=pipe -b </dev/null >"$CONSOLE" 2>&1 9>&- &
	NSPAWN=$!
	LEADER=""
	if ! wait_for 30 leader_or_gone || [ -z "$LEADER" ]; then
		BOOT_ERR="systemd-nspawn did not start systemd in the container: $(tail -n 3 "$CONSOLE" | paste -sd ' ')"
		return 1
	fi
	if ! wait_for 90 booted_or_gone || ! kill -0 "$NSPAWN" 2>/dev/null; then
		BOOT_ERR="systemd in the container did not finish booting in 90 s ($(T=10 cx systemctl is-system-running 2>&1)): $(tail -n 3 "$CONSOLE" | paste -sd ' ')"
		return 1
	fi
	return 0
}

# stop_container: a clean poweroff (30 s), else SIGKILL to the container's
# init, which ends every process in its PID namespace.
stop_container() {
	[ -n "$NSPAWN" ] || return 0
	if kill -0 "$NSPAWN" 2>/dev/null; then
		[ -n "$LEADER" ] && T=10 cx systemctl poweroff --no-block >/dev/null 2>&1
		wait_for 30 sh -c "! kill -0 $NSPAWN" || {
			[ -n "$LEADER" ] && kill -KILL "$LEADER" 2>/dev/null
			kill -KILL "$NSPAWN" 2>/dev/null
		}
	fi
	wait "$NSPAWN" 2>/dev/null
	NSPAWN="" LEADER=""
	[ "$MADE_RUNDIR" = 1 ] && rmdir /run/systemd/nspawn 2>/dev/null
}

# On exit: the container stopped, its tree removed (VRAMD_NSPAWN_KEEP=1
# keeps it), the logs ($WORK) kept only when a check failed.
cleanup() {
	stop_container
	[ -n "$WORK" ] && [ -d "$WORK" ] || return 0
	if [ "${VRAMD_NSPAWN_KEEP:-0}" = 1 ]; then
		say "kept the container's tree: $RUN (systemd-nspawn -D $RUN -b to look; rm -rf $WORK when done)"
		return 0
	fi
	if grep -qF " $RUN" /proc/self/mountinfo; then
		say "something is still mounted under $RUN: left in place"
		return 0
	fi
	rm -rf --one-file-system "$RUN"
	if [ "$DONE" != 1 ]; then
		say "logs (console, install, checkpoint) kept in $WORK"
	elif [ $nfail -eq 0 ]; then
		rm -rf "$WORK"
	fi
}

# ---- preconditions -------------------------------------------------------------

[ "$(uname -s)" = Linux ] || skip_all "systemd-nspawn needs Linux"
[ "$(id -u)" = 0 ] || skip_all "needs root (systemd-nspawn boots a container); run it as root"
for t in nsenter unshare setpriv flock timeout pgrep; do
	command -v $t >/dev/null || skip_all "$t is missing (util-linux, procps, coreutils)"
done
if ! command -v systemd-nspawn >/dev/null || ! command -v debootstrap >/dev/null; then
	command -v apt-get >/dev/null || skip_all "systemd-nspawn or debootstrap is missing and there is no apt-get to install them"
	say "installing Debian packages: systemd-container debootstrap"
	{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		systemd-container debootstrap; } >/dev/null 2>&1 ||
		skip_all "systemd-nspawn or debootstrap is missing and apt-get could not install systemd-container debootstrap"
fi
# The container gets the unified cgroup hierarchy (cgroup v2), as Debian
# 12 boots by default; on a hybrid host (cgroup v1 controllers plus
# /sys/fs/cgroup/unified) nspawn would otherwise give it the hybrid layout.
# SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=0 in the environment keeps that.
if [ -z "${SYSTEMD_NSPAWN_UNIFIED_HIERARCHY:-}" ] && [ "$(stat -f -c %T /sys/fs/cgroup 2>/dev/null)" != cgroup2fs ] &&
	[ "$(stat -f -c %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ]; then
	export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1
fi

mkdir -p "$CACHE" || skip_all "cannot create $CACHE"
exec 9>"$CACHE/lock"
flock -w 1200 9 || { say "another check-systemd run has held $CACHE/lock for 20 minutes"; exit 1; }

# ---- build, rootfs -------------------------------------------------------------

say "building vramd ($BUILD)"
$MAKE --no-print-directory BUILD="$BUILD" "$BUILD/bin/vramd" "$BUILD/bin/vramctl" "$BUILD/lib/libvram.so.0" \
	"$BUILD/lib/libvram.a" >/dev/null || { say "build failed"; exit 1; }

BASE=$CACHE/$SUITE
if [ "$(cat "$BASE/.vramd-nspawn" 2>/dev/null)" != "$STAMP" ]; then
	say "making the Debian $SUITE rootfs $BASE (debootstrap from $MIRROR: a few minutes, once)"
	rm -rf --one-file-system "$BASE" "$BASE.new"
	t0=$SECONDS
	if ! timeout 1800 debootstrap --variant=minbase --include="$PKGS" "$SUITE" "$BASE.new" "$MIRROR" \
		>"$CACHE/debootstrap.log" 2>&1; then
		why=$(grep -E '^(E|W):' "$CACHE/debootstrap.log" | tail -n 1)
		rm -rf --one-file-system "$BASE.new"
		skip_all "debootstrap of Debian $SUITE from $MIRROR failed (${why:-see $CACHE/debootstrap.log}); the first run needs the network"
	fi
	rm -f "$BASE.new"/var/cache/apt/archives/*.deb
	echo "$STAMP" >"$BASE.new/.vramd-nspawn"
	mv "$BASE.new" "$BASE"
	say "rootfs made in $((SECONDS - t0)) s"
fi

WORK=$(mktemp -d "$CACHE/run.XXXXXX") || exit 1
RUN=$WORK/root
trap cleanup EXIT
trap 'exit 130' INT TERM
cp -a --reflink=auto "$BASE" "$RUN" || { say "cannot copy $BASE"; exit 1; }

# The documented install, staged into the container's tree: what `sudo make
# install` puts on a machine (ldconfig runs inside, below).
$MAKE --no-print-directory BUILD="$BUILD" install DESTDIR="$RUN" PREFIX=/usr/local >"$WORK/install.log" 2>&1 || {
	cat "$WORK/install.log"
	say "make install DESTDIR=$RUN failed"
	exit 1
}
# The source tree for `make uninstall` inside (no build directory: the
# uninstall needs none), the client program's source, a checkpoint.
mkdir -p "$RUN/usr/src/vramd" "$RUN/usr/src/vt" "$RUN/var/tmp/vt"
chmod 1777 "$RUN/var/tmp/vt"
if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
	git -C "$REPO" ls-files -z | tar -C "$REPO" --null -T - -cf - | tar -C "$RUN/usr/src/vramd" -xf -
else
	tar -C "$REPO" --exclude=./build\* --exclude=./.venv --exclude=./.git -cf - . | tar -C "$RUN/usr/src/vramd" -xf -
fi
cp scripts/check-systemd-client.c "$RUN/usr/src/vt/"
# Built here, run there: a host whose libraries are newer than Debian 12's
# cannot test this way.
out=$(chroot "$RUN" /usr/local/bin/vramd --help 2>&1 >/dev/null) ||
	skip_all "the vramd built here does not run in Debian $SUITE: ${out%%$'\n'*}"
CKPT=""
if "$PYTHON" tests/make_checkpoint.py --out "$RUN/var/tmp/vt/ck.safetensors" --size $((64 << 20)) >"$WORK/ckpt.log" 2>&1; then
	chmod 0644 "$RUN/var/tmp/vt/ck.safetensors"
	CKPT=/var/tmp/vt/ck.safetensors
fi

# ---- boot ----------------------------------------------------------------------

t_boot=$SECONDS
boot || skip_all "this machine cannot boot a container with systemd-nspawn: $BOOT_ERR"
say "container booted in $((SECONDS - t_boot)) s ($(T=10 cx systemctl is-system-running)); systemd $(T=10 cx systemctl --version | head -n 1 | cut -d' ' -f2), $(T=10 cx stat -f -c %T /sys/fs/cgroup | sed 's/cgroup2fs/cgroup v2/; s/tmpfs/cgroup v1 (hybrid)/')"
degraded=$(T=10 cx systemctl --failed --plain --no-legend | cut -d' ' -f1 | tr '\n' ' ')
[ -n "$degraded" ] && say "failed units in the container before vramd (not ours): $degraded"

# ---- helpers on the broker -----------------------------------------------------

prop() { T=10 cx systemctl show --value -p "$2" "$1"; }
mainpid() { prop vramd.service MainPID; }
# restarted OLDPID: a new main process that is running (READY=1 sent).
restarted() {
	local p
	p=$(mainpid)
	[ -n "$p" ] && [ "$p" != 0 ] && [ "$p" != "$1" ] && [ "$(prop vramd.service ActiveState)" = active ]
}
# status_jq FILTER: `vramctl --json status` through jq -r FILTER.
status_jq() { cx /bin/sh -c 'vramctl --json status | jq -r "$1"' sh "$1"; }
dev_used() { status_jq ".devices[] | select(.name == \"$1\") | .used"; }
# held_by PID: bytes the clients of that pid hold (its restored entry too).
held_by() { status_jq "[.clients[] | select(.pid == $1) | .held] | add // 0"; }
MiB=$((1 << 20))
journal_since() { T=20 cx journalctl -b --no-pager -o cat --since "@$1" "${@:2}"; }
# show_journal SINCE: the broker's and the test clients' lines since then,
# after a failed check (what the lead needs to reproduce it).
show_journal() {
	T=20 cx journalctl -b --no-pager -o short-monotonic --since "@$1" -u vramd.service -u 'vt-*' |
		tail -n "${2:-25}" | sed 's/^/    | /'
}
now() { date +%s; }

# ---- install -------------------------------------------------------------------

t0=$(now)
out=$(T=120 cxs 'ldconfig && systemd-sysusers && systemd-tmpfiles --create vramd.conf && systemctl daemon-reload &&
	systemctl enable --now vramd.socket vramd.service' 2>&1)
rc=$?
VRAMD_UID=$(cxs 'id -u vramd' 2>/dev/null)
sdir=$(cxs 'stat -c "%a %U %G" /var/lib/vramd' 2>/dev/null)
state="$(prop vramd.socket ActiveState)/$(prop vramd.service ActiveState), enabled $(T=10 cx systemctl is-enabled vramd.socket vramd.service | tr '\n' ' ')"
if [ $rc -eq 0 ] && [ -n "$VRAMD_UID" ] && cxs 'getent group vram' >/dev/null && [ "$sdir" = "700 vramd vram" ] &&
	[ "$state" = "active/active, enabled enabled enabled " ]; then
	pass install "sysusers (user vramd uid $VRAMD_UID, group vram), tmpfiles (/var/lib/vramd $sdir), enable --now: $state"
else
	fail install "rc $rc, vramd uid '$VRAMD_UID', /var/lib/vramd '$sdir', units $state: $out"
	say "the broker is not running; nothing else can be checked. Journal:"
	T=20 cx journalctl -b --no-pager -n 30 -u vramd.service -u vramd.socket
	say "$npass passed, $((nfail)) failed, $nskip skipped"
	exit 1
fi

warn=$(T=20 cx journalctl -b --no-pager -o cat | grep -E '/vramd[^ :]*\.(service|socket|timer):[0-9]+:')
check units-load "systemd logged no warning about vramd's unit files" "systemd warns: $warn" '[ -z "$warn" ]'

ty=$(prop vramd.service Type) st=$(prop vramd.service StatusText) sub=$(prop vramd.service SubState)
check notify "Type=$ty, $sub, STATUS=\"$st\" (READY=1 from vramd)" "Type=$ty, $sub, STATUS=\"$st\"" \
	'[ "$ty" = notify ] && [ "$sub" = running ] && [ "${st#serving }" != "$st" ]'

n=$(T=20 cx journalctl -b --no-pager -o cat -t vramd | wc -l)
ids=$(T=20 cxs 'journalctl -b -o json _SYSTEMD_UNIT=vramd.service | jq -r .SYSLOG_IDENTIFIER | sort -u | tr "\n" " "')
first=$(T=20 cx journalctl -b --no-pager -o cat -t vramd | head -n 1)
check journal "journalctl -t vramd: $n lines (\"$first\"); identifiers of the unit's lines: $ids" \
	"journalctl -t vramd: $n lines; identifiers of the unit's lines: $ids" \
	'[ "$n" -gt 0 ] && [ "$ids" = "vramd " ]'

pid=$(mainpid)
ps=$(cxs "grep -E '^(Uid|NoNewPrivs|CapEff|CapBnd|Seccomp):' /proc/$pid/status | tr -s '\t ' ' ' | tr '\n' ';'")
case $ps in
"Uid: $VRAMD_UID $VRAMD_UID $VRAMD_UID $VRAMD_UID;"*"CapEff: 0000000000000000;CapBnd: 0000000000000000;NoNewPrivs: 1;Seccomp: 2;"*)
	pass hardening "the broker runs as vramd, no capabilities, no new privileges, seccomp filter ($ps)" ;;
*) fail hardening "/proc/$pid/status of the broker: $ps" ;;
esac
# ProtectProc=invisible: in the broker's mount namespace, its user sees its
# own processes only (why the fd store's names carry the holder's uid).
vis=$(cxs "nsenter -t $pid -m -- setpriv --reuid=vramd --regid=vram --clear-groups ls /proc | grep -c '^[0-9]'")
allp=$(cxs "ls /proc | grep -c '^[0-9]'")
check protect-proc "user vramd sees $vis of $allp processes in the broker's /proc (ProtectProc=invisible)" \
	"user vramd sees '$vis' of $allp processes in the broker's /proc" '[ -n "$vis" ] && [ "$vis" -gt 0 ] && [ "$vis" -lt "$allp" ]'

# ---- a client built with the installed vram.pc -------------------------------------

out=$(cxs 'useradd -M -s /usr/sbin/nologin vramtest && usermod -aG vram vramtest' 2>&1) || say "useradd: $out"
VT_UID=$(cxs 'id -u vramtest')
dev=$(cxs 'dpkg-query -W -f "\${Package} \${Status}\n" liburing-dev libjansson-dev 2>/dev/null | grep -c "install ok installed"')
flags=$(T=10 cx pkg-config --cflags --libs vram 2>&1)
out=$(T=120 cxs 'cc -Wall -Werror -o /usr/src/vt/vt-client /usr/src/vt/check-systemd-client.c $(pkg-config --cflags --libs vram) 2>&1 &&
	chmod 755 /usr/src/vt /usr/src/vt/vt-client' 2>&1)
rc=$?
ran=$(T=20 cxu /usr/src/vt/vt-client alloc cpu 4 2>&1)
check pkg-config "without liburing-dev/libjansson-dev ($dev installed): pkg-config gives '$flags'; a program built with it, run as a member of vram: $ran" \
	"pkg-config gives '$flags' (rc of the build $rc: $out); run: $ran" \
	'[ "$dev" = 0 ] && [ $rc -eq 0 ] && [ "$ran" = "granted 4 MiB on cpu" ]'
VT=/usr/src/vt/vt-client

# ---- socket activation ---------------------------------------------------------

T=30 cx systemctl stop vramd.service 2>/dev/null
s1=$(prop vramd.socket ActiveState) s2=$(prop vramd.service ActiveState)
out=$(T=60 cxu vramctl status 2>&1)
rc=$?
out=$(echo "$out" | head -n 1)
s3=$(prop vramd.service ActiveState)
check socket-activation "service stopped ($s2), socket $s1; vramctl status as vramtest started it ($s3): $out" \
	"after stop: socket $s1 service $s2; vramctl status (rc $rc): $out; service then $s3" \
	'[ "$s1" = active ] && [ "$s2" = inactive ] && [ "$s3" = active ] && [ $rc -eq 0 ]'

# ---- reload --------------------------------------------------------------------

# The broker started without /etc/vramd/vramd.conf; one written now is read
# by the reload.
cxs 'printf "[vramd]\nclient-max = 16MiB\n" > /etc/vramd/vramd.conf'
T=30 cx systemctl reload vramd.service
rc=$?
T=20 cxu $VT alloc cpu 32 >/dev/null 2>&1
a32=$?
T=20 cxu $VT alloc cpu 8 >/dev/null 2>&1
a8=$?
check config-after-start "vramd.conf written after the start, systemctl reload (rc $rc): client-max = 16MiB now refuses 32 MiB (exit $a32) and grants 8 MiB (exit $a8)" \
	"systemctl reload rc $rc; 32 MiB: exit $a32 (2 = EDQUOT wanted); 8 MiB: exit $a8" '[ $rc -eq 0 ] && [ $a32 -eq 2 ] && [ $a8 -eq 0 ]'

pid=$(mainpid)
t0=$(now)
cxs 'printf "bogus-key = 1\n" >> /etc/vramd/vramd.conf'
T=30 cx systemctl reload vramd.service >/dev/null 2>&1
rc=$?
T=30 cx vramctl reload >/dev/null 2>&1
rc2=$?
why=$(journal_since "$t0" -u vramd.service | grep -m 1 'bogus-key')
T=20 cxu $VT alloc cpu 32 >/dev/null 2>&1
a32=$?
check reload-broken "a broken vramd.conf: systemctl reload exits $rc, vramctl reload $rc2, the journal says \"$why\", same broker ($pid), client-max kept (32 MiB: exit $a32)" \
	"systemctl reload rc $rc (non-zero wanted), vramctl reload rc $rc2 (78 wanted), journal: \"$why\", pid $pid -> $(mainpid), 32 MiB: exit $a32 (2 wanted)" \
	'[ $rc -ne 0 ] && [ $rc2 -eq 78 ] && [ -n "$why" ] && [ "$(mainpid)" = "$pid" ] && [ $a32 -eq 2 ]'

# The configuration for the rest: small pools, a simulated GPU.
cxs 'printf "[vramd]\n# check-systemd: no GPU here\nsim-gpus = 512MiB\nhost-pool = 1GiB\nverbose = yes\n" > /etc/vramd/vramd.conf'
T=30 cx systemctl reload vramd.service
rc=$?
T=20 cxu $VT alloc cpu 32 >/dev/null 2>&1
a32=$?
T=60 cx systemctl restart vramd.service
devs=$(status_jq '[.devices[] | "\(.name)=\(.total / 1048576)MiB\(if .simulated then "(sim)" else "" end)"] | join(" ")')
check reload-good "a good vramd.conf: systemctl reload exits $rc, client-max gone (32 MiB: exit $a32); after a restart: $devs" \
	"systemctl reload rc $rc, 32 MiB: exit $a32 (0 wanted), devices after restart: $devs" \
	'[ $rc -eq 0 ] && [ $a32 -eq 0 ] && [ "$devs" = "cuda:0=512MiB(sim) cpu=1024MiB" ]'

# ---- grants and a uid ceiling across SIGKILL -------------------------------------

T=10 cx vramctl quota set uid:"$VT_UID" cpu --ceiling 400MiB >/dev/null
T=10 cx systemd-run -q --unit=vt-holder -p User=vramtest $VT hold /var/tmp/vt/holder.state cpu 256 32
holder_ready() { [ "$(cx cat /var/tmp/vt/holder.state 2>/dev/null)" = ready ]; }
if ! wait_for 30 holder_ready; then
	fail ceiling-after-sigkill "the holder (vramtest, 256 + 32 MiB on cpu) did not get ready: $(T=10 cx journalctl -b -o cat -u vt-holder | tail -n 3)"
else
	HP=$(prop vt-holder.service MainPID)
	T=20 cxu $VT alloc cpu 192 >/dev/null 2>&1
	b192=$?
	T=20 cxu $VT alloc cpu 96 >/dev/null 2>&1
	b96=$?
	pid=$(mainpid)
	t_kill=$(now)
	T=20 cx systemctl kill -s SIGKILL vramd.service
	wait_for 30 restarted "$pid"
	newpid=$(mainpid)
	who=$(status_jq "[.clients[] | select(.pid == $HP) | \"\(.name) uid \(.uid) \(.held / 1048576) MiB\"] | join(\", \")")
	held=$(held_by "$HP")
	uids=$(status_jq "[.clients[] | select(.pid == $HP) | .uid] | unique | map(tostring) | join(\",\")")
	T=20 cxu $VT alloc cpu 192 >/dev/null 2>&1
	a192=$?
	T=20 cxu $VT alloc cpu 96 >/dev/null 2>&1
	a96=$?
	check ceiling-after-sigkill "quota uid:$VT_UID cpu ceiling 400MiB, holder pid $HP with 288 MiB; before: 192 MiB refused (exit $b192), 96 MiB granted (exit $b96); systemctl kill -s SIGKILL, restarted ($pid -> $newpid): status shows $who; 192 MiB refused (exit $a192), 96 MiB granted (exit $a96)" \
		"before: 192 MiB exit $b192 (2 wanted), 96 MiB exit $b96 (0 wanted); broker $pid -> $newpid; status for the holder: '$who' (uid $VT_UID, 288 MiB wanted); after: 192 MiB exit $a192 (2 wanted), 96 MiB exit $a96 (0 wanted)" \
		'[ $b192 -eq 2 ] && [ $b96 -eq 0 ] && [ "$newpid" != "$pid" ] && [ "$uids" = "$VT_UID" ] &&
		[ "$held" = $((288 * MiB)) ] && [ $a192 -eq 2 ] && [ $a96 -eq 0 ]' || show_journal "$t_kill"

	# The holder's first call after the restart: FREE of its 256 MiB grant
	# (libvram reconnects and re-registers both grants first).
	T=10 cx systemctl kill -s SIGUSR1 vt-holder.service
	freed() { case $(cx cat /var/tmp/vt/holder.state 2>/dev/null) in freed*) return 0 ;; esac; return 1; }
	wait_for 30 freed
	res=$(cx cat /var/tmp/vt/holder.state 2>/dev/null)
	sleep 1
	held=$(held_by "$HP") used=$(dev_used cpu)
	who=$(status_jq "[.clients[] | select(.pid == $HP) | \"\(.name) \(.grants) grants \(.held / 1048576) MiB\"] | join(\", \")")
	check free-after-restart "the holder freed its 256 MiB grant after the restart ($res): it holds 32 MiB ($who), cpu used $((used / MiB)) MiB" \
		"the holder's FREE of its 256 MiB grant after the restart: '$res'; the broker then has for it: '$who' (32 MiB wanted), cpu used $((${used:-0} / MiB)) MiB (32 wanted)" \
		'[ "$res" = "freed 256 0" ] && [ "$held" = $((32 * MiB)) ] && [ "$used" = $((32 * MiB)) ]' ||
		show_journal "$t_kill"

	T=20 cx systemctl stop vt-holder.service
	zero() { [ "$(dev_used cpu)" = 0 ]; }
	wait_for 10 zero
	check holder-exit "the holder stopped: cpu used back to 0" "the holder stopped: cpu used $(($(dev_used cpu) / MiB)) MiB (0 wanted)" zero
fi

# ---- reboot --------------------------------------------------------------------

t_boot=$SECONDS
stop_container
if ! boot; then
	fail reboot "the container did not boot again: $BOOT_ERR"
else
	sv=$(prop vramd.service ActiveState)
	ql=$(T=10 cx vramctl quota list 2>&1 | grep -F "uid:$VT_UID")
	check reboot "rebooted in $((SECONDS - t_boot)) s: vramd.service $sv (enabled), quota kept: $ql" \
		"after a reboot: vramd.service $sv (active wanted), quota list for uid:$VT_UID: '$ql'" \
		'[ "$sv" = active ] && [ "${ql#*400}" != "$ql" ]'
fi
T=10 cx vramctl quota rm uid:"$VT_UID" >/dev/null 2>&1

# ---- two pagers across SIGKILL -----------------------------------------------------

if [ -z "$CKPT" ]; then
	skip pager-reconnect "no checkpoint for the pagers ($PYTHON tests/make_checkpoint.py: $(tail -n 1 "$WORK/ckpt.log"); make deps)"
else
	for i in 1 2; do
		T=10 cx systemd-run -q --unit=vt-pager$i -p User=vramtest vramctl bench pager $CKPT --passes 1000 \
			--compute-ms-per-gb 20000 --unet-virtual-vram-gb 0.02 --ready-file /var/tmp/vt/pager$i.ready
	done
	pagers_ready() { cx test -e /var/tmp/vt/pager1.ready && cx test -e /var/tmp/vt/pager2.ready; }
	if ! wait_for 60 pagers_ready; then
		fail pager-reconnect "the pagers did not get ready: $(T=10 cx journalctl -b -o cat -u vt-pager1 -u vt-pager2 | tail -n 4 | tr '\n' ' ')"
	else
		P1=$(prop vt-pager1.service MainPID) P2=$(prop vt-pager2.service MainPID)
		sel="select(.pid == $P1 or .pid == $P2)"
		h0=$(status_jq "[.clients[] | $sel | .held] | add // 0")
		u0=$(status_jq '[.devices[] | .used] | add')
		pid=$(mainpid)
		t_kill=$(now)
		T=20 cx systemctl kill -s SIGKILL vramd.service
		wait_for 30 restarted "$pid"
		u1=$(status_jq '[.devices[] | .used] | add')
		who=$(status_jq "[.clients[] | $sel | \"\(.name) pid \(.pid) uid \(.uid) \(.held / 1048576) MiB\"] | join(\", \")")
		check pager-accounting "two pagers across SIGKILL: devices used $((u0 / MiB)) MiB before, $((u1 / MiB)) MiB right after the restart (fd store: $who)" \
			"two pagers across SIGKILL: devices used $((u0 / MiB)) MiB before, $((u1 / MiB)) MiB right after the restart (fd store: '$who')" \
			'[ "$u1" = "$u0" ] && [ "$u0" -gt 0 ]'
		back() {
			[ "$(status_jq "[.clients[] | $sel | select(.name != \"restored\" and .held > 0)] | length")" = 2 ]
		}
		wait_for 20 back
		ok=$?
		after=$(status_jq "[.clients[] | $sel | \"\(.name) pid \(.pid) \(.held / 1048576) MiB\"] | join(\", \")")
		u2=$(status_jq '[.devices[] | .used] | add')
		alive=$(prop vt-pager1.service ActiveState)/$(prop vt-pager2.service ActiveState)
		check pager-reconnect "two pagers ($((h0 / MiB)) MiB, devices used $((u0 / MiB)) MiB) across SIGKILL: used $((u1 / MiB)) MiB right after the restart, both back within 20 s: $after" \
			"two pagers (pids $P1 $P2, $((h0 / MiB)) MiB held, devices used $((u0 / MiB)) MiB) across SIGKILL: devices used $((u1 / MiB)) MiB right after the restart, $((u2 / MiB)) MiB 20 s later; their entries then: '$after' (both reconnected wanted); pagers $alive" \
			'[ $ok -eq 0 ] && [ "$u2" = "$u0" ]' || show_journal "$t_kill" 12
	fi
	T=30 cx systemctl stop vt-pager1.service vt-pager2.service >/dev/null 2>&1
	T=10 cx systemctl reset-failed >/dev/null 2>&1
	allzero() { [ "$(status_jq '[.devices[] | .used] | add')" = 0 ]; }
	wait_for 10 allzero
	check pager-exit "the pagers stopped: devices used back to 0" "the pagers stopped: devices used $(($(status_jq '[.devices[] | .used] | add') / MiB)) MiB (0 wanted)" allzero
fi

# ---- watchdog ------------------------------------------------------------------

pid=$(mainpid)
t0=$(now)
nr0=$(prop vramd.service NRestarts)
T=10 cx systemctl kill -s SIGSTOP --kill-whom=main vramd.service
wait_for 75 restarted "$pid"
ok=$?
nr1=$(prop vramd.service NRestarts)
wd=$(journal_since "$t0" -u vramd.service | grep -m 1 -i 'watchdog timeout')
check watchdog "a stopped broker (SIGSTOP): \"$wd\", restarted after $(($(now) - t0)) s ($pid -> $(mainpid), NRestarts $nr0 -> $nr1)" \
	"SIGSTOP to the broker: journal '$wd', pid $pid -> $(mainpid), NRestarts $nr0 -> $nr1 ($(prop vramd.service ActiveState))" \
	'[ $ok -eq 0 ] && [ -n "$wd" ] && [ "$nr1" -gt "$nr0" ]'

# ---- systemd-analyze security --------------------------------------------------

sec=$(T=60 cx systemd-analyze security --no-pager vramd.service 2>&1 | grep 'Overall exposure level')
lvl=$(echo "$sec" | grep -oE '[0-9]+\.[0-9]+' | head -n 1)
check security "systemd-analyze security: ${sec#*→ }" "systemd-analyze security: '$sec' (at most $MAX_EXPOSURE wanted)" \
	'awk -v a="${lvl:-99}" -v b="$MAX_EXPOSURE" "BEGIN { exit !(a <= b) }"'

# ---- make uninstall on the running system --------------------------------------

T=30 cx systemctl start vramd.service vramd.socket
out=$(T=120 cx make -C /usr/src/vramd --no-print-directory uninstall 2>&1)
rc=$?
bad=$(echo "$out" | grep -iE 'error|ignored|warning|fail')
left=""
for u in vramd.service vramd.socket vramd-metrics.timer vramd-metrics.service; do
	a=$(prop $u ActiveState) l=$(prop $u LoadState)
	[ "$a" = inactive ] && [ "$l" = not-found ] || left="$left $u:$a/$l"
done
links=$(cxs 'ls /etc/systemd/system/*.wants/ 2>/dev/null | grep vramd')
files=$(cxs 'ls /usr/local/bin/vramd /usr/local/bin/vramctl /usr/local/lib/libvram.so.0 /usr/local/lib/pkgconfig/vram.pc /usr/local/lib/systemd/system/vramd.service /run/vramd/vramd.sock 2>/dev/null')
running=$(cxs 'pgrep -x vramd')
check uninstall "make uninstall on the running system: exit $rc, no error printed, every unit stopped and gone, no wants link, no file left" \
	"make uninstall: exit $rc; printed '$bad'; units left:$left; wants links: '$links'; files: '$files'; vramd running: '$running'" \
	'[ $rc -eq 0 ] && [ -z "$bad" ] && [ -z "$left" ] && [ -z "$links" ] && [ -z "$files" ] && [ -z "$running" ]'

# ---- summary -------------------------------------------------------------------

stop_container
DONE=1
[ -n "$xfailed" ] && say "known defects still failing (XFAIL):$xfailed"
[ -n "$failed" ] && say "failed:$failed; logs (console, install, checkpoint) kept in $WORK"
say "ran in $((SECONDS - t_start)) s"
say "$npass passed, $nfail failed, $nskip skipped"
[ $nfail -eq 0 ]
