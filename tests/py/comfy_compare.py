# SPDX-License-Identifier: MIT
"""Runs inside a ComfyUI checkout's Python (COMFYUI_DIR, COMFYUI_PYTHON): a
small SD1.5-shaped checkpoint loaded by ComfyUI's own CheckpointLoaderSimple
and by "Load Checkpoint (vramd)" must give the same model classes, equal
weights (values and dtypes) and equal UNet, CLIP and VAE outputs on the
CPU, and equal results with LoRAs and weight hooks applied (the node's
weights are in a shared copy, read-only: an in-place write faults).

    comfy_compare.py --comfyui DIR --socket SOCK --dir TMP
Prints OK on its last line.  comfy_bench.py times the two loaders.
"""
import argparse
import os
import sys

ap = argparse.ArgumentParser()
ap.add_argument("--comfyui", required=True)
ap.add_argument("--socket", required=True)
ap.add_argument("--dir", required=True)
a = ap.parse_args()

# ComfyUI reads its arguments at import: CPU, no downloads.
sys.argv = [sys.argv[0], "--cpu", "--disable-known-models"]
sys.path.insert(0, a.comfyui)
os.environ["VRAMD_SOCKET"] = a.socket
os.environ.setdefault("VRAMD_CLIENT_NAME", "comfy-compare")

import torch  # noqa: E402

torch.set_grad_enabled(False)
import comfy.model_management as mm  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.utils  # noqa: E402
import comfy_checkpoints  # noqa: E402
import harness  # noqa: E402 - the pack imported from this checkout

try:
    from comfy.nodes.base_nodes import CheckpointLoaderSimple  # the pip-installable fork
    import comfy.cmd.folder_paths as folder_paths
except ImportError:
    from nodes import CheckpointLoaderSimple
    import folder_paths


def comfy_load(name):
    return CheckpointLoaderSimple().load_checkpoint(name)


def vramd_load(pack, path):
    node = pack.NODE_CLASS_MAPPINGS["CheckpointLoaderVramd"]()
    return node.load_checkpoint(path, unet_compute_device="cuda:0", unet_virtual_vram_gb=0.02,
                                unet_donor_device="cpu", clip_compute_device="cpu", clip_virtual_vram_gb=0.0,
                                clip_donor_device="cpu", vae_device="cuda:0", eject_models=False)


def compare(ours, theirs):
    (m1, c1, v1), (m2, c2, v2) = ours, theirs
    assert type(m1.model) is type(m2.model), (type(m1.model), type(m2.model))
    assert type(m1.model.model_config) is type(m2.model.model_config)
    assert type(c1.cond_stage_model) is type(c2.cond_stage_model)
    assert type(v1.first_stage_model) is type(v2.first_stage_model)
    assert type(m1).__name__ == "VramdModelPatcher", type(m1)
    vm = m1.model._vramd
    missing = {c.name: set(c.missing) for c in vm.components}
    n = 0
    for what, a, b in (("unet", m1.model.diffusion_model, m2.model.diffusion_model),
                       ("clip", c1.cond_stage_model, c2.cond_stage_model),
                       ("vae", v1.first_stage_model, v2.first_stage_model)):
        sa, sb = a.state_dict(), b.state_dict()
        assert set(sa) == set(sb), (what, sorted(set(sa) ^ set(sb))[:5])
        for k in sa:
            if k in missing[what]:
                continue  # not in the file: uninitialised in both
            assert sa[k].dtype == sb[k].dtype, (what, k, sa[k].dtype, sb[k].dtype)
            assert torch.equal(sa[k], sb[k]), (what, k)
            n += 1
    # UNet forward (through ComfyUI's model: sampling wrapper, casts)
    g = torch.Generator().manual_seed(1)
    x = torch.randn((1, 4, 16, 16), generator=g)
    ctx = torch.randn((1, 77, 768), generator=g)
    t = torch.tensor([500.0])
    for mp in (m1, m2):
        mm.load_models_gpu([mp])
    o1 = m1.model.apply_model(x, t, c_crossattn=ctx)
    o2 = m2.model.apply_model(x, t, c_crossattn=ctx)
    assert torch.equal(o1, o2), ("unet", (o1 - o2).abs().max())
    # CLIP
    tok = c1.tokenize("a photo of a cat")
    e1, p1 = c1.encode_from_tokens(tok, return_pooled=True)
    e2, p2 = c2.encode_from_tokens(c2.tokenize("a photo of a cat"), return_pooled=True)
    assert torch.equal(e1, e2) and torch.equal(p1, p2), ("clip", (e1 - e2).abs().max())
    # VAE
    lat = torch.randn((1, 4, 8, 8), generator=g)
    d1, d2 = v1.decode(lat), v2.decode(lat)
    assert torch.equal(d1, d2), ("vae decode", (d1 - d2).abs().max())
    img = torch.rand((1, 64, 64, 3), generator=g)
    assert torch.equal(v1.encode(img), v2.encode(img)), "vae encode"
    return n


def make_lora(model, clip, rank=4):
    """A LoRA in the generic key format for the first few 2-D weights of the
    UNet's attention/MLP and of CLIP-L's first layer (seeded)."""
    g = torch.Generator().manual_seed(11)
    out = {}
    picks = [("", k) for k, v in model.model.state_dict().items() if k.startswith("diffusion_model.")
             and k.endswith(".weight") and v.dim() == 2 and (".attn" in k or ".ff." in k)][:4]
    picks += [("text_encoders.", k) for k, v in clip.cond_stage_model.state_dict().items()
              if ".layers.0." in k and k.endswith(".weight") and v.dim() == 2][:2]
    sds = {"": model.model.state_dict(), "text_encoders.": clip.cond_stage_model.state_dict()}
    for pre, k in picks:
        w = sds[pre][k]
        base = pre + k[:-len(".weight")]
        out[base + ".lora_up.weight"] = (torch.randn((w.shape[0], rank), generator=g) * 0.05).to(torch.float16)
        out[base + ".lora_down.weight"] = (torch.randn((rank, w.shape[1]), generator=g) * 0.05).to(torch.float16)
    return out


def unet_out(m, x, t, ctx):
    mm.load_models_gpu([m])
    return m.model.apply_model(x, t, c_crossattn=ctx)


def clip_out(c):
    return c.encode_from_tokens(c.tokenize("a photo of a cat"), return_pooled=True)


def compare_patches(ours, theirs):
    """LoRAs and weight hooks on the node's models (whose UNet and VAE are
    in a shared copy, mapped read-only: an in-place write anywhere would
    kill this process with SIGSEGV) give ComfyUI's own results bit for
    bit, and unpatching gives the unpatched results back."""
    import comfy.hooks
    from comfy_extras.nodes.nodes_hooks import SetClipHooks
    (m1, c1, _), (m2, c2, _) = ours, theirs
    vm = m1.model._vramd
    shared = [t.name for t in vm.model.tensors if vm.loaded.shared(t.index)]
    assert shared, "the node's load shared nothing: %s" % vm.stats.share_text()
    g = torch.Generator().manual_seed(3)
    x = torch.randn((1, 4, 16, 16), generator=g)
    ctx = torch.randn((1, 77, 768), generator=g)
    t = torch.tensor([400.0])
    base1, base2 = unet_out(m1, x, t, ctx), unet_out(m2, x, t, ctx)
    lora = make_lora(m2, c2)
    # LoRA (LoraLoader's path): patched copies, originals restored by reference
    (l1, lc1), (l2, lc2) = (comfy.sd.load_lora_for_models(m, c, lora, 0.8, 0.7) for m, c in ((m1, c1), (m2, c2)))
    o1, o2 = unet_out(l1, x, t, ctx), unet_out(l2, x, t, ctx)
    assert torch.equal(o1, o2) and not torch.equal(o1, base1), ("lora unet", (o1 - o2).abs().max())
    e1, e2 = clip_out(lc1), clip_out(lc2)
    assert torch.equal(e1[0], e2[0]) and torch.equal(e1[1], e2[1]), "lora clip"
    for p in (l1, l2, lc1.patcher, lc2.patcher):
        p.unpatch_model()
    assert torch.equal(unet_out(m1, x, t, ctx), base1), "unet after the LoRA was taken off"
    # weight hooks (written in place with copy_to_param): applied, undone,
    # applied again from ComfyUI's cache of patched weights (MaxSpeed).
    # (This ComfyUI drops the backups of cached keys in unpatch_hooks, so
    # the second application stays: compared, not undone.)
    hooks = comfy.hooks.create_hook_lora(lora, 0.8, 0.7)
    target = comfy.hooks.create_target_dict(comfy.hooks.EnumWeightTarget.Model)
    outs = []
    for m in (m1, m2):
        h = m.clone()
        h.hook_mode = comfy.hooks.EnumHookMode.MaxSpeed
        h.register_all_hook_patches(hooks, target)
        mm.load_models_gpu([h])
        got = []
        h.patch_hooks(hooks)
        got.append(h.model.apply_model(x, t, c_crossattn=ctx))
        h.patch_hooks(None)
        got.append(h.model.apply_model(x, t, c_crossattn=ctx))
        if m is m1:
            assert not vm.written, "restored hook weights still marked written: %s" % sorted(vm.written)[:3]
        h.patch_hooks(hooks)
        got.append(h.model.apply_model(x, t, c_crossattn=ctx))
        outs.append(got)
    for a, b in zip(*outs):
        assert torch.equal(a, b), ("hooked unet", (a - b).abs().max())
    assert not torch.equal(outs[0][0], base1) and torch.equal(outs[0][1], base1), "hooks not applied or not undone"
    assert vm.written and not any(vm.loaded.shared(vm.model.tensor(n).index) for n in vm.written), vm.written
    h1, h2 = (SetClipHooks().apply_hooks(c, False, False, hooks)[0] for c in (c1, c2))
    e1, e2 = clip_out(h1), clip_out(h2)
    assert torch.equal(e1[0], e2[0]) and torch.equal(e1[1], e2[1]), "hooked clip"
    private = [n for n in shared if not vm.loaded.shared(vm.model.tensor(n).index)]
    return len(lora) // 2, len(private)


def main():
    ckdir = os.path.join(a.dir, "checkpoints")
    os.makedirs(ckdir, exist_ok=True)
    path = os.path.join(ckdir, "tiny-sd15.safetensors")
    if not os.path.exists(path):
        comfy_checkpoints.tiny(path)
    folder_paths.add_model_folder_path("checkpoints", ckdir)
    pack = harness.import_pack()
    theirs = comfy_load("tiny-sd15.safetensors")
    ours = vramd_load(pack, path)
    n = compare(ours, theirs)
    vm = ours[0].model._vramd
    donors = sum(1 for m in ours[0].model.diffusion_model.modules()
                 if getattr(m, "comfy_cast_weights", False) or id(m) in vm._paged)
    how = "served by the vramd pager (VRAMD_PAGER=1)" if vm._paged else "comfy_cast_weights"
    print("compared %d tensors, %d donor modules (%s), %d bytes from the file"
          % (n, donors, how, vm.model.data_size))
    assert donors > 0, "the plan put no layer on the donor"
    npatched, nprivate = compare_patches(ours, theirs)
    print("LoRA and weight hooks on %d weights equal ComfyUI's; %d shared tensors made private for "
          "in-place hook writes; %s" % (npatched, nprivate, vm.stats.share_text()))
    print("OK")


main()
