# SPDX-License-Identifier: MIT
"""libvram through ctypes: finding the library, the structs of runtime/vram.h
laid out field for field, every prototype, and errors.

Nothing here is public; the package's other modules wrap it.
"""
import ctypes as C
import errno as _errno
import os
import threading

__all__ = ["lib", "VramError", "BrokerUnavailable", "check", "library_path"]

# The C API version this binding was written against (VRAM_VERSION_MAJOR),
# and the least minor version it needs (0.2: shared copies, DEMAND/OFFER).
API_MAJOR = 0
API_MINOR = 2


class VramError(OSError):
    """A libvram call failed: .errno is the positive errno, .strerror the
    library's message (vram_last_error()), .function the C function."""

    def __init__(self, err, message, function=None):
        super().__init__(err, message or os.strerror(err))
        self.function = function

    def __str__(self):
        name = _errno.errorcode.get(self.errno, str(self.errno))
        return "%s (%s)" % (self.strerror, name)


class BrokerUnavailable(VramError):
    """No vramd listens on the socket (connect failed with ENOENT,
    ECONNREFUSED or EACCES)."""


# ---------------------------------------------------------------------------
# Finding libvram.so
# ---------------------------------------------------------------------------

_HERE = os.path.dirname(os.path.abspath(__file__))


def _candidates():
    """Where libvram.so.0 is looked for, in order: $VRAMD_LIBRARY (a file),
    a copy next to this package (pip install from a built checkout), the
    source checkout this package sits in ($VRAM_BUILD or build/), the LIBDIR
    `make install` recorded, then the system's search path."""
    env = os.environ.get("VRAMD_LIBRARY")
    if env:
        yield env
        return
    yield os.path.join(_HERE, "libvram.so.0")
    root = os.path.dirname(os.path.dirname(_HERE))
    build = os.environ.get("VRAM_BUILD") or "build"
    yield os.path.join(build if os.path.isabs(build) else os.path.join(root, build), "lib", "libvram.so.0")
    try:
        from . import _install  # written by `make install`
        yield os.path.join(_install.LIBDIR, "libvram.so.0")
    except ImportError:
        pass
    yield "libvram.so.0"


def _load():
    tried = []
    for path in _candidates():
        if os.sep in path and not os.path.exists(path):
            tried.append(path + " (absent)")
            continue
        try:
            return C.CDLL(path), path
        except OSError as e:
            tried.append("%s (%s)" % (path, e))
    raise ImportError("vramd: cannot load libvram.so.0; tried: %s.  Build it (make), install it "
                      "(make install), or set VRAMD_LIBRARY to its path" % "; ".join(tried))


# ---------------------------------------------------------------------------
# Structs (runtime/vram.h, same order and types)
# ---------------------------------------------------------------------------

u32, i32, u64, dbl, cstr, vp = C.c_uint32, C.c_int32, C.c_uint64, C.c_double, C.c_char_p, C.c_void_p


class DeviceInfo(C.Structure):
    _fields_ = [("struct_size", u32), ("index", u32), ("backend", u32), ("flags", u32),
                ("numa_node", i32), ("ordinal", i32), ("total", u64), ("used", u64),
                ("granularity", u64), ("reclaimable", u64), ("uuid", C.c_uint8 * 16),
                ("name", C.c_char * 32), ("label", C.c_char * 64),
                ("ready", u64), ("ready_target", u64), ("ready_hits", u64), ("ready_misses", u64),
                ("ready_refilled", u64), ("cache", u64), ("cache_max", u64), ("cache_hits", u64),
                ("cache_fills", u64), ("cache_evictions", u64)]


class ClientStatus(C.Structure):
    _fields_ = [("struct_size", u32), ("id", u32), ("pid", i32), ("uid", u32), ("gid", u32),
                ("ngrants", u32), ("flags", u32), ("reclaims_answered", u32),
                ("reclaims_missed", u32), ("pad", u32), ("held", u64), ("reclaimable", u64),
                ("held_dev", u64 * 16), ("name", C.c_char * 64),
                ("want_dev", u64 * 16), ("share_dev", u64 * 16), ("shared_dev", u64 * 16),
                ("reclaim_p50_us", u32), ("reclaim_p99_us", u32), ("reclaim_asked", u64),
                ("reclaim_freed", u64)]


class Status(C.Structure):
    _fields_ = [("struct_size", u32), ("ndevices", u32), ("nclients", u32), ("broker_pid", u32),
                ("grants", u64), ("protocol_errors", u64), ("uptime_ms", u64),
                ("note", C.c_char * 128), ("devices", C.POINTER(DeviceInfo)),
                ("clients", C.POINTER(ClientStatus))]


class TensorInfo(C.Structure):
    _fields_ = [("struct_size", u32), ("dtype", u32), ("ndim", u32), ("component", u32),
                ("layer", u32), ("pad", u32), ("name", cstr), ("shape", C.POINTER(u64)),
                ("file_offset", u64), ("nbytes", u64)]


class LayerInfo(C.Structure):
    _fields_ = [("struct_size", u32), ("component", u32), ("first_tensor", u32), ("ntensors", u32),
                ("name", cstr), ("nbytes", u64), ("flags", u32), ("pad", u32)]


class ComponentInfo(C.Structure):
    _fields_ = [("struct_size", u32), ("ntensors", u32), ("nlayers", u32), ("pad", u32),
                ("nbytes", u64)]


class PlanOptions(C.Structure):
    _fields_ = [("struct_size", u32), ("flags", u32), ("unet_compute_device", cstr),
                ("unet_virtual_vram_gb", dbl), ("unet_donor_device", cstr),
                ("clip_compute_device", cstr), ("clip_virtual_vram_gb", dbl),
                ("clip_donor_device", cstr), ("vae_device", cstr),
                ("unet_expert_mode_allocations", cstr), ("clip_expert_mode_allocations", cstr),
                ("cast_to", u32), ("cast_from", u32)]


class PlanDevice(C.Structure):
    _fields_ = [("struct_size", u32), ("pad", u32), ("name", C.c_char * 32), ("total", u64),
                ("available", u64)]


PROGRESS_FN = C.CFUNCTYPE(C.c_int, vp, u64, u64)
RECLAIM_FN = C.CFUNCTYPE(u64, vp, u32, u64, u64)
OFFER_FN = C.CFUNCTYPE(None, vp, u32, u64)


class LoadOptions(C.Structure):
    _fields_ = [("struct_size", u32), ("io_mode", u32), ("chunk_size", u64), ("queue_depth", u32),
                ("flags", u32), ("progress", PROGRESS_FN), ("user", vp), ("cast_to", u32),
                ("cast_from", u32), ("staging_slots", u32), ("reserved", u32)]


class LoadStats(C.Structure):
    _fields_ = [("struct_size", u32), ("io_mode_used", u32), ("bytes", u64), ("ns", u64),
                ("cpu_ns", u64), ("grants", u64), ("converted", u64), ("shared_bytes", u64),
                ("share_hits", u32), ("share_filled", u32), ("share_waited", u32),
                ("share_refused", u32), ("share_why", C.c_char * 128),
                ("first_alloc_ns", u64), ("max_alloc_ns", u64)]


class PagerOptions(C.Structure):
    _fields_ = [("struct_size", u32), ("prefetch_depth", u32), ("window_bytes", u64),
                ("flags", u32), ("pad", u32)]


class PagerStats(C.Structure):
    _fields_ = [("struct_size", u32), ("window_slots", u32), ("window_bytes", u64),
                ("acquires", u64), ("hits", u64), ("late", u64), ("misses", u64),
                ("prefetches", u64), ("prefetch_used", u64), ("bytes_paged", u64),
                ("copy_ns", u64), ("stall_ns", u64), ("passes", u64), ("demoted", u64),
                ("dropped", u64), ("reclaimed_bytes", u64), ("order_learned", u32), ("pad", u32),
                # 0.2
                ("promoted", u64), ("reclaims", u64), ("reclaim_ns", u64), ("reclaim_ns_max", u64),
                ("offers", u64)]


# Every struct of vram.h, by its C name (the tests compare these sizes with
# the C compiler's).
STRUCTS = {
    "vram_device_info": DeviceInfo, "vram_client_status": ClientStatus, "vram_status": Status,
    "vram_tensor_info": TensorInfo, "vram_layer_info": LayerInfo,
    "vram_component_info": ComponentInfo, "vram_plan_options": PlanOptions,
    "vram_plan_device": PlanDevice, "vram_load_options": LoadOptions,
    "vram_load_stats": LoadStats, "vram_pager_options": PagerOptions,
    "vram_pager_stats": PagerStats,
}

# ---------------------------------------------------------------------------
# Prototypes: name -> (restype, argtypes).  Every int-returning call is
# checked by check().
# ---------------------------------------------------------------------------

P = C.POINTER
_PROTOS = {
    "vram_version": (u32, []),
    "vram_last_error": (cstr, []),
    "vram_connect": (C.c_int, [cstr, cstr, P(vp)]),
    "vram_close": (None, [vp]),
    "vram_client_socket": (cstr, [vp]),
    "vram_client_id": (u32, [vp]),
    "vram_client_note": (cstr, [vp]),
    "vram_device_count": (C.c_int, [vp]),
    "vram_refresh_devices": (C.c_int, [vp]),
    "vram_device_info": (C.c_int, [vp, u32, P(DeviceInfo)]),
    "vram_device_find": (C.c_int, [vp, cstr]),
    "vram_device_prepare": (C.c_int, [vp, u32]),
    "vram_alloc": (C.c_int, [vp, u32, u64, u32, P(vp)]),
    "vram_free": (C.c_int, [vp, vp]),
    "vram_grant_id": (u64, [vp]),
    "vram_grant_size": (u64, [vp]),
    "vram_grant_device": (u32, [vp]),
    "vram_grant_host_ptr": (vp, [vp]),
    "vram_grant_device_ptr": (u64, [vp]),
    "vram_client_fd": (C.c_int, [vp]),
    "vram_dispatch": (C.c_int, [vp]),
    "vram_set_reclaim_handler": (None, [vp, RECLAIM_FN, vp]),
    "vram_demand": (C.c_int, [vp, u32, u64, u64]),
    "vram_set_offer_handler": (None, [vp, OFFER_FN, vp]),
    "vram_cache_list": (C.c_int, [vp, P(vp)]),
    "vram_cache_drop": (C.c_int, [vp, C.c_int, u32]),
    "vram_get_status": (C.c_int, [vp, P(P(Status))]),
    "vram_status_free": (None, [P(Status)]),
    "vram_dtype_name": (cstr, [u32]),
    "vram_dtype_bits": (u32, [u32]),
    "vram_dtype_block": (C.c_int, [u32, P(u32), P(u32)]),
    "vram_component_name": (cstr, [u32]),
    "vram_model_open": (C.c_int, [cstr, P(vp)]),
    "vram_model_close": (None, [vp]),
    "vram_model_fd": (C.c_int, [vp]),
    "vram_model_path": (cstr, [vp]),
    "vram_model_format": (cstr, [vp]),
    "vram_model_file_size": (u64, [vp]),
    "vram_model_header_size": (u64, [vp]),
    "vram_model_data_offset": (u64, [vp]),
    "vram_model_data_size": (u64, [vp]),
    "vram_model_tensor_count": (C.c_int, [vp]),
    "vram_model_tensor": (C.c_int, [vp, u32, P(TensorInfo)]),
    "vram_model_find_tensor": (C.c_int, [vp, cstr]),
    "vram_model_layer_count": (C.c_int, [vp]),
    "vram_model_layer": (C.c_int, [vp, u32, P(LayerInfo)]),
    "vram_model_component": (C.c_int, [vp, u32, P(ComponentInfo)]),
    "vram_model_metadata_count": (C.c_int, [vp]),
    "vram_model_metadata": (C.c_int, [vp, u32, P(cstr), P(cstr)]),
    "vram_plan_options_init": (None, [P(PlanOptions)]),
    "vram_plan_devices_parse": (C.c_int, [cstr, P(PlanDevice), u32, P(u32)]),
    "vram_plan_devices_from_client": (C.c_int, [vp, P(PlanDevice), u32, P(u32)]),
    "vram_plan_create": (C.c_int, [vp, P(PlanOptions), P(PlanDevice), u32, P(vp)]),
    "vram_plan_free": (None, [vp]),
    "vram_plan_layer_device": (C.c_int, [vp, u32]),
    "vram_plan_tensor_device": (C.c_int, [vp, u32]),
    "vram_plan_asked_bytes": (u64, [vp, u32, u32]),
    "vram_plan_compute_device": (C.c_int, [vp, u32]),
    "vram_plan_bytes": (u64, [vp, u32, u32]),
    "vram_plan_device_count": (u32, [vp]),
    "vram_plan_device_name": (cstr, [vp, u32]),
    "vram_plan_flags": (u32, [vp]),
    "vram_plan_to_json": (C.c_int, [vp, P(vp)]),
    "vram_load_options_init": (None, [P(LoadOptions)]),
    "vram_load": (C.c_int, [vp, vp, vp, u32, P(LoadOptions), P(vp)]),
    "vram_unload": (None, [vp]),
    "vram_loaded_tensor_device": (C.c_int, [vp, u32]),
    "vram_loaded_tensor_host_ptr": (vp, [vp, u32]),
    "vram_loaded_tensor_device_ptr": (u64, [vp, u32]),
    "vram_loaded_tensor_dtype": (C.c_int, [vp, u32]),
    "vram_loaded_tensor_nbytes": (u64, [vp, u32]),
    "vram_loaded_stats": (C.c_int, [vp, P(LoadStats)]),
    "vram_loaded_make_private": (C.c_int, [vp, u32]),
    "vram_loaded_tensor_shared": (C.c_int, [vp, u32]),
    "vram_pager_options_init": (None, [P(PagerOptions)]),
    "vram_pager_create": (C.c_int, [vp, vp, P(PagerOptions), P(vp)]),
    "vram_pager_free": (None, [vp]),
    "vram_pager_acquire": (C.c_int, [vp, u32]),
    "vram_pager_release": (C.c_int, [vp, u32]),
    "vram_pager_tensor_host_ptr": (vp, [vp, u32]),
    "vram_pager_tensor_device_ptr": (u64, [vp, u32]),
    "vram_pager_end_pass": (C.c_int, [vp]),
    "vram_pager_reclaim": (u64, [vp, u32, u64]),
    "vram_pager_stats": (C.c_int, [vp, P(PagerStats)]),
    "vram_pager_order": (C.c_int, [vp, u32]),
}

# Optional entry points, bound when the library has them (newer builds):
# name -> (restype, argtypes, the version that added it).
_OPTIONAL = {
    "vram_pager_release_on_stream": (C.c_int, [vp, u32, vp]),  # 0.3
}


def has(name):
    """Whether the library has entry point name (an optional one may be
    missing from an older library)."""
    return getattr(lib, name, None) is not None

_libc = C.CDLL(None)
_libc.free.argtypes = [vp]
_libc.free.restype = None


def free(ptr):
    """free() for the strings libvram hands over (plan JSON, quota list)."""
    _libc.free(ptr)


def _bind(dll):
    for name, (res, args) in _PROTOS.items():
        f = getattr(dll, name)
        f.restype = res
        f.argtypes = args
    for name, (res, args) in _OPTIONAL.items():
        f = getattr(dll, name, None)
        if f is not None:
            f.restype = res
            f.argtypes = args


def _check_version(dll):
    """Before binding: an older library lacks entry points the binding needs."""
    dll.vram_version.restype = u32
    dll.vram_version.argtypes = []
    v = dll.vram_version()
    if v >> 16 != API_MAJOR or (v >> 8) & 0xff < API_MINOR:
        raise ImportError("vramd: libvram is version %d.%d.%d; this binding speaks %d.%d or a later %d.x"
                          % (v >> 16, (v >> 8) & 0xff, v & 0xff, API_MAJOR, API_MINOR, API_MAJOR))


def _check_structs(dll):
    # The structs the library sizes itself: a binding whose layout differs
    # from the library's would read garbage, so refuse to start.
    for init, cls in (("vram_plan_options_init", PlanOptions), ("vram_load_options_init", LoadOptions),
                      ("vram_pager_options_init", PagerOptions)):
        o = cls()
        getattr(dll, init)(C.byref(o))
        if o.struct_size != C.sizeof(cls):
            raise ImportError("vramd: %s says its struct is %d bytes, the binding's is %d: the "
                              "library is newer or older than this binding" % (init, o.struct_size, C.sizeof(cls)))


lib, library_path = _load()
_check_version(lib)
_bind(lib)
_check_structs(lib)

_lock = threading.Lock()


def last_error():
    msg = lib.vram_last_error()
    return msg.decode("utf-8", "replace") if msg else ""


def check(r, function=""):
    """r when it is >= 0; else raises VramError(-r, vram_last_error())."""
    if r >= 0:
        return r
    raise VramError(-r, last_error() or os.strerror(-r), function)


def call(name, *args):
    """Calls libvram's name and checks its int result."""
    return check(getattr(lib, name)(*args), name)


def sized(cls, where=""):
    """A zeroed struct with struct_size set."""
    o = cls()
    o.struct_size = C.sizeof(cls)
    return o


def verify_size(obj, cls, what):
    """The library filled obj.struct_size with its own sizeof: compare."""
    if obj.struct_size != C.sizeof(cls):
        raise VramError(_errno.EPROTO, "vramd: the library's %s is %d bytes, the binding's %d"
                        % (what, obj.struct_size, C.sizeof(cls)))


def text(b):
    return b.decode("utf-8", "replace") if b else ""
