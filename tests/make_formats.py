#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes a Flux-shaped GGUF (Q8_0 and Q4_K blocks, no key prefixes, a
non-commercial licence in its metadata) and, when torch is there, an
SD-style PyTorch checkpoint ({"state_dict": ...} with tensors that share
storages), for the loader's tests and the demo.

Usage: make_formats.py OUT.gguf [OUT.ckpt]   (exit 3: no torch for the .ckpt)
"""
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_gguf  # noqa: E402
from gguf import GGMLQuantizationType as Q, GGUFValueType as V  # noqa: E402


def main():
    t = [("img_in.weight", Q.BF16, [256, 64])]
    for i in range(8):
        for part in ("img_attn.qkv", "img_mlp.0", "txt_mlp.2"):
            t.append((f"double_blocks.{i}.{part}.weight", Q.Q4_K if i % 2 else Q.Q8_0, [256, 512]))
            t.append((f"double_blocks.{i}.{part}.bias", Q.F32, [256]))
    gen_gguf.write(sys.argv[1], "flux", t, {
        "general.file_type": (V.UINT32, 15), "general.name": (V.STRING, "flux-like test"),
        "general.license": (V.STRING, "flux-1-dev-non-commercial-license")})
    if len(sys.argv) < 3:
        return
    try:
        import torch
    except ImportError:
        sys.exit(3)
    torch.manual_seed(5)
    sd = collections.OrderedDict()
    for i in range(6):
        sd[f"model.diffusion_model.input_blocks.{i}.0.weight"] = torch.randn(128, 128).half()
        base = torch.randn(4096)
        sd[f"model.diffusion_model.input_blocks.{i}.1.base"] = base
        sd[f"model.diffusion_model.input_blocks.{i}.1.view"] = base[100:1100]
        sd[f"model.diffusion_model.input_blocks.{i}.1.same"] = base.view(64, 64)
    sd["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] = torch.randn(1000, 64)
    sd["first_stage_model.decoder.conv_in.weight"] = torch.randn(64, 4, 3, 3)
    torch.save({"state_dict": sd, "epoch": 1, "global_step": 7}, sys.argv[2])


if __name__ == "__main__":
    main()
