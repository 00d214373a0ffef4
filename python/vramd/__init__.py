# SPDX-License-Identifier: MIT
"""vramd: Python binding of libvram, the vramd client runtime.

    import vramd
    with vramd.connect(name="comfy-1") as c:             # $VRAMD_SOCKET
        m = vramd.open_model("model.safetensors")
        plan = c.plan(m, unet_compute_device="cuda:0", unet_virtual_vram_gb=4.0)
        loaded = c.load(m, plan, progress=lambda done, total: None, reclaimable=True)
        sd = loaded.state_dict("unet", prefix="model.diffusion_model.")  # torch, zero-copy

docs/python.md has the whole API.  Errors are VramError (an OSError with the
library's message); BrokerUnavailable when no vramd listens.
"""
from ._native import BrokerUnavailable, VramError, library_path, lib as _lib
from .client import BrokerStatus, Client, ClientInfo, Device, Grant, connect
from .load import LOAD_FLAGS, Loaded, LoadStats, Pager, PagerStats, load_options, size_text
from .model import ComponentInfo, LayerInfo, Model, TensorInfo, open_model
from .plan import SEED_INPUTS, Plan
from .tensors import COMPONENTS, DTYPES, dtype_code, torch_dtype

__version__ = "0.1.0"


def library_version():
    """libvram's version as (major, minor, patch)."""
    v = _lib.vram_version()
    return (v >> 16, (v >> 8) & 0xff, v & 0xff)


__all__ = ["BrokerUnavailable", "VramError", "library_path", "library_version", "BrokerStatus", "Client",
           "ClientInfo", "Device", "Grant", "connect", "LOAD_FLAGS", "Loaded", "LoadStats", "Pager",
           "PagerStats", "load_options", "size_text", "ComponentInfo", "LayerInfo", "Model", "TensorInfo", "open_model",
           "SEED_INPUTS", "Plan", "COMPONENTS", "DTYPES", "dtype_code", "torch_dtype"]
