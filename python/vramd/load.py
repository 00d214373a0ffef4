# SPDX-License-Identifier: MIT
"""Loading a checkpoint into grants, zero-copy views of what was loaded,
and the pager over it."""
import contextlib
import ctypes as C
import errno as _errno
from dataclasses import dataclass

from . import _native as N
from ._handle import Handle, Owner
from ._native import call, lib, text
from . import tensors as T
from .plan import cast_mask

IO_MODES = {"auto": 0, "direct": 1, "buffered": 2}
# Load flags by keyword (vram.h VRAM_LOAD_*).  A flag a newer libvram adds
# is one entry here; `flags=` passes raw bits through meanwhile.
LOAD_FLAGS = {"reclaimable": 1 << 0, "shared": 1 << 1}
PAGER_NO_DISPATCH_THREAD, PAGER_NO_RECLAIM = 1, 2


def size_text(n):
    """443.47 MiB: bytes as vramctl prints them (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.2f %s" % (n, unit))
        n /= 1024.0


@dataclass(frozen=True)
class LoadStats:
    """vram_load_stats.  The share_* fields count chunks of a shared load
    (shared=True): served by a copy that was there (hits), filled by the
    broker for this load (filled), filled by another load meanwhile
    (waited), loaded privately because the broker could not share them
    (refused, the last reason in share_why)."""
    io_mode_used: str
    bytes: int
    ns: int
    cpu_ns: int
    grants: int
    converted: int
    shared_bytes: int = 0
    share_hits: int = 0
    share_filled: int = 0
    share_waited: int = 0
    share_refused: int = 0
    share_why: str = ""

    @property
    def gbps(self):
        return self.bytes / self.ns if self.ns else 0.0

    @property
    def share(self):
        """"hit", "filled" or "waited" when every shared chunk was that,
        "mixed" otherwise, "" when no chunk came from a shared copy."""
        kinds = [k for k, n in (("hit", self.share_hits), ("filled", self.share_filled),
                                ("waited", self.share_waited)) if n]
        return kinds[0] if len(kinds) == 1 else ("mixed" if kinds else "")

    def share_text(self):
        """What vramctl load says: "shared copy: hit (3 hit, 0 filled, 0
        waited; 443.47 MiB mapped read-only)", then the chunks loaded
        privately and why; "" for a load that did not ask to share."""
        out = []
        if self.share:
            out.append("shared copy: %s (%d hit, %d filled, %d waited; %s mapped read-only)"
                       % (self.share, self.share_hits, self.share_filled, self.share_waited,
                          size_text(self.shared_bytes)))
        if self.share_refused:
            out.append("loaded privately: %d chunk%s (%s)" % (self.share_refused, "" if self.share_refused == 1
                                                              else "s", self.share_why))
        return "; ".join(out)


def load_options(progress=None, io_mode="auto", cast_to=None, cast_from=None, flags=0, **kw):
    """struct vram_load_options from keywords: io_mode ("auto", "direct",
    "buffered"), chunk_size, queue_depth, staging_slots, cast_to (a dtype
    name), cast_from (dtype names), flags (raw VRAM_LOAD_* bits) and one
    keyword per named flag (reclaimable=True, shared=True).  Any other field of the
    struct is set by its name; an unknown keyword is a TypeError.  Returns
    (options, keep) where keep must outlive the load (the callback)."""
    o = N.LoadOptions()
    lib.vram_load_options_init(C.byref(o))
    o.io_mode = IO_MODES[io_mode] if isinstance(io_mode, str) else int(io_mode)
    o.flags |= flags
    if cast_to is not None:
        o.cast_to = T.dtype_code(cast_to)
        o.cast_from = cast_mask(cast_from)
    fields = {f[0] for f in N.LoadOptions._fields_} - {"struct_size", "progress", "user", "reserved"}
    for k, v in kw.items():
        if k in LOAD_FLAGS:
            o.flags = (o.flags | LOAD_FLAGS[k]) if v else (o.flags & ~LOAD_FLAGS[k])
        elif k in fields:
            setattr(o, k, v)
        else:
            raise TypeError("vramd: unknown load option %r (known: %s)"
                            % (k, ", ".join(sorted(fields | set(LOAD_FLAGS) | {"progress", "cast_to"}))))
    keep = [None]
    if progress is not None:
        def trampoline(user, done, total):
            try:
                return 1 if progress(done, total) is False else 0
            except BaseException as e:  # noqa: BLE001 - re-raised after the load
                keep[0] = e
                return 1
        o.progress = N.PROGRESS_FN(trampoline)
        keep.append(o.progress)
    return o, keep


class Loaded(Owner):
    """Every tensor of a model in broker grants (vram_load).

    Views (numpy(), torch(), state_dict()) share the grants' memory and keep
    them alive: close() (or dropping this object) gives the grants back once
    the last view is gone, never under a live one.  The load keeps its client
    and model open meanwhile."""

    _what = "load"

    def __init__(self, client, model, plan=None, device=None, **options):
        if plan is None and device is None:
            raise TypeError("vramd: load needs a plan or a device")
        dev = 0 if device is None else client._index(device)
        o, keep = load_options(**options)
        p = C.c_void_p()
        r = lib.vram_load(client._ptr, model._ptr, plan._ptr if plan is not None else None, dev, C.byref(o),
                          C.byref(p))
        if keep[0] is not None:
            raise keep[0]
        N.check(r, "vram_load")
        deps = (client._h, model._h) + ((plan._h,) if plan is not None else ())
        self._h = Handle(p, lib.vram_unload, deps=deps)
        self.client, self.model, self.plan = client, model, plan
        self._devices = {d.index: d for d in client.devices}

    # -- per tensor --------------------------------------------------------
    def _i(self, t):
        return t if isinstance(t, int) else self.model.tensor(t).index

    def device(self, t):
        """The broker device (a client Device) that holds tensor t."""
        return self._devices[call("vram_loaded_tensor_device", self._ptr, self._i(t))]

    def dtype(self, t):
        """The dtype as loaded (cast_to when converted)."""
        return T.dtype_name(call("vram_loaded_tensor_dtype", self._ptr, self._i(t)))

    def nbytes(self, t):
        return lib.vram_loaded_tensor_nbytes(self._ptr, self._i(t))

    def shared(self, t):
        """True when tensor t is in a broker-owned shared copy, mapped
        read-only: writing it through a view faults (SIGSEGV on host
        memory).  make_private(t) first."""
        return bool(call("vram_loaded_tensor_shared", self._ptr, self._i(t)))

    def make_private(self, t):
        """Gives tensor t a private, writable copy of its bytes (a grant of
        this client's own on the same device) when it is in a shared copy;
        nothing when it is private already.  Views taken before keep
        showing the shared copy (read-only, valid until the load is
        released): take new ones."""
        call("vram_loaded_make_private", self._ptr, self._i(t))

    def host_ptr(self, t):
        return lib.vram_loaded_tensor_host_ptr(self._ptr, self._i(t)) or 0

    def device_ptr(self, t):
        return lib.vram_loaded_tensor_device_ptr(self._ptr, self._i(t))

    def numpy(self, t):
        """Tensor t as a numpy array over its host mapping (bf16/fp8 as raw
        uint16/uint8 bits); ValueError for device-only memory."""
        i = self._i(t)
        ptr = self.host_ptr(i)
        nb = self.nbytes(i)
        if not ptr and nb:
            raise ValueError("vramd: %s is on %s, not host-mappable" % (self.model.tensors[i].name,
                                                                          self.device(i).name))
        return T.numpy_view(ptr, nb, self.dtype(i), self.model.tensors[i].shape, self._h, not self.shared(i))

    def torch_device(self, t):
        """The torch device a view of tensor t lives on: "cpu" for host
        memory (cpu pool, simulated GPUs), "cuda:N" for a CUDA grant (N
        matched by UUID)."""
        d = self.device(t)
        if d.backend != "cuda":
            return "cpu"
        return cuda_device_for(d)

    def torch_bytes(self, t, device=None):
        """Tensor t's bytes as a flat torch uint8 tensor sharing the grant
        (no copy), for dtypes torch has no type for (GGUF's quantised
        blocks); the same rules as torch()."""
        i = self._i(t)
        dev = device or self.torch_device(i)
        ptr = self.host_ptr(i) if dev == "cpu" else self.device_ptr(i)
        nb = self.nbytes(i)
        if not ptr and nb:
            raise ValueError("vramd: %s has no address for %s" % (self.model.tensors[i].name, dev))
        return T.torch_view(ptr, nb, "U8", (nb,), self._h, dev)

    def torch(self, t, device=None):
        """Tensor t as a torch tensor sharing the grant (no copy).  torch
        has no read-only tensors: one in a shared copy (shared(t)) must
        never be written (make_private first)."""
        i = self._i(t)
        dev = device or self.torch_device(i)
        ptr = self.host_ptr(i) if dev == "cpu" else self.device_ptr(i)
        nb = self.nbytes(i)
        if not ptr and nb:
            raise ValueError("vramd: %s has no address for %s" % (self.model.tensors[i].name, dev))
        return T.torch_view(ptr, nb, self.dtype(i), self.model.tensors[i].shape, self._h, dev)

    def state_dict(self, component=None, prefix="", strip=True, framework="torch"):
        """{name: view} for the tensors of component ("unet", "clip",
        "vae", "other"; None: all) whose name starts with prefix (stripped
        when strip)."""
        out = {}
        for ti in self.model.tensors:
            if component and ti.component != component:
                continue
            if not ti.name.startswith(prefix):
                continue
            key = ti.name[len(prefix):] if strip else ti.name
            out[key] = self.torch(ti.index) if framework == "torch" else self.numpy(ti.index)
        return out

    def stats(self):
        s = N.sized(N.LoadStats)
        call("vram_loaded_stats", self._ptr, C.byref(s))
        return LoadStats({0: "auto", 1: "direct", 2: "buffered"}.get(s.io_mode_used, str(s.io_mode_used)),
                         s.bytes, s.ns, s.cpu_ns, s.grants, s.converted, s.shared_bytes, s.share_hits,
                         s.share_filled, s.share_waited, s.share_refused, text(s.share_why))

    def pager(self, plan=None, **options):
        """A Pager over this load (see Pager)."""
        return Pager(self, plan or self.plan, **options)


def cuda_device_for(dev):
    """"cuda:N" in this process for a broker CUDA device, matched by UUID."""
    import torch
    want = dev.uuid.lower()
    for i in range(torch.cuda.device_count()):
        u = str(torch.cuda.get_device_properties(i).uuid).lower().replace("-", "").replace("gpu", "")
        if u == want:
            return "cuda:%d" % i
    raise ValueError("vramd: broker device %s (GPU-%s) is not visible to this process's torch"
                     % (dev.name, dev.uuid))


@dataclass(frozen=True)
class PagerStats:
    window_slots: int
    window_bytes: int
    acquires: int
    hits: int
    late: int
    misses: int
    prefetches: int
    prefetch_used: int
    bytes_paged: int
    copy_ns: int
    stall_ns: int
    passes: int
    demoted: int
    dropped: int
    reclaimed_bytes: int
    order_learned: bool
    promoted: int = 0        # layers moved back to their compute device (OFFER)
    reclaims: int = 0        # reclaims handled
    reclaim_ns: int = 0      # time they took, in all
    reclaim_ns_max: int = 0  # the longest
    offers: int = 0          # OFFERs received


class Pager(Owner):
    """Donor layers served on their compute device through a window, with
    prefetch (vram_pager_create).  acquire(layer) / release(layer), or
    `with pager.layer(i):`.  Views from tensor() are valid only while their
    layer is acquired.  By default the pager answers the broker's RECLAIM on
    its own thread (dispatch_thread=False / reclaim=False turn that off)."""

    _what = "pager"

    def __init__(self, loaded, plan, prefetch_depth=0, window_bytes=0, dispatch_thread=True, reclaim=True):
        o = N.PagerOptions()
        lib.vram_pager_options_init(C.byref(o))
        o.prefetch_depth = prefetch_depth
        o.window_bytes = window_bytes
        if not dispatch_thread:
            o.flags |= PAGER_NO_DISPATCH_THREAD
        if not reclaim:
            o.flags |= PAGER_NO_RECLAIM
        p = C.c_void_p()
        call("vram_pager_create", loaded._ptr, plan._ptr, C.byref(o), C.byref(p))
        self._h = Handle(p, lib.vram_pager_free, deps=(loaded._h, plan._h))
        self.loaded, self.plan = loaded, plan

    def acquire(self, layer):
        call("vram_pager_acquire", self._ptr, layer)

    def release(self, layer, stream=None):
        """Releases layer.  With stream (a torch.cuda.Stream, or a CUstream
        handle as an int; 0 is the legacy default stream), in that stream's
        order: the layer counts as released now, but its memory on a CUDA
        device is not reused until the kernels queued on the stream so far
        have run (vram_pager_release_on_stream; pass
        torch.cuda.current_stream() after launching the layer's kernels).
        On the cpu and simulated GPUs it is a plain release."""
        if stream is None:
            call("vram_pager_release", self._ptr, layer)
            return
        handle = getattr(stream, "cuda_stream", stream)
        if not isinstance(handle, int):
            raise TypeError("vramd: stream must be a torch.cuda.Stream or a CUstream handle (int), not %s"
                            % type(stream).__name__)
        if not N.has("vram_pager_release_on_stream"):
            raise N.VramError(_errno.ENOSYS, "vramd: this libvram (older than 0.3) has no "
                              "vram_pager_release_on_stream", "vram_pager_release_on_stream")
        call("vram_pager_release_on_stream", self._ptr, layer, C.c_void_p(handle or None))

    @contextlib.contextmanager
    def layer(self, layer, stream=None):
        """acquire(layer) ... release(layer, stream)."""
        self.acquire(layer)
        try:
            yield self
        finally:
            self.release(layer, stream)

    def end_pass(self):
        call("vram_pager_end_pass", self._ptr)

    def reclaim(self, device, nbytes):
        """Gives back up to nbytes on device now (idle memory only)."""
        return lib.vram_pager_reclaim(self._ptr, self.loaded.client._index(device), nbytes)

    def host_ptr(self, t):
        return lib.vram_pager_tensor_host_ptr(self._ptr, self.loaded._i(t)) or 0

    def device_ptr(self, t):
        return lib.vram_pager_tensor_device_ptr(self._ptr, self.loaded._i(t))

    def torch(self, t, device=None):
        """Tensor t where its acquired layer is now (no copy).  Valid until
        the layer's release."""
        i = self.loaded._i(t)
        ti = self.loaded.model.tensors[i]
        dev = device or self.loaded.torch_device(i)
        ptr = self.host_ptr(i) if dev == "cpu" else self.device_ptr(i)
        nb = self.loaded.nbytes(i)
        if not ptr and nb:
            raise ValueError("vramd: layer of %s is not acquired" % ti.name)
        return T.torch_view(ptr, nb, self.loaded.dtype(i), ti.shape, self._h, dev)

    def numpy(self, t):
        i = self.loaded._i(t)
        ti = self.loaded.model.tensors[i]
        nb = self.loaded.nbytes(i)
        ptr = self.host_ptr(i)
        if not ptr and nb:
            raise ValueError("vramd: layer of %s is not acquired" % ti.name)
        return T.numpy_view(ptr, nb, self.loaded.dtype(i), ti.shape, self._h)

    def stats(self):
        s = N.sized(N.PagerStats)
        call("vram_pager_stats", self._ptr, C.byref(s))
        return PagerStats(s.window_slots, s.window_bytes, s.acquires, s.hits, s.late, s.misses, s.prefetches,
                          s.prefetch_used, s.bytes_paged, s.copy_ns, s.stall_ns, s.passes, s.demoted,
                          s.dropped, s.reclaimed_bytes, bool(s.order_learned), s.promoted, s.reclaims,
                          s.reclaim_ns, s.reclaim_ns_max, s.offers)

    def order(self):
        """The layer order prefetch follows now."""
        out = []
        for i in range(len(self.loaded.model.layers)):
            r = lib.vram_pager_order(self._ptr, i)
            if r < 0:
                break
            out.append(r)
        return out
