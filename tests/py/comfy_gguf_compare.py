# SPDX-License-Identifier: MIT
"""Runs inside a ComfyUI checkout's Python with ComfyUI-GGUF (city96) beside
it (COMFYUI_DIR, COMFYUI_GGUF_DIR): a small Flux-shaped GGUF diffusion
model (Flux's keys and ComfyUI's Flux module at hidden size 256, one double
and one single block; 2-D weights Q8_0 and Q4_0, the rest F32/F16, written
with PyPI gguf) loaded by ComfyUI-GGUF's own UnetLoaderGGUF and by "Load
Diffusion Model (vramd)" must give the same model class, the same tensor
types and bytes, and equal forward outputs on the CPU.

    comfy_gguf_compare.py --comfyui DIR --gguf-node DIR --socket SOCK --dir TMP
Prints OK on its last line.
"""
import argparse
import os
import sys

ap = argparse.ArgumentParser()
ap.add_argument("--comfyui", required=True)
ap.add_argument("--gguf-node", required=True)
ap.add_argument("--socket", required=True)
ap.add_argument("--dir", required=True)
a = ap.parse_args()

sys.argv = [sys.argv[0], "--cpu", "--disable-known-models"]
sys.path.insert(0, a.comfyui)
os.environ["VRAMD_SOCKET"] = a.socket
os.environ.setdefault("VRAMD_CLIENT_NAME", "comfy-gguf-compare")

import torch  # noqa: E402

torch.set_grad_enabled(False)
import comfy.model_management as mm  # noqa: E402
import comfy.ops  # noqa: E402
import gguf  # noqa: E402
import numpy as np  # noqa: E402
import harness  # noqa: E402 - the pack imported from this checkout

try:
    import comfy.cmd.folder_paths as folder_paths  # the pip-installable fork
except ImportError:
    import folder_paths

FLUX = dict(in_channels=16, out_channels=16, vec_in_dim=64, context_in_dim=64, hidden_size=256, mlp_ratio=4.0,
            num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[16, 56, 56], theta=10000, patch_size=2,
            qkv_bias=True, guidance_embed=False, txt_ids_dims=[])


def import_gguf_node(d):
    """ComfyUI-GGUF imported as ComfyUI imports a custom node folder (under
    its folder's name); the pip-installable fork's top-level "nodes" and
    "folder_paths" (which vanilla custom nodes import) aliased first, as
    its custom-node loader does.  Returns its NODE_CLASS_MAPPINGS."""
    import importlib.util
    import types
    try:
        import comfy.nodes.base_nodes as base_nodes
    except ImportError:
        pass  # upstream ComfyUI: its own nodes and folder_paths
    else:
        # The fork's folder_paths lacks upstream's plain dict interface
        # (folder_names_and_paths.get(key, default)), which ComfyUI-GGUF
        # uses at import: a small upstream-shaped folder_paths, whose
        # get_full_path finds the test's files.
        shim = types.ModuleType("folder_paths")
        shim.folder_names_and_paths = {}
        shim.get_full_path = lambda folder, name: os.path.join(a.dir, "unet", name)
        shim.get_filename_list = lambda folder: []
        shim.get_folder_paths = folder_paths.get_folder_paths
        sys.modules.setdefault("nodes", base_nodes)
        sys.modules["folder_paths"] = shim
    name = os.path.basename(os.path.normpath(d))
    spec = importlib.util.spec_from_file_location(name, os.path.join(d, "__init__.py"),
                                                  submodule_search_locations=[d])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod.NODE_CLASS_MAPPINGS


def write_flux_gguf(path):
    from comfy.ldm.flux.model import Flux
    m = Flux(device="meta", dtype=torch.float16, operations=comfy.ops.disable_weight_init, **FLUX)
    Q = gguf.GGMLQuantizationType
    rng = np.random.default_rng(4)
    w = gguf.GGUFWriter(path, "flux")
    kinds = {}
    for k, v in m.state_dict().items():
        x = (rng.standard_normal(tuple(v.shape)) / max(1, v.shape[-1]) ** 0.5).astype(np.float32)
        if k.endswith(".scale"):
            x = 1 + 0.05 * x
        if v.dim() == 2 and v.shape[-1] % 32 == 0:
            qt = Q.Q8_0 if kinds.get("Q4_0", 0) > kinds.get("Q8_0", 0) else Q.Q4_0
            w.add_tensor(k, gguf.quants.quantize(x, qt), raw_dtype=qt)
        elif v.dim() >= 2:
            qt = Q.F16
            w.add_tensor(k, x.astype(np.float16))
        else:
            qt = Q.F32
            w.add_tensor(k, x)
        kinds[qt.name] = kinds.get(qt.name, 0) + 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return kinds


def forward(patcher, g):
    mm.load_models_gpu([patcher])
    x = torch.randn((1, 16, 16, 16), generator=g)
    ctx = torch.randn((1, 8, 64), generator=g)
    y = torch.randn((1, 64), generator=g)
    return patcher.model.apply_model(x, torch.tensor([0.5]), c_crossattn=ctx, y=y)


def main():
    gguf_nodes = import_gguf_node(a.gguf_node)
    assert "UnetLoaderGGUF" in gguf_nodes, "ComfyUI-GGUF did not load from %s" % a.gguf_node
    d = os.path.join(a.dir, "unet")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "flux-tiny-q8.gguf")
    kinds = write_flux_gguf(path)
    theirs = gguf_nodes["UnetLoaderGGUF"]().load_unet(os.path.basename(path))[0]
    pack = harness.import_pack()
    ours = pack.NODE_CLASS_MAPPINGS["DiffusionModelLoaderVramd"]().load_unet(
        path, "default", compute_device="cuda:0", virtual_vram_gb=0.0, eject_models=False)[0]
    assert type(ours) is type(theirs), (type(ours), type(theirs))
    assert type(ours.model) is type(theirs.model), (type(ours.model), type(theirs.model))
    vm = ours.model._vramd
    n = 0
    for name, mod in ours.model.diffusion_model.named_modules():
        ref = theirs.model.diffusion_model.get_submodule(name)
        assert type(mod) is type(ref), (name, type(mod), type(ref))
        for attr, p in list(mod._parameters.items()):
            q = ref._parameters[attr]
            if p is None:
                assert q is None, (name, attr)
                continue
            key = (name + "." if name else "") + attr
            assert type(p.data) is type(q.data) or isinstance(p, type(q)), (key, type(p), type(q))
            assert getattr(p, "tensor_type", None) == getattr(q, "tensor_type", None), key
            assert getattr(p, "tensor_shape", None) == getattr(q, "tensor_shape", None), key
            assert torch.equal(torch.Tensor(p.data).view(torch.uint8), torch.Tensor(q.data).view(torch.uint8)), key
            if getattr(p, "tensor_type", None) not in (None, gguf.GGMLQuantizationType.F32,
                                                       gguf.GGMLQuantizationType.F16):
                i = vm.model.tensor("%s" % key).index
                assert p.data_ptr() == vm.loaded.host_ptr(i), ("copied", key)
            n += 1
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    o1, o2 = forward(ours, g1), forward(theirs, g2)
    assert torch.equal(o1, o2), ("flux forward", (o1 - o2).abs().max())
    print("GGUF %s: %d parameters equal ComfyUI-GGUF's (quantised ones in vramd memory, no copy), "
          "equal forward; %s" % (", ".join("%s x%d" % kv for kv in sorted(kinds.items())), n,
                                 vm.stats.share_text()))
    print("OK")


main()
