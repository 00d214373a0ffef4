#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes a synthetic checkpoint with SDXL's (or Flux's) key layout and size mix.

  make_checkpoint.py --out PATH --size BYTES [--arch sdxl|flux] [--tensors N]
                     [--seed S] [--dtype F16] [--verify] [--sparse]

Keys and shapes follow a real SDXL checkpoint (UNet model.diffusion_model.*,
CLIP-L conditioner.embedders.0.*, CLIP-G conditioner.embedders.1.*, VAE
first_stage_model.*), or with --arch flux an all-in-one Flux-dev checkpoint
as ComfyUI saves one (the Flux transformer model.diffusion_model.*: 19
double and 38 single blocks; text_encoders.clip_l.* and
text_encoders.t5xxl.*; vae.*); shapes are scaled so that the data is about
BYTES minus the header, split unet ~75%, clip ~20%, vae ~5% (Flux: ~70%,
~29%, ~1%).  --tensors trims the key set evenly or extends it with more
UNet transformer blocks (Flux: single blocks).  The data
is random bytes (seeded) written in chunks, so a multi-GiB file never sits
in memory.  The header is padded with spaces to 8-byte alignment as the
reference writer does.  --verify opens the result with the reference
implementation and checks its keys and shapes.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

ELSIZE = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "U8": 1, "I8": 1}
SHARES = {"sdxl": {"unet": 0.75, "clip": 0.20, "vae": 0.05},
          "flux": {"unet": 0.70, "clip": 0.29, "vae": 0.01}}
SHARE = SHARES["sdxl"]
CHUNK = 8 << 20


class Keys:
    def __init__(self):
        self.t = []  # (name, shape, kind) kind: "f" scaled float, "fixed" float, "i64"

    def add(self, name, shape, kind="f"):
        self.t.append((name, list(shape), kind))

    def wb(self, name, out, inp=None, k=None):
        """Linear (inp given), conv (k given) or norm (neither): weight + bias."""
        if k is not None:
            self.add(name + ".weight", [out, inp, k, k])
        elif inp is not None:
            self.add(name + ".weight", [out, inp])
        else:
            self.add(name + ".weight", [out])
        self.add(name + ".bias", [out])


def unet_res(k, p, cin, cout):
    k.wb(p + "in_layers.0", cin)
    k.wb(p + "in_layers.2", cout, cin, 3)
    k.wb(p + "emb_layers.1", cout, 1280)
    k.wb(p + "out_layers.0", cout)
    k.wb(p + "out_layers.3", cout, cout, 3)
    if cin != cout:
        k.wb(p + "skip_connection", cout, cin, 1)


def unet_tblock(k, p, ch):
    for a in ("attn1", "attn2"):
        ctx = ch if a == "attn1" else 2048
        k.add(p + a + ".to_q.weight", [ch, ch])
        k.add(p + a + ".to_k.weight", [ch, ctx])
        k.add(p + a + ".to_v.weight", [ch, ctx])
        k.wb(p + a + ".to_out.0", ch, ch)
    k.wb(p + "ff.net.0.proj", ch * 8, ch)
    k.wb(p + "ff.net.2", ch, ch * 4)
    for n in ("norm1", "norm2", "norm3"):
        k.wb(p + n, ch)


def unet_transformer(k, p, ch, depth, first=0):
    k.wb(p + "norm", ch)
    k.wb(p + "proj_in", ch, ch)
    for i in range(first, first + depth):
        unet_tblock(k, p + "transformer_blocks.%d." % i, ch)
    k.wb(p + "proj_out", ch, ch)


def sdxl_unet(k):
    u = "model.diffusion_model."
    k.wb(u + "time_embed.0", 1280, 320)
    k.wb(u + "time_embed.2", 1280, 1280)
    k.wb(u + "label_emb.0.0", 1280, 2816)
    k.wb(u + "label_emb.0.2", 1280, 1280)
    k.wb(u + "input_blocks.0.0", 320, 4, 3)
    ib = [(1, 320, 320, 0), (2, 320, 320, 0), (4, 320, 640, 2), (5, 640, 640, 2),
          (7, 640, 1280, 10), (8, 1280, 1280, 10)]
    for b, cin, cout, depth in ib:
        unet_res(k, u + "input_blocks.%d.0." % b, cin, cout)
        if depth:
            unet_transformer(k, u + "input_blocks.%d.1." % b, cout, depth)
    for b, ch in ((3, 320), (6, 640)):
        k.wb(u + "input_blocks.%d.0.op" % b, ch, ch, 3)
    unet_res(k, u + "middle_block.0.", 1280, 1280)
    unet_transformer(k, u + "middle_block.1.", 1280, 10)
    unet_res(k, u + "middle_block.2.", 1280, 1280)
    ob = [(0, 2560, 1280, 10), (1, 2560, 1280, 10), (2, 1920, 1280, 10), (3, 1920, 640, 2),
          (4, 1280, 640, 2), (5, 960, 640, 2), (6, 960, 320, 0), (7, 640, 320, 0), (8, 640, 320, 0)]
    for b, cin, cout, depth in ob:
        unet_res(k, u + "output_blocks.%d.0." % b, cin, cout)
        if depth:
            unet_transformer(k, u + "output_blocks.%d.1." % b, cout, depth)
    k.wb(u + "output_blocks.2.2.conv", 1280, 1280, 3)
    k.wb(u + "output_blocks.5.2.conv", 640, 640, 3)
    k.wb(u + "out.0", 320)
    k.wb(u + "out.2", 4, 320, 3)


def sdxl_clip(k):
    c = "conditioner.embedders.0.transformer.text_model."
    k.add(c + "embeddings.token_embedding.weight", [49408, 768])
    k.add(c + "embeddings.position_embedding.weight", [77, 768])
    k.add(c + "embeddings.position_ids", [1, 77], "i64")
    for i in range(12):
        p = c + "encoder.layers.%d." % i
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            k.wb(p + "self_attn." + n, 768, 768)
        k.wb(p + "layer_norm1", 768)
        k.wb(p + "layer_norm2", 768)
        k.wb(p + "mlp.fc1", 3072, 768)
        k.wb(p + "mlp.fc2", 768, 3072)
    k.wb(c + "final_layer_norm", 768)
    g = "conditioner.embedders.1.model."
    k.add(g + "positional_embedding", [77, 1280])
    k.add(g + "text_projection", [1280, 1280])
    k.add(g + "logit_scale", [], "fixed")
    k.add(g + "token_embedding.weight", [49408, 1280])
    k.wb(g + "ln_final", 1280)
    for i in range(32):
        p = g + "transformer.resblocks.%d." % i
        k.wb(p + "ln_1", 1280)
        k.add(p + "attn.in_proj_weight", [3840, 1280])
        k.add(p + "attn.in_proj_bias", [3840])
        k.wb(p + "attn.out_proj", 1280, 1280)
        k.wb(p + "ln_2", 1280)
        k.wb(p + "mlp.c_fc", 5120, 1280)
        k.wb(p + "mlp.c_proj", 1280, 5120)


def vae_res(k, p, cin, cout):
    k.wb(p + "norm1", cin)
    k.wb(p + "conv1", cout, cin, 3)
    k.wb(p + "norm2", cout)
    k.wb(p + "conv2", cout, cout, 3)
    if cin != cout:
        k.wb(p + "nin_shortcut", cout, cin, 1)


def vae_mid(k, p):
    vae_res(k, p + "mid.block_1.", 512, 512)
    k.wb(p + "mid.attn_1.norm", 512)
    for n in ("q", "k", "v", "proj_out"):
        k.wb(p + "mid.attn_1." + n, 512, 512, 1)
    vae_res(k, p + "mid.block_2.", 512, 512)


def flux_double(k, p, h=3072):
    for s in ("img", "txt"):
        k.wb(p + s + "_mod.lin", 6 * h, h)
        k.wb(p + s + "_attn.qkv", 3 * h, h)
        k.add(p + s + "_attn.norm.query_norm.scale", [128])
        k.add(p + s + "_attn.norm.key_norm.scale", [128])
        k.wb(p + s + "_attn.proj", h, h)
        k.wb(p + s + "_mlp.0", 4 * h, h)
        k.wb(p + s + "_mlp.2", h, 4 * h)


def flux_single(k, p, h=3072):
    k.wb(p + "linear1", 7 * h, h)
    k.wb(p + "linear2", h, 5 * h)
    k.add(p + "norm.query_norm.scale", [128])
    k.add(p + "norm.key_norm.scale", [128])
    k.wb(p + "modulation.lin", 3 * h, h)


def flux_model(k):
    u = "model.diffusion_model."
    k.wb(u + "img_in", 3072, 64)
    for e, i in (("time_in", 256), ("vector_in", 768), ("guidance_in", 256)):
        k.wb(u + e + ".in_layer", 3072, i)
        k.wb(u + e + ".out_layer", 3072, 3072)
    k.wb(u + "txt_in", 3072, 4096)
    for i in range(19):
        flux_double(k, u + "double_blocks.%d." % i)
    for i in range(38):
        flux_single(k, u + "single_blocks.%d." % i)
    k.wb(u + "final_layer.linear", 64, 3072)
    k.wb(u + "final_layer.adaLN_modulation.1", 6144, 3072)


def clip_l(k, c, proj=None):
    k.add(c + "embeddings.token_embedding.weight", [49408, 768])
    k.add(c + "embeddings.position_embedding.weight", [77, 768])
    for i in range(12):
        p = c + "encoder.layers.%d." % i
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            k.wb(p + "self_attn." + n, 768, 768)
        k.wb(p + "layer_norm1", 768)
        k.wb(p + "layer_norm2", 768)
        k.wb(p + "mlp.fc1", 3072, 768)
        k.wb(p + "mlp.fc2", 768, 3072)
    k.wb(c + "final_layer_norm", 768)
    if proj:
        k.add(proj, [768, 768])


def flux_clip(k):
    clip_l(k, "text_encoders.clip_l.transformer.text_model.", "text_encoders.clip_l.transformer.text_projection.weight")
    t = "text_encoders.t5xxl.transformer."
    for i in range(24):
        p = t + "encoder.block.%d.layer." % i
        for n in ("q", "k", "v", "o"):
            k.add(p + "0.SelfAttention.%s.weight" % n, [4096, 4096])
        if i == 0:
            k.add(p + "0.SelfAttention.relative_attention_bias.weight", [32, 64])
        k.add(p + "0.layer_norm.weight", [4096])
        k.add(p + "1.DenseReluDense.wi_0.weight", [10240, 4096])
        k.add(p + "1.DenseReluDense.wi_1.weight", [10240, 4096])
        k.add(p + "1.DenseReluDense.wo.weight", [4096, 10240])
        k.add(p + "1.layer_norm.weight", [4096])
    k.add(t + "encoder.final_layer_norm.weight", [4096])
    k.add(t + "shared.weight", [32128, 4096])


def sdxl_vae(k, v="first_stage_model."):
    ch = [128, 256, 512, 512]
    e = v + "encoder."
    k.wb(e + "conv_in", 128, 3, 3)
    cin = 128
    for i, c in enumerate(ch):
        for b in range(2):
            vae_res(k, e + "down.%d.block.%d." % (i, b), cin, c)
            cin = c
        if i < 3:
            k.wb(e + "down.%d.downsample.conv" % i, c, c, 3)
    vae_mid(k, e)
    k.wb(e + "norm_out", 512)
    k.wb(e + "conv_out", 8, 512, 3)
    k.wb(v + "quant_conv", 8, 8, 1)
    k.wb(v + "post_quant_conv", 4, 4, 1)
    d = v + "decoder."
    k.wb(d + "conv_in", 512, 4, 3)
    vae_mid(k, d)
    cin = 512
    for i in reversed(range(4)):
        c = ch[i]
        for b in range(3):
            vae_res(k, d + "up.%d.block.%d." % (i, b), cin, c)
            cin = c
        if i > 0:
            k.wb(d + "up.%d.upsample.conv" % i, c, c, 3)
    k.wb(d + "norm_out", 128)
    k.wb(d + "conv_out", 3, 128, 3)


def component(name):
    if name.startswith("model.diffusion_model."):
        return "unet"
    if name.startswith("first_stage_model.") or name.startswith("vae."):
        return "vae"
    return "clip"


def key_set(ntensors, arch="sdxl"):
    k = Keys()
    if arch == "flux":
        flux_model(k)
        flux_clip(k)
        sdxl_vae(k, "vae.")
    else:
        sdxl_unet(k)
        sdxl_clip(k)
        sdxl_vae(k)
    t = k.t
    if ntensors is None or ntensors == len(t):
        return t
    if ntensors < len(t):
        # Evenly spaced, so every component keeps its share of keys.
        idx = sorted({int(i * len(t) / ntensors) for i in range(ntensors)})
        return [t[i] for i in idx]
    extra = Keys()
    i = 10 if arch == "sdxl" else 38
    while len(t) + len(extra.t) < ntensors:
        if arch == "flux":
            flux_single(extra, "model.diffusion_model.single_blocks.%d." % i)
        else:
            unet_tblock(extra, "model.diffusion_model.middle_block.1.transformer_blocks.%d." % i, 1280)
        i += 1
    return t + extra.t[:ntensors - len(t)]


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def scale(shape, s):
    """shape with about s times the elements: the first dimension scaled
    (rows of a [rows, 1280] weight), the next ones too once it is down to 1."""
    if not shape:
        return shape
    if s >= 1:
        return [max(1, int(round(shape[0] * s)))] + shape[1:]
    target = max(1.0, numel(shape) * s)
    out = []
    for i in range(len(shape)):
        rest = numel(shape[i + 1:])
        # Rounding a small dimension loses up to a third of the bytes
        # (1.44 -> 1): make it 1 and shrink the next one instead.
        if target / rest >= 8 or i == len(shape) - 1:
            return out + [max(1, int(round(target / rest)))] + shape[i + 1:]
        out.append(1)
    return out


def plan(keys, dtype, data_bytes):
    """Scaled shapes: [(name, dtype, shape, nbytes)]."""
    es = ELSIZE[dtype]
    natural = {c: 0 for c in SHARE}
    fixed = 0
    for name, shape, kind in keys:
        if kind == "f":
            natural[component(name)] += numel(shape) * es
        else:
            fixed += numel(shape) * (8 if kind == "i64" else es)
    present = {c: SHARE[c] for c in SHARE if natural[c]}
    total_share = sum(present.values())
    avail = max(0, data_bytes - fixed)
    factor = {c: avail * present[c] / total_share / natural[c] for c in present}
    out = []
    for name, shape, kind in keys:
        if kind == "f":
            shape = scale(shape, factor[component(name)])
        dt = "I64" if kind == "i64" else dtype
        out.append([name, dt, shape, numel(shape) * ELSIZE.get(dt, 8)])
    # Put the rounding residual into the biggest tensor's first dimension.
    big = max(range(len(out)), key=lambda i: out[i][3])
    name, dt, shape, nb = out[big]
    if shape:
        inner = numel(shape[1:]) * ELSIZE[dt]
        have = sum(t[3] for t in out)
        shape[0] = max(1, shape[0] + (data_bytes - have) // inner)
        out[big][3] = numel(shape) * ELSIZE[dt]
    return out


def header_bytes(tensors, meta):
    h = {"__metadata__": meta}
    off = 0
    for name, dt, shape, nb in tensors:
        h[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + nb]}
        off += nb
    hb = json.dumps(h, separators=(",", ":")).encode()
    return hb + b" " * (-len(hb) % 8)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", required=True, type=int, help="approximate file size in bytes")
    ap.add_argument("--arch", default="sdxl", choices=sorted(SHARES), help="key layout (default sdxl)")
    ap.add_argument("--tensors", type=int, default=None, help="number of tensors (default: the layout's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="F16", choices=sorted(ELSIZE))
    ap.add_argument("--verify", action="store_true", help="open the result with the reference")
    ap.add_argument("--sparse", action="store_true",
                    help="leave the data a hole (zeros): for tests that read only the header")
    a = ap.parse_args()
    if a.tensors is not None and a.tensors < 1:
        ap.error("--tensors must be at least 1")

    global SHARE
    SHARE = SHARES[a.arch]
    keys = key_set(a.tensors, a.arch)
    meta = {"format": "pt", "generator": "vramd tests/make_checkpoint.py", "seed": str(a.seed),
            "modelspec.architecture": "flux-1-dev" if a.arch == "flux" else "stable-diffusion-xl-v1-base"}
    # Two passes: the header's length depends on the shapes it describes.
    est = len(header_bytes(plan(keys, a.dtype, a.size), meta))
    tensors = plan(keys, a.dtype, max(0, a.size - 8 - est))
    # The reference writer orders data by dtype (widest first), then name.
    tensors.sort(key=lambda t: (-ELSIZE.get(t[1], 8), t[0]))
    hb = header_bytes(tensors, meta)
    data = sum(t[3] for t in tensors)

    rng = np.random.default_rng(a.seed)
    tmp = a.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        left = 0 if a.sparse else data
        while left:
            n = min(CHUNK, left)
            f.write(rng.bytes(n))
            left -= n
        if a.sparse:
            f.truncate(8 + len(hb) + data)
    os.replace(tmp, a.out)

    by = {c: 0 for c in SHARE}
    for name, dt, shape, nb in tensors:
        by[component(name)] += nb
    size = 8 + len(hb) + data
    print("%s: %d bytes, %d tensors, header %d bytes; unet %.1f%%, clip %.1f%%, vae %.1f%%"
          % (a.out, size, len(tensors), len(hb),
             *(100.0 * by[c] / max(1, data) for c in ("unet", "clip", "vae"))))

    if a.verify:
        from safetensors import safe_open
        with safe_open(a.out, framework="numpy") as f:
            keys_ref = set(f.keys())
            if keys_ref != {t[0] for t in tensors}:
                print("verify: key sets differ", file=sys.stderr)
                return 1
            for name, dt, shape, nb in tensors[:: max(1, len(tensors) // 50)]:
                if list(f.get_slice(name).get_shape()) != shape:
                    print("verify: %s: shape differs" % name, file=sys.stderr)
                    return 1
        print("verify: the reference implementation loads it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
