# SPDX-License-Identifier: MIT
"""Placement with the seed node's inputs (DisTorch2 semantics)."""
import ctypes as C
import json

from . import _native as N
from ._handle import Handle
from ._native import call, lib, text
from .tensors import COMPONENTS, dtype_code

PLAN_HIGH_PRECISION_LORAS = 1
MAX_DEVICES = 64

# The seed node's inputs, as vram_plan_options names them.
SEED_INPUTS = ("unet_compute_device", "unet_virtual_vram_gb", "unet_donor_device", "clip_compute_device",
               "clip_virtual_vram_gb", "clip_donor_device", "vae_device", "unet_expert_mode_allocations",
               "clip_expert_mode_allocations", "high_precision_loras")


def cast_mask(dtypes):
    """A cast_from bit mask from dtype names (or an int mask as is)."""
    if dtypes is None:
        return 0
    if isinstance(dtypes, int):
        return dtypes
    m = 0
    for d in dtypes:
        m |= 1 << dtype_code(d)
    return m


def plan_devices(spec):
    """Parses "cuda:0=24GiB,cpu=64GiB" into PlanDevice structs (offline plans)."""
    arr = (N.PlanDevice * MAX_DEVICES)()
    n = C.c_uint32()
    call("vram_plan_devices_parse", spec.encode(), arr, MAX_DEVICES, C.byref(n))
    return arr, n.value


class Plan:
    """vram_plan_create over the broker's devices (client) or a spec
    ("cuda:0=24GiB,cpu=64GiB").  Keyword options are the seed node's inputs
    by name (unet_compute_device, unet_virtual_vram_gb, ..., 
    high_precision_loras), plus cast_to / cast_from (the load's conversion,
    so converted sizes are placed).  None keeps libvram's default.
    ValueError-like VramError(EINVAL) names a bad input; ENOSPC names the
    device that cannot fit."""

    def __init__(self, model, client=None, devices=None, cast_to=None, cast_from=None, **seed):
        unknown = set(seed) - set(SEED_INPUTS)
        if unknown:
            raise TypeError("vramd: unknown plan option(s) %s; known: %s"
                            % (", ".join(sorted(unknown)), ", ".join(SEED_INPUTS + ("cast_to", "cast_from"))))
        o = N.PlanOptions()
        lib.vram_plan_options_init(C.byref(o))
        keep = []
        for k, v in seed.items():
            if v is None:
                continue
            if k == "high_precision_loras":
                o.flags = (o.flags | PLAN_HIGH_PRECISION_LORAS) if v else (o.flags & ~PLAN_HIGH_PRECISION_LORAS)
            elif k.endswith("_gb"):
                setattr(o, k, float(v))
            else:
                b = str(v).encode()
                keep.append(b)
                setattr(o, k, b)
        if cast_to is not None:
            o.cast_to = dtype_code(cast_to)
            o.cast_from = cast_mask(cast_from)
        if devices is None:
            if client is None:
                raise TypeError("vramd: a plan needs a client or a devices spec")
            arr = (N.PlanDevice * MAX_DEVICES)()
            n = C.c_uint32()
            call("vram_plan_devices_from_client", client._ptr, arr, MAX_DEVICES, C.byref(n))
            n = n.value
        elif isinstance(devices, str):
            arr, n = plan_devices(devices)
        else:
            arr, n = devices
        for i in range(n):
            N.verify_size(arr[i], N.PlanDevice, "struct vram_plan_device")
        p = C.c_void_p()
        call("vram_plan_create", model._ptr, C.byref(o), arr, n, C.byref(p))
        self.model = model
        self._h = Handle(p, lib.vram_plan_free, deps=(model._h,))
        self.options = dict(seed, cast_to=cast_to, cast_from=cast_from)

    @property
    def _ptr(self):
        return self._h.get("plan")

    def close(self):
        self._h = None

    @property
    def devices(self):
        """Device names, in the plan's own indexing."""
        return [text(lib.vram_plan_device_name(self._ptr, i)) for i in range(lib.vram_plan_device_count(self._ptr))]

    @property
    def flags(self):
        return lib.vram_plan_flags(self._ptr)

    @property
    def high_precision_loras(self):
        return bool(self.flags & PLAN_HIGH_PRECISION_LORAS)

    def layer_device(self, layer):
        """Name of the device that holds layer (of a layer the plan splits
        between devices: the one with most of its bytes)."""
        return self.devices[call("vram_plan_layer_device", self._ptr, layer)]

    def tensor_device(self, tensor):
        """Name of the device that holds tensor (an index of the model's):
        its module's.  The plan places modules, so a layer may span two."""
        return self.devices[call("vram_plan_tensor_device", self._ptr, tensor)]

    def compute_device(self, component):
        """Name of component's ("unet", "clip", "vae") compute device."""
        return self.devices[call("vram_plan_compute_device", self._ptr, COMPONENTS.index(component))]

    def bytes(self, component, device):
        """Bytes of component placed on device (a name)."""
        return lib.vram_plan_bytes(self._ptr, COMPONENTS.index(component), self.devices.index(device))

    def asked_bytes(self, component, device):
        """Bytes of component the inputs ask of device (placed minus asked
        is its excess, a shortfall when negative)."""
        return lib.vram_plan_asked_bytes(self._ptr, COMPONENTS.index(component), self.devices.index(device))

    def donor_layers(self, component=None):
        """Layer indices with tensors placed off their component's compute
        device (the pager pages such a layer whole)."""
        out = []
        for li in self.model.layers:
            if component and li.component != component:
                continue
            cd = self.compute_device(li.component)
            if any(self.tensor_device(t.index) != cd for t in self.model.layer_tensors(li.index)):
                out.append(li.index)
        return out

    def donor_tensors(self, component=None):
        """Names of the tensors placed off their component's compute device."""
        out = set()
        for li in self.donor_layers(component):
            for t in self.model.layer_tensors(li):
                if self.tensor_device(t.index) != self.compute_device(self.model.layers[li].component):
                    out.add(t.name)
        return out

    def to_json(self):
        """The plan as a dict (docs/plan.md)."""
        s = C.c_void_p()
        call("vram_plan_to_json", self._ptr, C.byref(s))
        try:
            return json.loads(C.string_at(s.value).decode())
        finally:
            N.free(s)
