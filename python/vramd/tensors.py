# SPDX-License-Identifier: MIT
"""Zero-copy views of libvram memory as numpy arrays and torch tensors.

A view never copies: a host address becomes a ctypes array over the
mapping (numpy.frombuffer / torch.frombuffer), a CUDA address becomes an
object with __cuda_array_interface__ that torch.as_tensor adopts.  Each view
holds `owner` (the object whose finalizer frees the memory) through that
buffer object, which numpy keeps as the array's base and torch keeps for
the storage's lifetime: the memory outlives every view, and is freed when
the last view and the owner's other holders are gone.
"""
import ctypes as C

from ._native import lib, text

# enum vram_dtype, in vram.h's order: safetensors' dtypes, then GGUF's
# block-quantised ones (raw blocks: numpy views them as bytes, torch not at all).
DTYPES = ["BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0",
          "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64",
          "F64", "I64", "U64",
          "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
          "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS",
          "IQ1_M", "TQ1_0", "TQ2_0", "MXFP4", "NVFP4", "Q1_0"]
DTYPE = {name: i for i, name in enumerate(DTYPES)}
COMPONENTS = ["unet", "clip", "vae", "other"]

# numpy has no bf16/fp8/fp4/fp6: those come back as their raw bits
# (uint16 / uint8 of the same shape; fp4/fp6 as bytes).
_NUMPY = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16",
          "F16": "float16", "I32": "int32", "U32": "uint32", "F32": "float32",
          "C64": "complex64", "F64": "float64", "I64": "int64", "U64": "uint64",
          "BF16": "uint16", "F8_E5M2": "uint8", "F8_E4M3": "uint8", "F8_E8M0": "uint8",
          "F8_E4M3FNUZ": "uint8", "F8_E5M2FNUZ": "uint8"}

# torch's names; resolved lazily (torch is optional, older versions lack some).
_TORCH = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16",
          "F16": "float16", "BF16": "bfloat16", "I32": "int32", "U32": "uint32",
          "F32": "float32", "C64": "complex64", "F64": "float64", "I64": "int64",
          "U64": "uint64", "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn",
          "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz",
          "F8_E8M0": "float8_e8m0fnu"}


def dtype_name(code):
    """"F16" for VRAM_DTYPE_F16 (from the library, so it cannot drift)."""
    return text(lib.vram_dtype_name(code))


def dtype_code(name_or_code):
    """VRAM_DTYPE_* for "F16"/"f16"/"bf16", a torch dtype, or an int."""
    if isinstance(name_or_code, int):
        if not 0 <= name_or_code < len(DTYPES):
            raise ValueError("no dtype %d" % name_or_code)
        return name_or_code
    if not isinstance(name_or_code, str):
        for k, v in _TORCH.items():
            if str(name_or_code) == "torch." + v:
                return DTYPE[k]
        raise ValueError("no vramd dtype for %r" % (name_or_code,))
    key = name_or_code.upper()
    if key not in DTYPE:
        raise ValueError("unknown dtype %r (one of %s)" % (name_or_code, ", ".join(DTYPES)))
    return DTYPE[key]


def torch_dtype(name):
    """torch's dtype for a vramd dtype name; ValueError when torch has none."""
    import torch
    t = getattr(torch, _TORCH.get(name, ""), None)
    if t is None:
        raise ValueError("torch %s has no dtype for %s" % (torch.__version__, name))
    return t


def _host_buffer(ptr, nbytes, owner):
    buf = (C.c_uint8 * nbytes).from_address(ptr)
    buf._vramd_owner = owner  # keeps the memory alive as long as the buffer
    return buf


def numpy_view(ptr, nbytes, dtype, shape, owner, writable=True):
    """A numpy array over host memory at ptr (no copy)."""
    import numpy as np
    dt = np.dtype(_NUMPY.get(dtype, "uint8"))
    if nbytes == 0:
        return np.zeros(shape, dtype=dt)
    a = np.frombuffer(_host_buffer(ptr, nbytes, owner), dtype=np.uint8).view(dt)
    if dtype in _NUMPY:
        a = a.reshape(shape)
    if not writable:
        a.flags.writeable = False
    return a


class CudaBuffer:
    """Device memory as __cuda_array_interface__ (v3) bytes; holds owner."""

    def __init__(self, ptr, nbytes, owner, readonly=False):
        self._owner = owner
        self.__cuda_array_interface__ = {
            "version": 3, "typestr": "|u1", "shape": (nbytes,), "strides": None,
            "data": (ptr, readonly), "stream": None,
        }


def torch_view(ptr, nbytes, dtype, shape, owner, device=None):
    """A torch tensor over memory at ptr (no copy): host memory when device
    is None or "cpu", else the CUDA device ("cuda:N") whose address ptr is.
    Bytes are viewed as the dtype (the interfaces know no bf16/fp8)."""
    import torch
    tdt = torch_dtype(dtype)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if nbytes == 0:
        return torch.empty(shape, dtype=tdt, device=dev)
    if dev.type == "cpu":
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "non-writable buffer" never applies: the mapping is
            raw = torch.frombuffer(_host_buffer(ptr, nbytes, owner), dtype=torch.uint8)
    elif dev.type == "cuda":
        raw = torch.as_tensor(CudaBuffer(ptr, nbytes, owner), device=dev)
    else:
        raise ValueError("vramd: no zero-copy view on %s" % dev)
    return raw.view(tdt).view(tuple(shape))
