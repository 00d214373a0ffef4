"""Drives libvram.so through ctypes, as the ComfyUI node will: inspects a
checkpoint and compares every tensor with the reference safetensors
library, then (with a broker socket) allocates, writes and reads back a
grant and loads the checkpoint, comparing bytes.  Prints OK or raises."""
import ctypes as C
import os
import sys

import numpy as np
from safetensors import safe_open

lib = C.CDLL(sys.argv[1])
path = sys.argv[2].encode()
sock = sys.argv[3].encode() if len(sys.argv) > 3 else None

lib.vram_version.restype = C.c_uint32
lib.vram_last_error.restype = C.c_char_p
lib.vram_dtype_name.restype = C.c_char_p
lib.vram_model_path.restype = C.c_char_p


class TensorInfo(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("dtype", C.c_uint32), ("ndim", C.c_uint32),
                ("component", C.c_uint32), ("layer", C.c_uint32), ("pad", C.c_uint32),
                ("name", C.c_char_p), ("shape", C.POINTER(C.c_uint64)),
                ("file_offset", C.c_uint64), ("nbytes", C.c_uint64)]


def check(r):
    if r < 0:
        raise RuntimeError("libvram: %d %s" % (r, lib.vram_last_error().decode()))
    return r


assert lib.vram_version() >> 16 == 0
m = C.c_void_p()
check(lib.vram_model_open(path, C.byref(m)))
n = check(lib.vram_model_tensor_count(m))
ours = {}
for i in range(n):
    ti = TensorInfo(struct_size=C.sizeof(TensorInfo))
    check(lib.vram_model_tensor(m, i, C.byref(ti)))
    ours[ti.name.decode()] = (lib.vram_dtype_name(ti.dtype).decode(), [ti.shape[k] for k in range(ti.ndim)],
                              ti.file_offset, ti.nbytes)

with safe_open(sys.argv[2], framework="numpy") as f:
    names = list(f.keys())
    assert sorted(names) == sorted(ours), "tensor names differ"
    with open(sys.argv[2], "rb") as raw:
        blob = raw.read()
    for k in names:
        a = f.get_tensor(k)
        dt, shape, off, nb = ours[k]
        assert list(a.shape) == shape, (k, a.shape, shape)
        assert a.nbytes == nb, (k, a.nbytes, nb)
        assert blob[off:off + nb] == a.tobytes(), k

# the model's fd: the file it parsed, read-only (proof of read access)
fd = check(lib.vram_model_fd(m))
st, fst = os.stat(sys.argv[2]), os.fstat(fd)
assert (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino), "vram_model_fd is another file"
assert os.pread(fd, 8, 0) == blob[:8]
assert lib.vram_model_fd(None) < 0

# bad input: a clear error, no crash
bad = C.c_void_p()
r = lib.vram_model_open(b"/nonexistent.safetensors", C.byref(bad))
assert r < 0 and b"nonexistent" in lib.vram_last_error()

if sock:
    c = C.c_void_p()
    check(lib.vram_connect(sock, b"ctypes", C.byref(c)))
    dev = check(lib.vram_device_find(c, b"cpu"))
    g = C.c_void_p()
    check(lib.vram_alloc(c, dev, 1 << 20, 0, C.byref(g)))
    lib.vram_grant_host_ptr.restype = C.c_void_p
    lib.vram_grant_size.restype = C.c_uint64
    h = lib.vram_grant_host_ptr(g)
    size = lib.vram_grant_size(g)
    buf = (C.c_uint8 * size).from_address(h)
    arr = np.frombuffer(buf, dtype=np.uint8)
    assert not arr.any()  # fresh memory is zero
    arr[:] = 7
    assert bytes(buf[:4]) == b"\x07\x07\x07\x07"
    check(lib.vram_free(c, g))
    loaded = C.c_void_p()
    check(lib.vram_load(c, m, None, dev, None, C.byref(loaded)))
    lib.vram_loaded_tensor_host_ptr.restype = C.c_void_p
    for i in range(n):
        ti = TensorInfo(struct_size=C.sizeof(TensorInfo))
        check(lib.vram_model_tensor(m, i, C.byref(ti)))
        p = lib.vram_loaded_tensor_host_ptr(loaded, i)
        if ti.nbytes:
            assert C.string_at(p, ti.nbytes) == blob[ti.file_offset:ti.file_offset + ti.nbytes]
    lib.vram_unload(loaded)

    # converting while loading, through the growing options struct: every
    # F32 tensor arrives as F16, equal to numpy's astype (round to nearest
    # even); the others as in the file
    class LoadOptions(C.Structure):
        _fields_ = [("struct_size", C.c_uint32), ("io_mode", C.c_uint32), ("chunk_size", C.c_uint64),
                    ("queue_depth", C.c_uint32), ("flags", C.c_uint32), ("progress", C.c_void_p),
                    ("user", C.c_void_p), ("cast_to", C.c_uint32), ("cast_from", C.c_uint32),
                    ("staging_slots", C.c_uint32), ("reserved", C.c_uint32)]
    names = [lib.vram_dtype_name(d).decode() for d in range(22)]
    o = LoadOptions()
    lib.vram_load_options_init(C.byref(o))
    assert o.struct_size == C.sizeof(LoadOptions), (o.struct_size, C.sizeof(LoadOptions))
    o.cast_to = names.index("F16")
    o.cast_from = 1 << names.index("F32")
    check(lib.vram_load(c, m, None, dev, C.byref(o), C.byref(loaded)))
    lib.vram_loaded_tensor_nbytes.restype = C.c_uint64
    converted = 0
    with safe_open(sys.argv[2], framework="numpy") as f:
        for i in range(n):
            ti = TensorInfo(struct_size=C.sizeof(TensorInfo))
            check(lib.vram_model_tensor(m, i, C.byref(ti)))
            a = f.get_tensor(ti.name.decode())
            want = a.astype(np.float16) if a.dtype == np.float32 else a
            converted += a.dtype == np.float32
            dt = names[check(lib.vram_loaded_tensor_dtype(loaded, i))]
            assert dt == ("F16" if a.dtype == np.float32 else names[ti.dtype]), (ti.name, dt)
            nb = lib.vram_loaded_tensor_nbytes(loaded, i)
            assert nb == want.nbytes, (ti.name, nb, want.nbytes)
            if nb:
                got = C.string_at(lib.vram_loaded_tensor_host_ptr(loaded, i), nb)
                assert got == want.tobytes(), ti.name
    assert converted > 0
    lib.vram_unload(loaded)
    lib.vram_close(c)
lib.vram_model_close(m)
print("OK", n)
