# SPDX-License-Identifier: MIT
"""A ModelPatcher for weights that live in vramd memory.

ComfyUI's model management moves models with .to() (to load them onto the
GPU, to offload them) and may patch weights in place.  Memory the broker
owns must do neither: it is where the plan put it, and it may be shared.
This patcher:
  - reports the model as fully loaded where it is (loaded_size ==
    model_size), so model management never frees room for it nor copies it;
  - never calls .to() on the model (load, partially_load, unpatch, detach);
  - applies weight patches (LoRAs) as a private copy of each patched
    tensor, computed in fp32 and rounded back stochastically as ComfyUI
    does, with the original restored by reference on unpatch;
  - before ComfyUI writes a weight in place (hook patches: copy_to_param
    in patch_hook_weight_to_device, patch_cached_hook_weights and
    unpatch_hooks), gives that tensor a private copy: a shared load's
    tensors are mapped read-only, and a write would fault (SIGSEGV on host
    memory, an illegal address on a GPU);
  - is never dynamic (ComfyUI's DynamicVRAM keeps managing its own models
    beside it).
The class is made on first use, so that importing the pack needs no ComfyUI.
"""
import collections

_cls = None

Backup = collections.namedtuple("Dimension", ["weight", "inplace_update"])


def patcher_class():
    """VramdModelPatcher, a subclass of comfy.model_patcher.ModelPatcher."""
    global _cls
    if _cls is not None:
        return _cls
    import comfy.model_patcher as mp
    import comfy.utils as cu

    class VramdModelPatcher(mp.ModelPatcher):
        def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False, **kw):
            # In-place updates would write into broker memory: always off.
            super().__init__(model, load_device=load_device, offload_device=offload_device, size=size,
                             weight_inplace_update=False, **kw)
            self.weight_inplace_update = False

        def is_dynamic(self):
            return False

        def loaded_size(self):
            return self.model_size()

        def current_loaded_device(self):
            return self.load_device

        def _state(self):
            return getattr(self.model, "_vramd", None)

        def _module_of(self, key):
            path, _, attr = key.rpartition(".")
            return (self.model.get_submodule(path) if path else self.model), attr

        def _writable(self, key):
            st = self._state()
            if st is not None:
                st.make_writable(*self._module_of(key))

        def patch_hook_weight_to_device(self, *args, **kwargs):
            a = _bind(mp.ModelPatcher.patch_hook_weight_to_device, self, args, kwargs)
            if a["key"] in a["combined_patches"]:
                self._writable(a["key"])  # written with copy_to_param
            return super().patch_hook_weight_to_device(*args, **kwargs)

        def patch_cached_hook_weights(self, *args, **kwargs):
            self._writable(_bind(mp.ModelPatcher.patch_cached_hook_weights, self, args, kwargs)["key"])
            return super().patch_cached_hook_weights(*args, **kwargs)

        def unpatch_hooks(self, *args, **kwargs):
            only = _bind(mp.ModelPatcher.unpatch_hooks, self, args, kwargs).get("whitelist_keys_set")
            keys = [k for k in self.hook_backup if not only or k in only]
            r = super().unpatch_hooks(*args, **kwargs)
            st = self._state()
            if st is not None:
                for k in keys:
                    if k not in self.hook_backup:  # copied back: the file's bytes again
                        st.mark_restored(*self._module_of(k))
            return r

        def patch_weight_to_device(self, key, device_to=None, inplace_update=False, return_weight=False):
            if key not in self.patches:
                return super().patch_weight_to_device(key, device_to, False, return_weight)
            weight = cu.get_attr(self.model, key)
            if not return_weight and key not in self.backup:
                # The original by reference: the patched one is a new tensor.
                self.backup[key] = Backup(weight, False)
            # A donor layer's patched copy stays beside it (cast per forward);
            # a resident one is made on its own device.
            return super().patch_weight_to_device(key, weight.device, False, return_weight)

        def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False, **kw):
            st = self._state()
            if st is not None:
                st.ensure_resident()
            for key in list(self.patches):
                if key not in self.backup:
                    self.patch_weight_to_device(key)
            _set_loaded(self, self.load_device, self.model_size())
            for cb in self.get_all_callbacks(mp.CallbacksMP.ON_LOAD) if hasattr(mp, "CallbacksMP") else ():
                cb(self, device_to, lowvram_model_memory, force_patch_weights, full_load)
            if hasattr(self, "apply_hooks") and hasattr(self, "forced_hooks"):
                self.apply_hooks(self.forced_hooks, force_apply=True)

        def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
            self.load(device_to, force_patch_weights=force_patch_weights)
            return 0

        def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False):
            return 0

        def unpatch_model(self, device_to=None, unpatch_weights=True):
            # device_to=None: restore backups by reference, move nothing.
            return super().unpatch_model(None, unpatch_weights)

        def detach(self, unpatch_all=True):
            if hasattr(self, "model_patches_to"):
                self.model_patches_to(self.offload_device)
            if unpatch_all:
                self.unpatch_model(None, unpatch_weights=True)
            return self.model

    _cls = VramdModelPatcher
    return _cls


def _bind(fn, self, args, kwargs):
    """fn's parameters by name for a call fn(self, *args, **kwargs)."""
    import inspect
    return inspect.signature(fn).bind(self, *args, **kwargs).arguments


def _set_loaded(p, device, nbytes):
    """Records "loaded on device, nbytes" where this ComfyUI keeps it
    (upstream: attributes of the model; some forks: a measurements object)."""
    m = p.model
    for name, value in (("device", device), ("model_loaded_weight_memory", nbytes), ("model_lowvram", False),
                        ("lowvram_patch_counter", 0)):
        try:
            setattr(m, name, value)
        except Exception:  # noqa: BLE001 - read-only in this ComfyUI
            pass
    meas = getattr(p, "_memory_measurements", None)
    if meas is not None:
        for name, value in (("model_loaded_weight_memory", nbytes), ("model_lowvram", False),
                            ("current_weight_patches_uuid", getattr(p, "patches_uuid", None))):
            try:
                setattr(meas, name, value)
            except Exception:  # noqa: BLE001
                pass
    try:
        p.model_device = device
    except Exception:  # noqa: BLE001 - no such property upstream
        pass


def adopt(patcher_owner, attr, patcher_cls, model, load_device, offload_device, **copy_attrs):
    """Replaces patcher_owner.attr (a CLIP's or VAE's ModelPatcher) with a
    VramdModelPatcher over the same model, keeping the given attributes."""
    old = getattr(patcher_owner, attr)
    new = patcher_cls(model, load_device=load_device, offload_device=offload_device)
    for k in copy_attrs:
        if hasattr(old, k):
            setattr(new, k, getattr(old, k))
    if hasattr(old, "model_options") and hasattr(new, "model_options"):
        new.model_options = old.model_options
    setattr(patcher_owner, attr, new)
    return new
