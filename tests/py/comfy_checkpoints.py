# SPDX-License-Identifier: MIT
"""Checkpoints ComfyUI detects, for comfy_compare.py and comfy_bench.py
(run in a ComfyUI checkout's Python, after ComfyUI is imported), or:

    comfy_checkpoints.py --comfyui DIR --kind tiny|sd15|sdxl --out PATH

    tiny(path)          SD1.5-shaped, UNet at SD1.5's widths but one level,
                        full CLIP-L and VAE; seeded random values (465 MB)
    full(path, kind)    "sd15" (2.1 GB) or "sdxl" (6.9 GB): every key and
                        shape of a real checkpoint of that kind, fp16, the
                        file's keys as ComfyUI itself saves them; the values
                        are one seeded block of small normal values repeated
                        (loading does not look at them), written in chunks

Names and shapes come from ComfyUI's own modules built on the meta device.
"""
import json
import struct

import torch

# ComfyUI's UNet configs of the two (model_detection.py lists the same).
UNET = {
    "sd15": dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2],
                 transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], channel_mult=[1, 2, 4, 4],
                 transformer_depth_middle=1, use_linear_in_transformer=False, context_dim=768, num_heads=8,
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], use_spatial_transformer=True,
                 legacy=False, adm_in_channels=None, use_temporal_attention=False, use_temporal_resblock=False),
    "sdxl": dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2],
                 transformer_depth=[0, 0, 2, 2, 10, 10], channel_mult=[1, 2, 4], transformer_depth_middle=10,
                 use_linear_in_transformer=True, context_dim=2048, num_head_channels=64,
                 transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], use_spatial_transformer=True,
                 legacy=False, num_classes="sequential", adm_in_channels=2816, use_temporal_attention=False,
                 use_temporal_resblock=False),
}
VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
       "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def _vae():
    from comfy.ldm.models.autoencoder import AutoencoderKL
    with torch.device("meta"):
        return AutoencoderKL(ddconfig=VAE, embed_dim=4)


def tiny(path):
    """The small SD1.5-shaped checkpoint of the comparison test: the UNet
    at SD1.5's widths (320 channels, context 768) but one level, one res
    block, one transformer block; CLIP-L and the VAE at full size (ComfyUI
    builds those from fixed configs); fp16, random, seeded."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfy import sd1_clip
    from safetensors.torch import save_file
    import comfy.ops
    ops = comfy.ops.disable_weight_init
    unet = UNetModel(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[1],
                     channel_mult=[1], num_heads=8, transformer_depth=[1], transformer_depth_output=[1, 1],
                     transformer_depth_middle=1, context_dim=768, use_spatial_transformer=True,
                     use_linear_in_transformer=False, device="meta", operations=ops, dtype=torch.float16)
    clip = sd1_clip.SDClipModel(device="meta", dtype=torch.float16)
    vae = _vae()
    g = torch.Generator().manual_seed(7)
    out = {}
    for prefix, mod in (("model.diffusion_model.", unet), ("cond_stage_model.", clip),
                        ("first_stage_model.", vae)):
        for k, v in mod.state_dict().items():
            if not v.is_floating_point() and "position_ids" not in k:
                continue
            name = prefix + k
            if "position_ids" in k:
                out[name] = torch.arange(v.shape[-1], dtype=torch.int64).reshape(v.shape)
            elif k.endswith("norm.weight") or ".norm" in k and k.endswith(".weight") or "layer_norm" in k and k.endswith("weight"):
                out[name] = (1 + 0.05 * torch.randn(v.shape, generator=g)).to(torch.float16)
            else:
                fan = max(1, v[0].numel()) if v.dim() > 1 else 16
                out[name] = (torch.randn(v.shape, generator=g) / fan ** 0.5).to(torch.float16)
    out.pop("cond_stage_model.logit_scale", None)
    # SD1.5 files lack it; both loaders leave it as the module made it
    out.pop("cond_stage_model.transformer.text_projection.weight", None)
    save_file(out, path)
    return path


def full_keys(kind):
    """{name: (dtype, shape)} of a full checkpoint of kind ("sd15", "sdxl"),
    as ComfyUI saves one (state_dict_for_saving)."""
    import comfy.supported_models as sm
    from comfy import sd1_clip, sdxl_clip
    cfg = dict(UNET[kind], dtype=torch.float16)
    config = {"sd15": sm.SD15, "sdxl": sm.SDXL}[kind](cfg)
    base = config.get_model({}, "model.diffusion_model.", device="meta")
    clip_cls = {"sd15": sd1_clip.SD1ClipModel, "sdxl": sdxl_clip.SDXLClipModel}[kind]
    clip = clip_cls(device="meta", dtype=torch.float16, model_options={})
    sd = base.state_dict_for_saving(base.diffusion_model.state_dict(), clip.state_dict(), _vae().state_dict())
    out = {}
    for k, v in sd.items():
        if k.endswith("logit_scale") or (kind == "sd15" and k.endswith("text_projection.weight")):
            continue  # SD files lack them
        out[k] = ("I64" if "position_ids" in k else "F16", tuple(v.shape))
    return out


def full(path, kind, block_mb=32):
    """Writes a full checkpoint of kind at path (fp16, header as the
    reference writer pads it); returns its size."""
    keys = full_keys(kind)
    g = torch.Generator().manual_seed(9)
    block = (torch.randn(block_mb << 19, generator=g) * 0.02).to(torch.float16).numpy().tobytes()
    header, off = {}, 0
    for k, (dt, shape) in keys.items():
        n = 1
        for s in shape:
            n *= s
        nb = n * (8 if dt == "I64" else 2)
        header[k] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + nb]}
        off += nb
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    pos = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for k, (dt, shape) in keys.items():
            a, b = header[k]["data_offsets"]
            if dt == "I64":
                f.write(torch.arange(shape[-1], dtype=torch.int64).repeat(max(1, (b - a) // 8 // shape[-1]))
                        .numpy().tobytes())
                continue
            left = b - a
            while left:
                i = pos % len(block)
                n = min(left, len(block) - i)
                f.write(block[i:i + n])
                pos += n
                left -= n
    return 8 + len(h) + off


if __name__ == "__main__":
    import argparse
    import os
    import sys
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfyui", required=True)
    ap.add_argument("--kind", choices=("tiny", "sd15", "sdxl"), required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    sys.argv = [sys.argv[0], "--cpu", "--disable-known-models"]
    sys.path.insert(0, args.comfyui)
    import comfy.model_management  # noqa: F401 - ComfyUI's setup first
    tmp = args.out + ".part"
    tiny(tmp) if args.kind == "tiny" else full(tmp, args.kind)
    os.rename(tmp, args.out)
