# SPDX-License-Identifier: MIT
"""Builds ComfyUI's MODEL, CLIP and VAE over vramd memory.

The steps, as ComfyUI's own load_state_dict_guess_config takes them, minus
its copies:
  1. detection from the header alone: a state dict of meta tensors (shape
     and dtype, no bytes read) goes through ComfyUI's model_detection, and
     model_management picks the dtypes it would pick;
  2. placement and load by vramd (plan from the seed node's inputs; the
     UNet's dtype conversion done by libvram while streaming);
  3. the models built on the meta device (UNet, CLIP) or under it (VAE), and
     the loaded tensors adopted as their parameters without a copy
     (load_state_dict(assign=True));
  4. VramdModelPatcher for all three, and donor layers marked
     comfy_cast_weights so that ComfyUI's cast path copies them to the
     compute device at each forward; or, with VRAMD_PAGER=1, served by the
     vramd pager (a window on the compute device, prefetch ahead of use,
     released in the compute stream's order on CUDA).
Allocated outside broker memory, where ComfyUI's model needs it: a tensor
whose dtype ComfyUI chose differently from the load's (only when the
components want different dtypes, e.g. fp32 UNet with fp16 CLIP on a CPU:
converted with torch as ComfyUI's own copy would), buffers ComfyUI computes
rather than loads, and LoRA-patched tensors (patcher.py).
"""
import logging
import os
import sys
import threading
import time

import torch

from . import broker
from ._binding import import_vramd
from .patcher import adopt, patcher_class

vramd = import_vramd()
log = logging.getLogger("vramd")

META = torch.device("meta")
_TORCH_TO_VRAM = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}
for _n, _v in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2")):
    if hasattr(torch, _n):
        _TORCH_TO_VRAM[getattr(torch, _n)] = _v
_CASTABLE = {"F8_E4M3", "F8_E5M2", "F16", "BF16", "F32"}


def torch_device(client, name):
    """The torch device for a broker device name: CUDA devices by UUID,
    host memory (cpu pool, simulated GPUs) as "cpu"."""
    d = client.device(name)
    if d.backend == "cuda":
        from vramd.load import cuda_device_for
        return torch.device(cuda_device_for(d))
    return torch.device("cpu")


def meta_state_dict(model):
    """{name: meta tensor} from the header: what detection needs, no bytes."""
    sd = {}
    for t in model.tensors:
        try:
            dt = vramd.torch_dtype(t.dtype)
        except ValueError:
            dt = torch.uint8
        sd[t.name] = torch.empty(t.shape, dtype=dt, device=META)
    return sd


class Component:
    """One nn.Module (UNet, CLIP's encoder, VAE) whose parameters are views
    of a vramd load; knows which parameter came from which file tensor, so
    that it can give its memory back and take it again."""

    def __init__(self, name, module, compute_device):
        self.name = name
        self.module = module
        self.compute_device = compute_device
        self.bindings = []  # (module path, attr, file tensor name, dtype to convert to or None)

    def adopt(self, sd, names, views):
        """Assigns sd (keys as the module names them, values views or tensors
        derived from them) to the module with assign=True, converting dtypes
        to the module's own; records which file tensor each came from (names:
        id(view) -> file name).  Raises on parameters left on meta."""
        own = {k: v for k, v in self.module.state_dict(keep_vars=True).items()}
        src_of = {}
        fixed = {}
        for k, v in sd.items():
            src = names.get(id(v))
            target = own.get(k)
            if target is not None and v.dtype != target.dtype and v.is_floating_point():
                v = v.to(target.dtype)
                src_of[k] = (src, target.dtype)
            else:
                src_of[k] = (src, None)
            fixed[k] = v
        missing, unexpected = self.module.load_state_dict(fixed, strict=False, assign=True)
        # Weights the file lacks stay as the module made them in ComfyUI's own
        # loader (uninitialised, e.g. CLIP-L's text_projection): the same here,
        # allocated on the compute device (outside broker memory).
        self.missing = [n for n, p in list(self.module.named_parameters()) + list(self.module.named_buffers())
                        if p.device.type == "meta"]
        for n in self.missing:
            path, _, attr = n.rpartition(".")
            m = self.module.get_submodule(path) if path else self.module
            cur = getattr(m, attr)
            _set(m, attr, torch.empty(cur.shape, dtype=cur.dtype, device=self.compute_device))
        for k, (src, conv) in src_of.items():
            if src is None or k in unexpected:
                continue
            path, _, attr = k.rpartition(".")
            self.bindings.append((path, attr, src, conv))
        return missing, unexpected

    def _slot(self, path, attr):
        m = self.module.get_submodule(path) if path else self.module
        return m

    def bound(self, loaded_views):
        """True when every bound weight is still the loaded one (no patch)."""
        for path, attr, src, conv in self.bindings:
            if conv is not None:
                continue
            cur = getattr(self._slot(path, attr), attr)
            v = loaded_views.get(src)
            if v is None or cur is None or (v.numel() and cur.data_ptr() != v.data_ptr()):
                return False
        return True

    def unbind(self):
        """Every bound weight replaced by a meta tensor of its shape."""
        for path, attr, src, conv in self.bindings:
            m = self._slot(path, attr)
            cur = getattr(m, attr)
            _set(m, attr, torch.empty(cur.shape, dtype=cur.dtype, device=META))

    def bind(self, views):
        for path, attr, src, conv in self.bindings:
            v = views[src]
            _set(self._slot(path, attr), attr, v.to(conv) if conv is not None else v)


def torch_viewable(dtype):
    """Whether torch has a dtype for vramd's dtype name (GGUF's quantised
    blocks have none)."""
    try:
        vramd.torch_dtype(dtype)
        return True
    except ValueError:
        return False


def _view(loaded, t):
    """Tensor t of the load as torch sees it: in its dtype and shape, or
    as its raw bytes (flat uint8) when torch has no dtype for it."""
    return loaded.torch(t.index) if torch_viewable(t.dtype) else loaded.torch_bytes(t.index)


def _set(module, attr, t):
    if attr in module._parameters:
        module._parameters[attr] = torch.nn.Parameter(t, requires_grad=False)
    else:
        module._buffers[attr] = t


class VramdModel:
    """What one node call loaded: the vramd load, the plan, the components
    built over it.  Gives its memory back on RECLAIM when idle (no forward
    running for a second, no LoRA applied) and loads again at next use.

    A shared load's tensors are in broker-owned copies mapped read-only:
    nothing may write them in place.  Before ComfyUI writes a weight in
    place (hook patches), make_writable gives that tensor a private copy."""

    IDLE_S = 1.0

    def __init__(self, client, model, plan, load_options):
        self.client, self.model, self.plan, self.load_options = client, model, plan, load_options
        self.lock = threading.RLock()
        self.components = []
        self.active = 0
        self.last_used = time.monotonic()
        self.loaded = None
        self.views = {}
        self.evictions = 0
        self.written = set()  # file tensors made private and written in place, not restored yet
        self._slots = None    # (id(module), attr) -> (file tensor name, conversion), from the bindings
        self.pager = None     # the vramd pager serving donor modules (VRAMD_PAGER=1), made at first use
        self._paged = {}      # id(module) -> (compute device, [(attr, file tensor name)], layers)
        self._swapped = {}    # id(module) -> [(attr, the module's own tensor)] while a forward runs
        self._load()

    def _load(self):
        self.loaded = self.client.load(self.model, self.plan, **self.load_options)
        self.stats = self.loaded.stats()
        _log_load(self.model, self.stats)
        with torch.inference_mode(False):
            self.views = {t.name: _view(self.loaded, t) for t in self.model.tensors}

    def _binding(self, module, attr):
        if self._slots is None:
            self._slots = {}
            for c in self.components:
                for path, a, src, conv in c.bindings:
                    self._slots[(id(c._slot(path, a)), a)] = (src, conv)
        return self._slots.get((id(module), attr))

    def make_writable(self, module, attr):
        """Called before module.attr is written in place: when it is a
        tensor of this load in a shared (read-only) copy, it gets a private
        copy of its own (vram_loaded_make_private) and the module the new
        view.  Marks it written (no eviction until mark_restored), so that
        a reload cannot undo the write behind ComfyUI's back.  Returns True
        when module.attr is broker memory (now writable), False when it is
        not (a LoRA's copy, a tensor torch converted, a computed buffer)."""
        with self.lock:
            b = self._binding(module, attr)
            if b is None:
                return False
            src = b[0]
            if b[1] is not None:
                # converted by torch: ComfyUI's memory, but a reload would
                # convert it afresh from the file
                self.written.add(src)
                return False
            self.ensure_resident()
            cur, view = getattr(module, attr), self.views[src]
            if cur is None or cur.data_ptr() != view.data_ptr():
                return False  # replaced by a copy already
            self._drop_pager()  # its copies would be stale; its tables, the load's grants before
            self.written.add(src)
            i = self.model.tensor(src).index
            if not self.loaded.shared(i):
                return True
            self.loaded.make_private(i)
            with torch.inference_mode(False):
                view = self.loaded.torch(i)
            self.views[src] = view
            _set(module, attr, view)
            return True

    def mark_restored(self, module, attr):
        """module.attr holds the file's bytes again (a hook patch undone)."""
        with self.lock:
            b = self._binding(module, attr)
            if b is not None:
                self._drop_pager()  # its copies hold the patched bytes
                self.written.discard(b[0])

    def _drop_pager(self):
        """Closes the pager (a new one is made at the next forward) before
        donor memory is written in place or made private: a slot may hold a
        copy of the old bytes, and libvram refuses vram_loaded_make_private
        while a pager serves the load.  Not while a paged module's forward
        runs (a write then would be ComfyUI writing a weight mid-forward)."""
        if self.pager is None:
            return
        if any(self._swapped.values()):
            raise RuntimeError("vramd: a weight of a module the pager serves is written while its forward runs")
        self.pager.close()
        self.pager = None

    def add(self, comp):
        self.components.append(comp)
        self._slots = None
        for m in comp.module.modules():
            if m._parameters or m._buffers:
                m.register_forward_pre_hook(self._pre)
                m.register_forward_hook(self._post)

    def _pre(self, module, args):
        with self.lock:
            self.active += 1
            if self.loaded is None:
                self.ensure_resident()

    def _post(self, module, args, out):
        with self.lock:
            self.active -= 1
            self.last_used = time.monotonic()

    @property
    def resident(self):
        return self.loaded is not None

    def ensure_resident(self):
        """Loads again (same plan, same options) after an eviction."""
        with self.lock:
            self.last_used = time.monotonic()
            if self.loaded is not None:
                return
            self._load()
            with torch.inference_mode(False):
                for c in self.components:
                    c.bind(self.views)

    def held_on(self, device):
        n = 0
        for t in self.model.tensors:
            if self.loaded.device(t.index).index == device:
                n += self.loaded.nbytes(t.index)
        return n

    def evict_if_idle(self, device):
        """RECLAIM: everything back to the broker if this model is idle and
        holds memory on device.  Returns the bytes given back: 0 when busy,
        and 0 when a tensor handed out elsewhere still holds the grants (they
        go back when it dies; the model loads afresh at its next use)."""
        import gc
        import weakref
        with self.lock:
            if self.loaded is None or self.active or self.written or \
                    time.monotonic() - self.last_used < self.IDLE_S:
                return 0
            n = self.held_on(device)
            if not n or not all(c.bound(self.views) for c in self.components):
                return 0
            # The state is final before any memory goes back: the broker
            # hands the memory on at the FREE, before this returns.
            loaded, self.loaded = self.loaded, None
            if self.pager is not None:  # it holds the load
                self.pager.close()
                self.pager = None
            handle = weakref.ref(loaded._h)
            for c in self.components:
                c.unbind()
            self.views = {}
            self.evictions += 1
            loaded.close()
            del loaded
            gc.collect()
            return n if handle() is None else 0

    def mark_donors(self, comp):
        """Modules whose weights the plan put off comp's compute device get
        comfy_cast_weights: ComfyUI's ops copy them to the input's device at
        each forward.  With VRAMD_PAGER=1 (pager_enabled), the pager serves
        them instead (page_donors); modules it cannot serve (a weight torch
        converted, a quantised one) are still marked.  Returns the module
        paths marked or paged."""
        paged = set(self.page_donors(comp)) if pager_enabled() else set()
        donor_tensors = self.plan.donor_tensors()
        marked = set()
        for path, attr, src, conv in comp.bindings:
            if src not in donor_tensors or path in marked or path in paged:
                continue
            m = comp.module.get_submodule(path) if path else comp.module
            if hasattr(m, "comfy_cast_weights"):
                m.comfy_cast_weights = True
                marked.add(path)
        return sorted(marked | paged)

    def page_donors(self, comp):
        """The modules of comp whose donor weights the pager can serve
        (every bound donor tensor viewable by torch, none converted): a
        forward pre-hook acquires their layers and points the module at the
        pager's copies on the compute device; a forward hook points it back
        at the donor views and releases the layers (on CUDA in the order of
        the compute device's current stream).  Returns their paths."""
        donor_tensors = self.plan.donor_tensors()
        by_path = {}
        for path, attr, src, conv in comp.bindings:
            if src in donor_tensors:
                by_path.setdefault(path, []).append((attr, src, conv))
        paged = []
        for path, entries in sorted(by_path.items()):
            if any(conv is not None or not torch_viewable(self.model.tensor(src).dtype)
                   for _, src, conv in entries):
                continue
            m = comp.module.get_submodule(path) if path else comp.module
            if hasattr(m, "comfy_cast_weights"):
                # a weight the pager does not serve (a LoRA's private copy)
                # is still cast to the compute device; the pager's copies
                # are there already (no copy)
                m.comfy_cast_weights = True
            layers = sorted({self.model.tensor(src).layer for _, src, _ in entries})
            self._paged[id(m)] = (comp.compute_device, [(a, src) for a, src, _ in entries], layers)
            m.register_forward_pre_hook(self._page_in)
            # always_call: a forward that raises releases its layers too
            m.register_forward_hook(self._page_out, always_call=True)
            paged.append(path)
        return paged

    def _page_in(self, module, args):
        dev, entries, layers = self._paged[id(module)]
        with self.lock:
            self.ensure_resident()
            if self.pager is None:
                # no RECLAIM handler of its own: the pack's answers the broker
                self.pager = self.loaded.pager(dispatch_thread=False, reclaim=False)
            done, swapped = [], []
            try:
                for li in layers:
                    self.pager.acquire(li)
                    done.append(li)
                for attr, src in entries:
                    own = module._parameters if attr in module._parameters else module._buffers
                    cur, view = own.get(attr), self.views.get(src)
                    if cur is None or view is None or cur.data_ptr() != view.data_ptr():
                        continue  # a LoRA's private copy: it stays
                    own[attr] = self.pager.torch(self.model.tensor(src).index)
                    swapped.append((attr, cur))
            except Exception:
                self._unswap(module, swapped, done, None)
                raise
            self._swapped.setdefault(id(module), []).append((swapped, layers))

    def _page_out(self, module, args, out):
        dev = self._paged[id(module)][0]
        stream = torch.cuda.current_stream(dev) if dev.type == "cuda" else None
        with self.lock:
            stack = self._swapped.get(id(module))
            if not stack:
                return  # the pre-hook failed: nothing acquired
            swapped, layers = stack.pop()
            self._unswap(module, swapped, layers, stream)

    def _unswap(self, module, swapped, layers, stream):
        """module's own tensors back in place of the pager's, then layers
        released (in stream's order when given)."""
        for attr, cur in swapped:
            own = module._parameters if attr in module._parameters else module._buffers
            own[attr] = cur
        for li in layers:
            self.pager.release(li, stream=stream)


def pager_enabled():
    """Donor layers are served by the vramd pager when $VRAMD_PAGER is
    1/yes/true/on; by ComfyUI's cast path otherwise (the default)."""
    return os.environ.get("VRAMD_PAGER", "0").strip().lower() in ("1", "yes", "true", "on")


def shared_enabled():
    """Loads share broker-owned read-only copies unless $VRAMD_SHARED is
    0/no/false/off (then every load is private: writable, never shared)."""
    return os.environ.get("VRAMD_SHARED", "1").strip().lower() not in ("0", "no", "false", "off")


def load_options(cast_to=None, cast_from=None):
    """The node's vramd load options: the UNet's conversion, progress on
    ComfyUI's bar, reclaimable (so that the broker may ask for a private
    load back when another client needs its fair share), and shared
    copies unless opted out (shared_enabled)."""
    return dict(cast_to=cast_to, cast_from=cast_from, progress=_progress(), reclaimable=True,
                shared=shared_enabled())


def _log_load(model, st):
    """One line in ComfyUI's log per load: size, time, I/O, conversions,
    and where the bytes came from (shared copy: hit/filled/waited)."""
    conv = ", %d converted" % st.converted if st.converted else ""
    share = st.share_text() or "private (VRAMD_SHARED=0)"
    log.info("vramd: loaded %s: %s in %.3f s (%s I/O%s); %s", os.path.basename(model.path),
             vramd.size_text(st.bytes), st.ns / 1e9, st.io_mode_used, conv, share)


def _progress():
    try:
        import comfy.utils
        bar = comfy.utils.ProgressBar(1000)
    except Exception:  # noqa: BLE001 - no progress bar outside a prompt
        return None

    def cb(done, total):
        bar.update_absolute(int(done * 1000 / total) if total else 1000, 1000)
    return cb


def _cast_for(model, want, prefix):
    """(cast_to, cast_from) for libvram so that the UNet's tensors arrive in
    ComfyUI's chosen dtype, or (None, None) when the file has it already."""
    name = _TORCH_TO_VRAM.get(want)
    if name is None:
        return None, None
    have = {t.dtype for t in model.tensors if t.name.startswith(prefix) and t.dtype in _CASTABLE}
    src = sorted(have - {name})
    if not src:
        return None, None
    return name, src


def _eject(eject_models):
    if not eject_models:
        return
    # The seed node's eject_models: unload ComfyUI's other models first.
    import comfy.model_management as mm
    mm.unload_all_models()
    mm.soft_empty_cache()


GGUF_URL = "https://github.com/city96/ComfyUI-GGUF"


def quantized_types(model):
    """{dtype name: tensor count} of model's tensors torch has no dtype for
    (GGUF's block-quantised types); {} for everything else."""
    out = {}
    for t in model.tensors:
        if not torch_viewable(t.dtype):
            out[t.dtype] = out.get(t.dtype, 0) + 1
    return out


def comfyui_gguf():
    """(GGMLTensor, GGMLOps, GGUFModelPatcher) from ComfyUI-GGUF (city96),
    found among the modules ComfyUI has imported (custom nodes load before
    any node runs, under their folder's name); else from ComfyUI's own copy
    of it where it has one (the pip-installable fork's comfy.gguf); None
    without either."""
    found = {}
    for name, mod in list(sys.modules.items()):
        own = name == "comfy" or name.startswith("comfy.")
        if isinstance(getattr(mod, "GGMLTensor", None), type) and hasattr(mod, "GGMLOps"):
            found.setdefault(("ops", own), mod)
        if isinstance(getattr(mod, "GGUFModelPatcher", None), type):
            found.setdefault(("patcher", own), mod.GGUFModelPatcher)
    for own in (False, True):  # the custom node first
        ops, patcher = found.get(("ops", own)), found.get(("patcher", own))
        if ops is not None and patcher is not None:
            return ops.GGMLTensor, ops.GGMLOps, patcher
    return None


def _needs_gguf(path, qtypes, what):
    kinds = ", ".join("%s x%d" % kv for kv in sorted(qtypes.items()))
    return RuntimeError("vramd: %s holds GGUF-quantised tensors (%s): %s needs ComfyUI-GGUF (%s) "
                        "installed in ComfyUI's custom_nodes, which dequantises them at each forward; "
                        "install it and restart ComfyUI, or load an unquantised file" % (path, kinds, what, GGUF_URL))


def gguf_state_dict(vm, ggml_tensor, qtype):
    """{name: ggml_tensor} over vm's loaded tensors, as ComfyUI-GGUF's
    gguf_sd_loader builds them from a file: F32 and F16 tensors in their
    dtype and shape, every other type as its raw bytes (uint8, one row per
    leading index: shape[:-1] + (bytes per row,)), tensor_type the GGUF
    type (qtype, gguf.GGMLQuantizationType, by name), tensor_shape the
    logical shape.  No copy: each wraps vm's view."""
    sd = {}
    for t in vm.model.tensors:
        v = vm.views[t.name]
        shape = torch.Size(t.shape)
        if t.dtype not in ("F32", "F16"):
            rows = 1
            for n in shape[:-1]:
                rows *= n
            raw = v.view(torch.uint8) if v.dtype != torch.uint8 else v
            v = raw.reshape(tuple(shape[:-1]) + (raw.numel() // max(rows, 1),))
        try:
            kind = qtype[t.dtype]
        except KeyError:
            raise RuntimeError("vramd: %s: ComfyUI-GGUF's gguf package has no type %s (tensor %s)"
                               % (vm.model.path, t.dtype, t.name)) from None
        sd[t.name] = ggml_tensor(v, tensor_type=kind, tensor_shape=shape)
    return sd


def _load_gguf(path, model, client, inputs, gg):
    """MODEL of a quantised GGUF diffusion model, through ComfyUI-GGUF's
    ops and patcher over vramd memory (the way its UnetLoaderGGUF builds
    one over the file's mmap)."""
    import comfy.sd
    import gguf
    ggml_tensor, ggml_ops, patcher_cls = gg
    plan = client.plan(model, **inputs)
    vm = VramdModel(client, model, plan, load_options())
    with torch.inference_mode(False):
        sd = gguf_state_dict(vm, ggml_tensor, gguf.GGMLQuantizationType)
        base = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"custom_operations": ggml_ops()})
    if base is None:
        raise RuntimeError("vramd: %s: ComfyUI does not recognise this diffusion model" % path)
    patcher = patcher_cls.clone(base)
    patcher.model._vramd = vm  # the load's stats; the tensors hold its memory
    return (patcher,)


def load_checkpoint(path, inputs, eject_models=True, output_clip=True, output_vae=True):
    """MODEL, CLIP, VAE of the checkpoint at path, placed by inputs (the
    seed node's, by name)."""
    model = vramd.open_model(path)
    qtypes = quantized_types(model)
    if qtypes:
        raise RuntimeError("vramd: %s holds GGUF-quantised tensors (%s): quantised files are diffusion models; "
                           "load it with Load Diffusion Model (vramd)" % (path, ", ".join(sorted(qtypes))))
    import comfy.model_detection as md
    import comfy.model_management as mm
    import comfy.sd as csd
    import comfy.utils as cu

    client = broker.client()
    _eject(eject_models)
    meta = meta_state_dict(model)
    metadata = model.metadata or None
    prefix = md.unet_prefix_from_state_dict(meta)
    config = md.model_config_from_unet(meta, prefix, metadata=metadata)
    if config is None:
        raise RuntimeError("vramd: %s: ComfyUI does not recognise the diffusion model in this checkpoint" % path)
    if getattr(config, "quant_config", None) is not None or any(k.endswith(".scaled_fp8") for k in meta):
        raise RuntimeError("vramd: %s: quantized (scaled fp8) checkpoints are not supported yet; "
                           "use ComfyUI's own loader for it" % path)
    unet_dev = torch_device(client, inputs["unet_compute_device"])
    params = cu.calculate_parameters(meta, prefix)
    wdt = cu.weight_dtype(meta, prefix)
    unet_dtype = mm.unet_dtype(model_params=params, supported_dtypes=list(config.supported_inference_dtypes),
                               weight_dtype=wdt)
    manual = mm.unet_manual_cast(unet_dtype, unet_dev, config.supported_inference_dtypes)
    config.set_inference_dtype(unet_dtype, manual)

    cast_to, cast_from = _cast_for(model, unet_dtype, prefix)
    plan = client.plan(model, cast_to=cast_to, cast_from=cast_from, **inputs)
    vm = VramdModel(client, model, plan, load_options(cast_to, cast_from))
    names = {id(v): k for k, v in vm.views.items()}

    with torch.inference_mode(False):
        # UNet on the meta device, weights adopted.
        base = config.get_model(dict(vm.views), prefix, device=META)
        P = patcher_class()
        patcher = P(base, load_device=unet_dev, offload_device=unet_dev)
        unet = Component("unet", base.diffusion_model, unet_dev)
        to_load = {k[len(prefix):]: v for k, v in vm.views.items() if k.startswith(prefix)}
        to_load = config.process_unet_state_dict(to_load)
        unet.adopt(to_load, names, vm.views)
        vm.add(unet)
        vm.mark_donors(unet)
        base._vramd = vm

        clip = None
        if output_clip:
            clip = _build_clip(csd, cu, config, vm, names, client, inputs)
        vae = None
        if output_vae:
            vae = _build_vae(csd, cu, config, vm, names, client, inputs, metadata)
    broker.register(vm)
    return (patcher, clip, vae)


def _build_clip(csd, cu, config, vm, names, client, inputs):
    target = config.clip_target(state_dict=dict(vm.views))
    if target is None:
        return None
    clip_sd = config.process_clip_state_dict(dict(vm.views))
    if not clip_sd:
        return None
    dev = torch_device(client, inputs["clip_compute_device"])
    opts = {"initial_device": META, "load_device": dev, "offload_device": dev}
    try:
        import comfy.cmd.folder_paths as fp  # the pip-installable fork
    except ImportError:
        import folder_paths as fp
    clip = csd.CLIP(target, embedding_directory=fp.get_folder_paths("embeddings"), tokenizer_data=clip_sd,
                    parameters=cu.calculate_parameters(clip_sd), state_dict=[], model_options=opts)
    adopt(clip, "patcher", patcher_class(), clip.cond_stage_model, dev, dev, hook_mode=1, is_clip=1)
    comp = Component("clip", clip.cond_stage_model, dev)
    comp.adopt(clip_sd, names, vm.views)
    vm.add(comp)
    vm.mark_donors(comp)
    clip.cond_stage_model._vramd = vm
    return clip


def _build_vae(csd, cu, config, vm, names, client, inputs, metadata):
    vae_sd = cu.state_dict_prefix_replace(dict(vm.views), {k: "" for k in config.vae_key_prefix},
                                          filter_keys=True)
    vae_sd = config.process_vae_state_dict(vae_sd)
    if not vae_sd:
        return None
    dev = torch_device(client, inputs["vae_device"])
    meta_sd = {k: torch.empty(v.shape, dtype=v.dtype, device=META) for k, v in vae_sd.items()}
    # ComfyUI's VAE picks its config from the keys and its dtype from the
    # device; built under the meta device, its load is a no-op, and the
    # vramd tensors are adopted afterwards.
    with torch.device(META):
        vae = csd.VAE(sd=meta_sd, device=dev, metadata=metadata)
    adopt(vae, "patcher", patcher_class(), vae.first_stage_model, dev, dev)
    comp = Component("vae", vae.first_stage_model, dev)
    comp.adopt(vae_sd, names, vm.views)
    vm.add(comp)
    vae.first_stage_model._vramd = vm
    return vae


def load_diffusion_model(path, weight_dtype, inputs, eject_models=True):
    """MODEL of a diffusion-model-only file (models/diffusion_models).  A
    GGUF file with quantised tensors goes through ComfyUI-GGUF's ops and
    patcher when ComfyUI loaded it, and fails naming it when not."""
    model = vramd.open_model(path)
    qtypes = quantized_types(model)
    gg = comfyui_gguf() if qtypes else None
    if qtypes and gg is None:
        raise _needs_gguf(path, qtypes, "Load Diffusion Model (vramd)")
    import comfy.model_detection as md
    import comfy.model_management as mm
    import comfy.utils as cu

    client = broker.client()
    _eject(eject_models)
    if gg is not None:
        inputs = {k: v for k, v in inputs.items() if k != "unet_compute_device" or v}
        return _load_gguf(path, model, client, inputs, gg)
    meta = meta_state_dict(model)
    prefix = md.unet_prefix_from_state_dict(meta)
    if not any(t.component == "unet" for t in model.tensors) and (
            (inputs.get("unet_virtual_vram_gb") or 0) > 0 or inputs.get("unet_expert_mode_allocations")):
        # libvram places tensors outside a checkpoint's UNet prefix whole
        # on the compute device: say so instead of silently not donating.
        raise RuntimeError("vramd: %s is a diffusion-model-only file; libvram does not distribute those "
                           "across devices yet: set virtual_vram_gb to 0 and clear the expert allocations" % path)
    config = md.model_config_from_unet(meta, prefix, metadata=model.metadata or None)
    if config is None:
        raise RuntimeError("vramd: %s: ComfyUI does not recognise this diffusion model" % path)
    inputs = dict(inputs)
    if not inputs.get("unet_compute_device"):
        inputs.pop("unet_compute_device", None)
    unet_dev = torch_device(client, inputs.get("unet_compute_device") or "cpu")
    params = cu.calculate_parameters(meta, prefix)
    wdt = cu.weight_dtype(meta, prefix)
    want = {"fp8_e4m3fn": getattr(torch, "float8_e4m3fn", None), "fp8_e4m3fn_fast": getattr(torch, "float8_e4m3fn", None),
            "fp8_e5m2": getattr(torch, "float8_e5m2", None)}.get(weight_dtype)
    unet_dtype = want or mm.unet_dtype(model_params=params, supported_dtypes=list(config.supported_inference_dtypes),
                                       weight_dtype=wdt)
    manual = mm.unet_manual_cast(unet_dtype, unet_dev, config.supported_inference_dtypes)
    config.set_inference_dtype(unet_dtype, manual)
    if weight_dtype == "fp8_e4m3fn_fast":
        config.optimizations["fp8"] = True
    cast_to, cast_from = _cast_for(model, unet_dtype, prefix)
    plan = client.plan(model, cast_to=cast_to, cast_from=cast_from, **inputs)
    vm = VramdModel(client, model, plan, load_options(cast_to, cast_from))
    names = {id(v): k for k, v in vm.views.items()}
    with torch.inference_mode(False):
        base = config.get_model(dict(vm.views), prefix, device=META)
        patcher = patcher_class()(base, load_device=unet_dev, offload_device=unet_dev)
        unet = Component("unet", base.diffusion_model, unet_dev)
        to_load = {k[len(prefix):]: v for k, v in vm.views.items() if k.startswith(prefix)}
        unet.adopt(config.process_unet_state_dict(to_load), names, vm.views)
        vm.add(unet)
        vm.mark_donors(unet)
        base._vramd = vm
    broker.register(vm)
    return (patcher,)
