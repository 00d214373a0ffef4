#!/bin/sh
# Installs what the build and tests need and is missing; quiet when all is there.
#   Debian packages with apt-get (one `apt-get update` first: a fresh
#   machine's lists are stale), Python test dependencies (the reference
#   implementations safetensors, gguf and numpy; torch, whose torch.save and
#   torch.load the PyTorch reader is checked against, and for the binding's
#   and the ComfyUI node's tests, CPU-only use of PyPI's wheel) from PyPI into a
#   local venv.
set -eu
PYTHON=${1:-python3}
VENV=${2:-.venv}

PKGS="gcc make pkg-config liburing-dev libnuma-dev check libjansson-dev \
libxxhash-dev libsystemd-dev fio python3 python3-venv util-linux procps systemd"

missing=""
for p in $PKGS; do
	st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	case "$st" in
	*"install ok installed"*) ;;
	*) missing="$missing $p" ;;
	esac
done
if [ -n "$missing" ]; then
	echo "deps: installing Debian packages:$missing"
	SUDO=""
	[ "$(id -u)" -eq 0 ] || SUDO="sudo"
	$SUDO apt-get update -q
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
fi

PYPKGS="safetensors gguf numpy torch"
if [ ! -x "$VENV/bin/python" ]; then
	echo "deps: creating $VENV"
	"$PYTHON" -m venv "$VENV" || { rm -rf "$VENV"; /usr/bin/python3 -m venv "$VENV"; }
fi
if ! "$VENV/bin/python" -c 'import safetensors, gguf, numpy, torch' 2>/dev/null; then
	echo "deps: installing Python test dependencies: $PYPKGS"
	"$VENV/bin/python" -m pip install -q --disable-pip-version-check $PYPKGS
fi
