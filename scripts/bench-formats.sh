#!/bin/sh
# make bench, GGUF and PyTorch zip files (issue 15): a 4 GiB Q8_0 GGUF and a
# 4 GiB PyTorch zip loaded cold and warm, with the ratios the safetensors
# part reports (against fio on the same file in the same run) and against
# each format's reference loader: gguf-py's GGUFReader plus a copy of every
# tensor, torch.load(weights_only=True) (and with mmap=True plus a clone of
# every tensor).  Called by scripts/bench.sh (BENCH_ONLY=formats runs it
# alone); the same variables.
#
# The files are written by the reference writers (tests/bench_formats.py):
# the GGUF by GGUFWriter one tensor at a time (Flux-shaped, no prefixes),
# the zip by torch.save of the safetensors checkpoint's tensors as views of
# a map of it ({"state_dict": ...}, as SD .ckpt files are), so neither
# generator holds the file in memory.
#
# vramd's GB/s here count the file's open and parse (GGUF tensor infos, the
# pickle) as the references' do: bytes / (open_seconds + seconds).
set -eu
. scripts/bench-env.sh
SOCK="$DIR/vramd-formats.sock"
SRC="$FILE"
GGUF="$DIR/bench-$SIZE-q8_0.gguf"
PT="$DIR/bench-$SIZE.ckpt"
VRAMCTL="$BUILD/bin/vramctl --socket $SOCK"
trap bench_cleanup EXIT INT TERM

if [ ! -s "$GGUF" ]; then
	echo "== writing a $SIZE-byte Q8_0 GGUF with gguf-py's GGUFWriter to $GGUF"
	"$PY" tests/bench_formats.py gen-gguf "$GGUF" --size "$SIZE"
fi
if [ ! -s "$PT" ]; then
	bench_checkpoint
	echo "== writing a PyTorch zip of $SRC's tensors with torch.save to $PT"
	"$PY" tests/bench_formats.py gen-pt "$PT" --from "$SRC"
fi


fio_gbps() { # $1 file, $2 direct (0/1)
	fio --name=r --filename="$1" --rw=read --bs=8M --iodepth=16 --ioengine=io_uring \
	    --direct="$2" --output-format=terse --terse-version=3 2>/dev/null |
		awk -F';' '{ printf "%.3f", $7 * 1024 / 1e9 }'
}
vramd_gbps() { # $1 file, $2 device: "GB/s CPU-s/GB", the open and parse counted
	$VRAMCTL load "$1" --device "$2" --io auto --private --json |
		"$PY" -c 'import json,sys; d=json.load(sys.stdin); s=d["open_seconds"]+d["seconds"]; print("%.3f %.3f" % (d["bytes"] / s / 1e9, d["cpu_seconds"] / (d["bytes"] / 1e9)))'
}
ref_gbps() { # bench_formats.py ref-* arguments: "GB/s CPU-s/GB"
	"$PY" tests/bench_formats.py "$@" | awk '{ printf "%.3f %.3f", $1 / $2 / 1e9, $3 / ($1 / 1e9) }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "n/a" }'; }

# One measurement of file $F after dropping the page cache (cold) or
# reading F through it (warm): each warm one reads it again, since this
# kind of VM may page out cached pages no one touched for a minute.
run() { # $1 cold|warm, then the command
	if [ "$1" = warm ]; then cat "$F" > /dev/null; else drop; fi
	shift
	"$@"
}

# One file cold and warm: $1 title, $2 file, $3 and $4 the reference's
# label and bench_formats.py arguments, $5 and $6 a second reference's
# (optional).  Every phase: fio, the references, vramd into the cpu pool
# (direct landing) and onto a simulated GPU (staged).
bench_file() {
	T=$1 F=$2 R1=$3 A1=$4 R2=${5:-} A2=${6:-}
	say "$T: $F, $(stat -c %s "$F") bytes, $($VRAMCTL inspect "$F" --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["tensors"])') tensors"
	vramd_gbps "$F" cpu > /dev/null # warm-up: host pages that exist, as bench.sh
	for PH in cold warm; do
		if [ $PH = cold ] && [ $CAN_DROP -eq 0 ]; then
			say "  cold: skipped (dropping the page cache needs root)"
			continue
		fi
		[ $PH = warm ] || FD=$(run cold fio_gbps "$F" 1)
		FB=$(run $PH fio_gbps "$F" 0)
		# shellcheck disable=SC2046,SC2086
		set -- $(run $PH ref_gbps $A1); G1=$1 C1=$2
		G2='' C2=''
		# shellcheck disable=SC2046,SC2086
		[ -z "$R2" ] || { set -- $(run $PH ref_gbps $A2); G2=$1 C2=$2; }
		# shellcheck disable=SC2046
		set -- $(run $PH vramd_gbps "$F" cpu); VC=$1 VCC=$2
		VG=$(run $PH vramd_gbps "$F" cuda:0); VG=${VG%% *}
		if [ $PH = cold ]; then
			say "  cold (page cache dropped)                    GB/s   CPU s/GB"
			say "    fio O_DIRECT io_uring (ceiling)          $FD"
			say "    fio buffered                             $FB"
		else
			say "  warm (file in the page cache)                GB/s   CPU s/GB"
			say "    fio buffered (ceiling)                   $FB"
		fi
		say "$(printf '    %-40s %s   %s' "$R1" "$G1" "$C1")"
		[ -z "$R2" ] || say "$(printf '    %-40s %s   %s' "$R2" "$G2" "$C2")"
		say "$(printf '    %-40s %s   %s' "vramd -> cpu pool" "$VC" "$VCC")"
		say "$(printf '    %-40s %s' "vramd -> simulated GPU (staged)" "$VG")"
		if [ $PH = cold ]; then
			say "    ratio vramd/fio-direct     $(ratio "$VC" "$FD")   (target >= 0.90)"
			say "    ratio vramd/reference      $(ratio "$VC" "$G1")   (target >= 3, as safetensors' against mmap + copy)"
		else
			say "    ratio vramd/buffered       $(ratio "$VC" "$FB")   (target >= 0.80)"
			say "    ratio vramd/reference      $(ratio "$VC" "$G1")"
		fi
		[ -z "$R2" ] || say "    ratio vramd/$R2   $(ratio "$VC" "$G2")"
	done
	say ""
}

"$BUILD/bin/vramd" --no-config --socket "$SOCK" --admin-socket "$DIR/admin-formats.sock" --state-dir "$DIR/state-formats" \
	--sim-gpus "$((SIZE / 1073741824 + 2))GiB" --host-pool "$((SIZE / 1073741824 * 2 + 4))GiB" --no-cuda 2>"$DIR/vramd-formats.log" &
PID=$!
while [ ! -S "$SOCK" ]; do sleep 0.05; kill -0 $PID; done

say "GGUF and PyTorch zip files$([ $CAN_DROP -eq 1 ] || echo ' (page cache NOT dropped: needs root)')"
bench_file "GGUF Q8_0, Flux-shaped" "$GGUF" "gguf GGUFReader + copy (reference)" "ref-gguf $GGUF"
bench_file "PyTorch zip, SDXL-shaped" "$PT" "torch.load(weights_only) (reference)" "ref-torch $PT" \
	"torch.load(mmap=True) + clone" "ref-torch $PT --mmap"
