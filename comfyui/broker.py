# SPDX-License-Identifier: MIT
"""One broker connection per ComfyUI process, and RECLAIM answered for the
models it loaded.

The connection is named $VRAMD_CLIENT_NAME, else "comfyui-PORT" (the
server's --port), so that quotas (`vramctl quota set name:comfyui-8188 ...`)
follow an instance across restarts.  The socket is $VRAMD_SOCKET, else
/run/vramd/vramd.sock.  When the broker asks for memory back, models that
are idle (no forward running) give all of theirs back and are loaded again
from the file at their next use; a busy model is skipped.
"""
import os
import sys
import threading
import weakref

from ._binding import import_vramd

_lock = threading.Lock()
_client = None
_models = weakref.WeakSet()  # VramdModel (loader.py) instances that can be evicted


class BrokerError(RuntimeError):
    """The node cannot reach vramd: the message says where it looked and
    how to start it."""


def _port():
    try:
        from comfy.cli_args import args  # ComfyUI's own parsed arguments
        if getattr(args, "port", None):
            return int(args.port)
    except Exception:  # noqa: BLE001 - ComfyUI absent or not parsed yet
        pass
    argv = sys.argv
    for i, a in enumerate(argv):
        if a == "--port" and i + 1 < len(argv):
            return int(argv[i + 1])
        if a.startswith("--port="):
            return int(a.split("=", 1)[1])
    return 8188


def client_name():
    """$VRAMD_CLIENT_NAME, else comfyui-PORT."""
    return os.environ.get("VRAMD_CLIENT_NAME") or "comfyui-%d" % _port()


def socket_path():
    return os.environ.get("VRAMD_SOCKET") or "/run/vramd/vramd.sock"


def client():
    """The process's connection, made on first use.  BrokerError when no
    broker listens (ComfyUI keeps running; the node fails with it)."""
    global _client
    with _lock:
        if _client is not None:
            return _client
        vramd = import_vramd()
        path = socket_path()
        try:
            c = vramd.connect(path, client_name())
        except vramd.BrokerUnavailable as e:
            raise BrokerError(
                "vramd: no broker is listening at %s (%s). Start it: `systemctl start vramd.socket` "
                "(installed), or `vramd --socket %s` (add `--sim-gpus 8GiB` on a machine without a GPU); "
                "or point VRAMD_SOCKET at a running broker. ComfyUI itself keeps running."
                % (path, os.strerror(e.errno), path)) from None
        c.set_reclaim_handler(_on_reclaim)
        c.start_dispatch_thread()
        _client = c
        return c


def reset():
    """Drops the connection (tests; a broker restart is handled by libvram)."""
    global _client
    with _lock:
        c, _client = _client, None
    if c is not None:
        c.close()


def device_names(default=("cuda:0", "cpu")):
    """The broker's device names for the node's lists (cuda devices first,
    cpu last); `default` when no broker answers, so that the node still
    shows (and fails with BrokerError when run)."""
    try:
        devs = [d.name for d in client().devices]
    except Exception:  # noqa: BLE001 - broker or binding missing: show defaults
        return list(default)
    devs.sort(key=lambda n: (n == "cpu", n))
    if "cpu" not in devs:
        devs.append("cpu")
    return devs


def register(model):
    _models.add(model)


def _on_reclaim(device, nbytes, deadline_ms):
    freed = 0
    for m in sorted(list(_models), key=lambda m: m.last_used):
        if freed >= nbytes:
            break
        freed += m.evict_if_idle(device)
    return freed
