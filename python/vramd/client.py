# SPDX-License-Identifier: MIT
"""The broker connection: devices, grants, status, reclaim."""
import ctypes as C
import errno
import os
import select
import threading
from dataclasses import dataclass, field
from typing import List

from . import _native as N
from ._handle import Handle
from ._native import call, lib, text
from . import tensors as T

BACKENDS = {1: "cpu", 2: "sim", 3: "cuda"}
DEV_SIMULATED, DEV_HUGETLB, DEV_NUMA_BOUND, DEV_HOST_MAPPABLE = 1, 2, 4, 8
ALLOC_RECLAIMABLE = 1
DEFAULT_SOCKET = "/run/vramd/vramd.sock"


@dataclass(frozen=True)
class Device:
    """A broker device (vram_device_info)."""
    index: int
    name: str
    backend: str
    flags: int
    numa_node: int
    ordinal: int
    total: int
    used: int
    granularity: int
    reclaimable: int
    uuid: str
    label: str
    cache: int = 0            # bytes of shared copies on it (in use or cached)
    cache_max: int = 0        # their budget (0: the device keeps none)
    cache_hits: int = 0
    cache_fills: int = 0
    cache_evictions: int = 0

    @property
    def free(self):
        return max(self.total - self.used, 0)

    @property
    def simulated(self):
        return bool(self.flags & DEV_SIMULATED)

    @property
    def host_mappable(self):
        return bool(self.flags & DEV_HOST_MAPPABLE)

    @classmethod
    def _from(cls, d):
        return cls(d.index, text(d.name), BACKENDS.get(d.backend, str(d.backend)), d.flags, d.numa_node,
                   d.ordinal, d.total, d.used, d.granularity, d.reclaimable, bytes(d.uuid).hex(),
                   text(d.label), d.cache, d.cache_max, d.cache_hits, d.cache_fills, d.cache_evictions)


@dataclass(frozen=True)
class ClientInfo:
    """One client in the broker's status (vram_client_status)."""
    id: int
    pid: int
    uid: int
    gid: int
    name: str
    grants: int
    held: int
    reclaimable: int
    held_dev: tuple
    flags: int
    reclaims_answered: int
    reclaims_missed: int
    want_dev: tuple = ()    # what it wants per device (DEMAND, else what it holds)
    share_dev: tuple = ()   # its fair share per device
    shared_dev: tuple = ()  # bytes of shared copies it maps per device (not in held_dev)
    reclaim_asked: int = 0
    reclaim_freed: int = 0

    @property
    def self(self):
        return bool(self.flags & 1)

    @classmethod
    def _from(cls, c):
        return cls(c.id, c.pid, c.uid, c.gid, text(c.name), c.ngrants, c.held, c.reclaimable, tuple(c.held_dev),
                   c.flags, c.reclaims_answered, c.reclaims_missed, tuple(c.want_dev), tuple(c.share_dev),
                   tuple(c.shared_dev), c.reclaim_asked, c.reclaim_freed)


@dataclass(frozen=True)
class BrokerStatus:
    """What `vramctl status` shows."""
    broker_pid: int
    grants: int
    protocol_errors: int
    uptime_ms: int
    note: str
    devices: List[Device] = field(default_factory=list)
    clients: List[ClientInfo] = field(default_factory=list)


def _socket_path(socket):
    return socket or os.environ.get("VRAMD_SOCKET") or DEFAULT_SOCKET


class Client:
    """A connection to vramd (vram_connect).  Closing it frees every grant
    it holds; loads and grants made through it keep it open until they are
    released themselves.  Use as a context manager, or close(); a client
    nobody references is closed by its finalizer."""

    def __init__(self, socket=None, name=None):
        path = _socket_path(socket)
        p = C.c_void_p()
        r = lib.vram_connect(path.encode(), name.encode() if name else None, C.byref(p))
        if r < 0:
            msg = N.last_error() or os.strerror(-r)
            cls = N.BrokerUnavailable if -r in (errno.ENOENT, errno.ECONNREFUSED, errno.EACCES) else N.VramError
            raise cls(-r, "%s (socket %s; start the broker with `vramd --socket %s`, or set VRAMD_SOCKET)"
                      % (msg, path, path), "vram_connect")
        self._h = Handle(p, lib.vram_close)
        self._reclaim_cb = None
        self._offer_cb = None
        self._dispatcher = None
        self._stop = None

    # -- lifetime ---------------------------------------------------------
    def close(self):
        """Stops the dispatch thread and drops this object's hold on the
        connection: it closes (vram_close) at once when nothing else needs
        it, else when the last load, grant or tensor view made through it is
        gone (closing it under them would unmap their memory)."""
        self.stop_dispatch_thread()
        self._h = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def _ptr(self):
        if self._h is None:
            raise ValueError("vramd: the client is closed")
        return self._h.get("client")

    # -- identity and devices --------------------------------------------
    @property
    def socket(self):
        return text(lib.vram_client_socket(self._ptr))

    @property
    def id(self):
        return lib.vram_client_id(self._ptr)

    @property
    def note(self):
        return text(lib.vram_client_note(self._ptr))

    def refresh(self):
        call("vram_refresh_devices", self._ptr)

    @property
    def devices(self):
        """The broker's devices as of connect or the last refresh()/status()."""
        n = call("vram_device_count", self._ptr)
        out = []
        for i in range(n):
            d = N.sized(N.DeviceInfo)
            call("vram_device_info", self._ptr, i, C.byref(d))
            N.verify_size(d, N.DeviceInfo, "struct vram_device_info")
            out.append(Device._from(d))
        return out

    def find_device(self, name):
        """Index of the device called name ("cuda:0", "cpu", a UUID)."""
        return call("vram_device_find", self._ptr, name.encode())

    def device(self, name_or_index):
        i = name_or_index if isinstance(name_or_index, int) else self.find_device(name_or_index)
        for d in self.devices:
            if d.index == i:
                return d
        raise N.VramError(errno.ENODEV, "no device %r" % (name_or_index,))

    def prepare(self, device):
        """vram_device_prepare: sets up a CUDA device's context ahead of use."""
        call("vram_device_prepare", self._ptr, self._index(device))

    def _index(self, device):
        return device if isinstance(device, int) else self.find_device(device)

    # -- grants -------------------------------------------------------------
    def alloc(self, device, size, reclaimable=False):
        """A grant of at least size bytes on device (vram_alloc)."""
        g = C.c_void_p()
        call("vram_alloc", self._ptr, self._index(device), size, ALLOC_RECLAIMABLE if reclaimable else 0,
             C.byref(g))
        return Grant(self, g)

    # -- status -------------------------------------------------------------
    def status(self):
        """The broker's status (every device and client)."""
        sp = C.POINTER(N.Status)()
        call("vram_get_status", self._ptr, C.byref(sp))
        try:
            s = sp.contents
            N.verify_size(s, N.Status, "struct vram_status")
            devs = []
            for i in range(s.ndevices):
                N.verify_size(s.devices[i], N.DeviceInfo, "struct vram_device_info")
                devs.append(Device._from(s.devices[i]))
            clients = []
            for i in range(s.nclients):
                c = s.clients[i]
                N.verify_size(c, N.ClientStatus, "struct vram_client_status")
                clients.append(ClientInfo._from(c))
            return BrokerStatus(s.broker_pid, s.grants, s.protocol_errors, s.uptime_ms, text(s.note),
                                devs, clients)
        finally:
            lib.vram_status_free(sp)

    def held(self):
        """Bytes this client holds, per the broker (0 once everything is freed)."""
        me = self.me()
        return me.held if me else 0

    def me(self):
        """This client's entry in the broker's status (a ClientInfo)."""
        for c in self.status().clients:
            if c.self:
                return c
        return None

    # -- shared copies --------------------------------------------------------
    def cache_list(self):
        """The broker's shared copies (every one for an admin, those this
        client maps otherwise), as the JSON vramctl cache list --json prints,
        parsed."""
        import json
        p = C.c_void_p()
        call("vram_cache_list", self._ptr, C.byref(p))
        try:
            return json.loads(C.string_at(p.value).decode())
        finally:
            N.free(p)

    def cache_drop(self, model=None, force=False):
        """Drops the shared copies of model's file (a Model: its fd proves
        read access), or every copy (model None; admin).  Copies nobody maps
        go at once; VramError(EBUSY) when some are in use, unless force
        (admin), which asks their users to let go."""
        flags = (0 if model is not None else 1) | (2 if force else 0)
        fd = lib.vram_model_fd(model._ptr) if model is not None else -1
        call("vram_cache_drop", self._ptr, fd, flags)

    # -- fair shares ----------------------------------------------------------
    def demand(self, device, want, min=0):
        """Tells the broker what this client would like on device and the
        least it can work with (0, 0 withdraws): fair shares split a device
        by these (docs/admin.md, "Sharing a GPU")."""
        call("vram_demand", self._ptr, self._index(device), want, min)

    def set_offer_handler(self, fn):
        """fn(device_index, bytes): called from dispatch() when memory freed
        up on device and this client is below its fair share (a hint; it
        may allocate up to bytes more).  None removes it."""
        if fn is None:
            self._offer_cb = None
            lib.vram_set_offer_handler(self._ptr, N.OFFER_FN(), None)
            return

        def trampoline(user, device, nbytes):
            try:
                fn(device, nbytes)
            except Exception:  # noqa: BLE001 - never unwind into C
                import traceback
                traceback.print_exc()

        self._offer_cb = N.OFFER_FN(trampoline)
        self._h.keep.append(self._offer_cb)  # C holds it until vram_close
        lib.vram_set_offer_handler(self._ptr, self._offer_cb, None)

    # -- planning and loading ---------------------------------------------
    def plan(self, model, **options):
        """A placement of model on this broker's devices (see Plan)."""
        from .plan import Plan
        return Plan(model, client=self, **options)

    def load(self, model, plan=None, device=None, **options):
        """Loads model into grants: by plan, else all on device (see Loaded)."""
        from .load import Loaded
        return Loaded(self, model, plan=plan, device=device, **options)

    # -- reclaim ------------------------------------------------------------
    def fileno(self):
        """The connection's fd: readable when the broker sent a RECLAIM."""
        return lib.vram_client_fd(self._ptr)

    def dispatch(self):
        """Handles pending broker messages without blocking; returns how many."""
        return call("vram_dispatch", self._ptr)

    def set_reclaim_handler(self, fn):
        """fn(device_index, bytes, deadline_ms) -> bytes freed, called from
        dispatch() when the broker asks for memory back.  None removes it.
        An exception in fn counts as 0 bytes freed."""
        if fn is None:
            self._reclaim_cb = None
            lib.vram_set_reclaim_handler(self._ptr, N.RECLAIM_FN(), None)
            return

        def trampoline(user, device, nbytes, deadline_ms):
            try:
                return max(int(fn(device, nbytes, deadline_ms) or 0), 0)
            except Exception:  # noqa: BLE001 - never unwind into C
                import traceback
                traceback.print_exc()
                return 0

        self._reclaim_cb = N.RECLAIM_FN(trampoline)
        self._h.keep.append(self._reclaim_cb)  # C holds it until vram_close
        lib.vram_set_reclaim_handler(self._ptr, self._reclaim_cb, None)

    def start_dispatch_thread(self):
        """A daemon thread that calls dispatch() whenever the broker writes,
        so that RECLAIM is answered while the caller is busy elsewhere."""
        if self._dispatcher:
            return
        r, w = os.pipe()
        self._stop = (r, w)
        fd = self.fileno()

        def loop():
            while True:
                ready, _, _ = select.select([fd, r], [], [])
                if r in ready:
                    return
                try:
                    self.dispatch()
                except (N.VramError, ValueError):
                    return

        self._dispatcher = threading.Thread(target=loop, name="vramd-dispatch", daemon=True)
        self._dispatcher.start()

    def stop_dispatch_thread(self):
        if not self._dispatcher:
            return
        r, w = self._stop
        os.write(w, b"x")
        self._dispatcher.join()
        os.close(r)
        os.close(w)
        self._dispatcher = self._stop = None


class Grant:
    """Memory from the broker (vram_alloc).  free() returns it; views keep it
    alive until they are gone."""

    def __init__(self, client, g):
        self._client = client
        self._h = Handle(g, lambda p, c=client._h: lib.vram_free(c.ptr, p), deps=(client._h,))
        p = self._h.ptr
        self.id = lib.vram_grant_id(p)
        self.size = lib.vram_grant_size(p)
        self.device = lib.vram_grant_device(p)
        self.host_ptr = lib.vram_grant_host_ptr(p) or 0
        self.device_ptr = lib.vram_grant_device_ptr(p)

    def free(self):
        """Drops this object's hold; the memory goes back (vram_free) at once,
        or when the last view of it is gone."""
        self._h = None

    def numpy(self):
        if not self.host_ptr:
            raise ValueError("vramd: grant %d is not host-mappable" % self.id)
        return T.numpy_view(self.host_ptr, self.size, "U8", (self.size,), self._h)

    def torch(self, device=None):
        dev = device or ("cpu" if self.host_ptr else None)
        ptr = self.host_ptr if dev == "cpu" else self.device_ptr
        return T.torch_view(ptr, self.size, "U8", (self.size,), self._h, dev)


def connect(socket=None, name=None):
    """Connects to vramd at socket ($VRAMD_SOCKET, else /run/vramd/vramd.sock)
    as name (default: the program's name).  Raises BrokerUnavailable when
    none listens there."""
    return Client(socket, name)
