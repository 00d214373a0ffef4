#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes the safetensors fixtures of tests/test-safetensors.c into DIR.

  gen_fixtures.py DIR

DIR/invalid/NAME.safetensors  hand-crafted bytes, one rejection rule each
DIR/valid/NAME.safetensors    edge cases that must load (reference writer
                              where it can express them, bytes otherwise)
DIR/random/K.safetensors      random valid files written by the reference
DIR/random/K.txt              the reference's view of K: one line per tensor,
                              "name<TAB>dtype<TAB>d0,d1,..<TAB>begin<TAB>end"
DIR/names/MODEL.safetensors   SDXL-, SD1.5-, SD3- and Flux-like key sets

Every file is also opened with the reference implementation (safetensors
safe_open).  Valid files must load there; invalid ones must fail there,
except the documented deviations (ref="accept" below).  A disagreement is
printed and the script exits 1, so the C test fails at fixture generation.
"""
import json
import os
import random
import struct
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file


def raw(header, data=b"", n=None):
    """u64 N + header bytes + data; n overrides the length field."""
    hb = header if isinstance(header, bytes) else header.encode("utf-8")
    return struct.pack("<Q", len(hb) if n is None else n) + hb + data


def ent(dtype, shape, begin, end, extra=""):
    return ('{"dtype":"%s","shape":%s,"data_offsets":[%s,%s]%s}'
            % (dtype, shape, begin, end, extra))


def one(name, e, data=b""):
    """A header holding tensor name (JSON-escaped by the caller) = e."""
    return raw('{"%s":%s}' % (name, e), data)


T0 = ent("U8", "[0]", 0, 0)          # a zero-length tensor

# name -> (bytes, reference verdict): "reject", or "accept" for the
# deviations that docs/safetensors.md lists.
INVALID = {
    # file and header length
    "short": (b"\x02\x00\x00\x00\x00", "reject"),
    "n_zero": (raw(b""), "reject"),
    "n_too_large": (raw(b"{}", n=100_000_001), "reject"),
    "n_past_eof": (raw(b"{}" + b" " * 40, n=100), "reject"),
    # encoding and JSON shape
    "bom": (raw(b"\xef\xbb\xbf{}"), "reject"),
    "utf8_invalid": (raw(b'{"\xff":' + T0.encode() + b"}"), "reject"),
    "utf8_overlong": (raw(b'{"\xc0\x80":' + T0.encode() + b"}"), "reject"),
    "utf8_surrogate": (raw(b'{"\xed\xa0\x80":' + T0.encode() + b"}"), "reject"),
    "utf8_truncated": (raw(b'{"a":' + T0.encode() + b'}\xe2\x82'), "reject"),
    "ws_only": (raw("   \n"), "reject"),
    "top_array": (raw("[]"), "reject"),
    "top_string": (raw('"{}"'), "reject"),
    "top_number": (raw("12"), "reject"),
    "top_null": (raw("null"), "reject"),
    "top_garbage": (raw("x{}"), "reject"),
    "nul_padding": (raw(b"{}\x00\x00\x00\x00\x00\x00"), "reject"),
    "nul_padding_ws": (raw(b"{} \x00 "), "reject"),
    "trailing_junk": (raw("{} x"), "reject"),
    "trailing_object": (raw("{}{}"), "reject"),
    "trailing_formfeed": (raw("{}\f"), "reject"),
    "comment": (raw('{/* c */"a":%s}' % T0), "reject"),
    "nan": (raw('{"a":%s}' % ent("U8", "[NaN]", 0, 0)), "reject"),
    "unterminated": (raw('{"a":'), "reject"),
    "control_char": (raw(b'{"a\x01":' + T0.encode() + b"}"), "reject"),
    "lone_surrogate": (raw('{"a\\ud800":%s}' % T0), "reject"),
    "too_deep": (raw('{"a":%s}' % ent("U8", "[0]", 0, 0, ',"x":' + "[" * 126 + "]" * 126)), "reject"),
    "real_overflow": (raw('{"a":%s}' % ent("U8", "[0]", 0, 0, ',"x":1e400')), "reject"),
    # A NUL byte anywhere (jansson used to drop one that ends a number or
    # a literal, reading "[1\0]" as "[1]").
    "nul_after_number": (one("t", ent("U8", "[1\0]", 0, 1), b"x"), "reject"),
    "nul_after_offset": (one("t", ent("U8", "[1]", 0, "1\0"), b"x"), "reject"),
    "nul_after_real": (one("t", ent("U8", "[1]", 0, 1, ',"x":1.5e3\0'), b"x"), "reject"),
    "nul_after_literal": (one("t", ent("U8", "[1]", 0, 1, ',"x":true\0'), b"x"), "reject"),
    "nul_after_negzero": (one("t", ent("U8", "[1]", 0, 1, ',"x":[-0\0]'), b"x"), "reject"),
    "nul_in_metadata": (raw('{"__metadata__":{"a":"b"\0}}'), "reject"),
    "nul_between": (raw('{"a":%s,\0"b":%s}' % (T0, T0)), "reject"),
    "nul_in_string": (one("t", ent("U8\0", "[0]", 0, 0)), "reject"),
    # __metadata__
    "meta_array": (raw('{"__metadata__":[]}'), "reject"),
    "meta_string": (raw('{"__metadata__":"x"}'), "reject"),
    "meta_value_int": (raw('{"__metadata__":{"a":1}}'), "reject"),
    "meta_value_object": (raw('{"__metadata__":{"a":{"b":"c"}}}'), "reject"),
    "meta_value_null": (raw('{"__metadata__":{"a":null}}'), "reject"),
    "meta_twice": (raw('{"__metadata__":null,"__metadata__":{}}'), "reject"),
    "meta_dup_key": (raw('{"__metadata__":{"a":"b","a":"c"}}'), "accept"),
    "meta_nul_value": (raw('{"__metadata__":{"a":"b\\u0000"}}'), "accept"),
    "meta_nul_key": (raw('{"__metadata__":{"a\\u0000":"b"}}'), "accept"),
    # tensor entries
    "entry_null": (one("t", "null"), "reject"),
    "entry_array": (one("t", "[]"), "reject"),
    "entry_string": (one("t", '"U8"'), "reject"),
    "missing_dtype": (one("t", '{"shape":[0],"data_offsets":[0,0]}'), "reject"),
    "missing_shape": (one("t", '{"dtype":"U8","data_offsets":[0,0]}'), "reject"),
    "missing_offsets": (one("t", '{"dtype":"U8","shape":[0]}'), "reject"),
    "dtype_int": (one("t", ent("U8", "[0]", 0, 0).replace('"U8"', "8")), "reject"),
    "dtype_lower": (one("t", ent("f16", "[0]", 0, 0)), "reject"),
    "dtype_unknown": (one("t", ent("F8_E4M3FN", "[0]", 0, 0)), "reject"),
    "dtype_empty": (one("t", ent("", "[0]", 0, 0)), "reject"),
    "shape_null": (one("t", ent("U8", "null", 0, 0)), "reject"),
    "shape_object": (one("t", ent("U8", "{}", 0, 0)), "reject"),
    "shape_real": (one("t", ent("U8", "[1.0]", 0, 1), b"x"), "reject"),
    "shape_exp": (one("t", ent("U8", "[1e0]", 0, 1), b"x"), "reject"),
    "shape_string": (one("t", ent("U8", '["1"]', 0, 1), b"x"), "reject"),
    "shape_negative": (one("t", ent("U8", "[1,-2]", 0, 0)), "reject"),
    "shape_negzero": (one("t", ent("U8", "[-0]", 0, 0)), "reject"),
    "shape_nested": (one("t", ent("U8", "[[1]]", 0, 1), b"x"), "reject"),
    "shape_bool": (one("t", ent("U8", "[true]", 0, 1), b"x"), "reject"),
    "offsets_object": (one("t", '{"dtype":"U8","shape":[0],"data_offsets":{}}'), "reject"),
    "offsets_one": (one("t", '{"dtype":"U8","shape":[0],"data_offsets":[0]}'), "reject"),
    "offsets_three": (one("t", '{"dtype":"U8","shape":[0],"data_offsets":[0,0,0]}'), "reject"),
    "offsets_real": (one("t", ent("U8", "[4]", 0, "4.0"), b"xxxx"), "reject"),
    "offsets_negative": (one("t", ent("U8", "[0]", -1, 0)), "reject"),
    "offsets_negzero": (one("t", ent("U8", "[0]", "-0", 0)), "reject"),
    "offsets_string": (one("t", ent("U8", "[0]", '"0"', 0)), "reject"),
    "offsets_reversed": (one("t", ent("U8", "[0]", 4, 0), b"xxxx"), "reject"),
    "dup_field": (one("t", '{"dtype":"U8","dtype":"U8","shape":[0],"data_offsets":[0,0]}'), "reject"),
    "dup_tensor": (raw('{"t":%s,"t":%s}' % (T0, T0)), "accept"),
    "nul_name": (raw('{"a\\u0000":%s}' % T0), "accept"),
    "nul_extra_key": (one("t", ent("U8", "[0]", 0, 0, ',"\\u0000":1')), "accept"),
    "dup_in_extra": (one("t", ent("U8", "[0]", 0, 0, ',"x":{"k":1,"k":2}')), "accept"),
    "dup_extra_field": (one("t", ent("U8", "[0]", 0, 0, ',"x":1,"x":2')), "accept"),
    "dup_field_escaped": (one("t", '{"dtype":"U8","dt\\u0079pe":"U8","shape":[0],"data_offsets":[0,0]}'), "reject"),
    "meta_dup_escaped": (raw('{"__metadat\\u0061__":{"a":"b","a":"c"}}'), "accept"),
    "meta_twice_escaped": (raw('{"__metadata__":null,"__metadat\\u0061__":{}}'), "reject"),
    "bigint_shape": (one("t", ent("U8", "[0,9223372036854775808]", 0, 0)), "accept"),
    "bigint_extra": (one("t", ent("U8", "[0]", 0, 0, ',"x":18446744073709551615')), "accept"),
    # sizes
    "elem_overflow": (one("t", ent("U8", "[1099511627776,1099511627776,0]", 0, 0)), "reject"),
    "bits_overflow": (one("t", ent("U64", "[288230376151711744]", 0, 0)), "reject"),
    "f4_odd": (one("t", ent("F4", "[3]", 0, 2), b"xx"), "reject"),
    "f6_odd": (one("t", ent("F6_E3M2", "[3]", 0, 3), b"xxx"), "reject"),
    "size_mismatch": (one("x.weight", ent("F16", "[2,4]", 0, 12), b"x" * 12), "reject"),
    "scalar_mismatch": (one("s", ent("F32", "[]", 0, 8), b"x" * 8), "reject"),
    # tiling and file size
    "first_not_zero": (one("t", ent("U8", "[4]", 4, 8), b"x" * 8), "reject"),
    "gap": (raw('{"a":%s,"b":%s}' % (ent("U8", "[4]", 0, 4), ent("U8", "[4]", 8, 12))), "reject"),
    "overlap": (raw('{"a":%s,"b":%s}' % (ent("U8", "[8]", 0, 8), ent("U8", "[8]", 4, 12)), b"x" * 12), "reject"),
    "shared_range": (raw('{"a":%s,"b":%s}' % (ent("U8", "[4]", 0, 4), ent("U8", "[4]", 0, 4)), b"x" * 4), "reject"),
    "trailing_bytes": (one("t", ent("U8", "[4]", 0, 4), b"x" * 7), "reject"),
    "empty_trailing": (raw("{}", b"x"), "reject"),
    "truncated": (one("t", ent("U8", "[4]", 0, 4), b"x" * 3), "reject"),
}

# Valid edge cases written as bytes (the reference writer cannot express
# them); each must load with the reference too.
ALL_DTYPES = [  # name, elements giving whole bytes, bytes
    ("BOOL", 3, 3), ("F4", 2, 1), ("F6_E2M3", 4, 3), ("F6_E3M2", 8, 6),
    ("U8", 1, 1), ("I8", 2, 2), ("F8_E5M2", 1, 1), ("F8_E4M3", 3, 3),
    ("F8_E8M0", 1, 1), ("F8_E4M3FNUZ", 2, 2), ("F8_E5M2FNUZ", 1, 1),
    ("I16", 1, 2), ("U16", 2, 4), ("F16", 3, 6), ("BF16", 1, 2), ("I32", 1, 4),
    ("U32", 2, 8), ("F32", 1, 4), ("C64", 1, 8), ("F64", 2, 16), ("I64", 1, 8),
    ("U64", 1, 8),
]


def all_dtypes():
    h, off = {}, 0
    for i, (dt, n, nb) in enumerate(ALL_DTYPES):
        h["t%02d_%s" % (i, dt)] = {"dtype": dt, "shape": [n], "data_offsets": [off, off + nb]}
        off += nb
    return raw(json.dumps(h), bytes(range(off)))


VALID_RAW = {
    "empty": raw("{}"),
    "zero_share": raw('{"a":%s,"b":%s,"c":%s,"d":%s}' % (
        ent("U8", "[0]", 0, 0), ent("U8", "[2]", 0, 2), ent("F32", "[0,3]", 0, 0),
        ent("U8", "[0]", 2, 2)), b"xy"),
    "f4_pair": one("t", ent("F4", "[2]", 0, 1), b"\x12"),
    "f6_quad": one("t", ent("F6_E2M3", "[4]", 0, 3), b"abc"),
    "unaligned": one("t", ent("U8", "[3]", 0, 3), b"abc"),  # N is not a multiple of 8
    "whitespace": raw(" \t\r\n{\n \"t\" : %s \r\n}\t \n\r" % ent("U8", "[ 1 ]", 0, 1), b"z"),
    "meta_null": raw('{"__metadata__":null,"t":%s}' % ent("U8", "[1]", 0, 1), b"z"),
    "extra_fields": one("t", ent("U8", "[1]", 0, 1, ',"x":{"n":[1,-0,1e5,-3,"s",null]},"y":-0,"z":"a\\u0000b"'), b"z"),
    "deep_ok": raw('{"a":%s}' % ent("U8", "[0]", 0, 0, ',"x":' + "[" * 125 + "]" * 125)),
    "escaped_keys": raw('{"\\u00e9t\\u00e9":{"dt\\u0079pe":"U8","sh\\u0061pe":[1],"data_offsets":[0,1]},'
                        '"\u00fcber":%s}' % ent("U8", "[0]", 1, 1), b"z"),
    "big_zero_dim": one("t", ent("U8", "[0,9223372036854775807,9223372036854775807]", 0, 0)),
    "all_dtypes": all_dtypes(),
}
assert len(ALL_DTYPES) == 22


def ref_open(path):
    """Opens path with the reference; returns (ok, keys or error)."""
    try:
        with safe_open(path, framework="numpy") as f:
            return True, list(f.keys())
    except Exception as e:  # noqa: BLE001 - any failure is a rejection
        return False, str(e)


def header_of(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


def dump(path, out):
    """The reference's view: names/dtypes/shapes via safe_open, offsets
    from the header it accepted."""
    h = header_of(path)
    lines = []
    with safe_open(path, framework="numpy") as f:
        for k in sorted(f.keys()):
            sl = f.get_slice(k)
            b, e = h[k]["data_offsets"]
            lines.append("%s\t%s\t%s\t%d\t%d" % (k, sl.get_dtype(), ",".join(map(str, sl.get_shape())), b, e))
    with open(out, "w") as f:
        f.write("\n".join(lines) + ("\n" if lines else ""))


NP_DTYPES = [np.bool_, np.uint8, np.int8, np.int16, np.uint16, np.float16, np.int32,
             np.uint32, np.float32, np.float64, np.int64, np.uint64, np.complex64]


def random_file(rng, path):
    words = ["model", "diffusion_model", "input_blocks", "attn", "weight", "bias", "layers",
             "norm", "q_proj", "x", "embeddings", "token_embedding", "mlp", "fc1"]
    tensors = {}
    for _ in range(rng.randint(0, 40)):
        name = ".".join(rng.choice(words) if rng.random() < 0.7 else str(rng.randint(0, 30))
                        for _ in range(rng.randint(1, 6)))
        if rng.random() < 0.05:
            name += "\u00e9"
        ndim = rng.randint(0, 4)
        shape = [rng.randint(0, 5) for _ in range(ndim)]
        dt = rng.choice(NP_DTYPES)
        tensors[name] = (np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int64)
                         .astype(dt).reshape(shape))
    meta = {"k%d" % i: "v%d" % rng.randint(0, 99) for i in range(rng.randint(0, 3))} or None
    save_file(tensors, path, metadata=meta)


def key_set(model):
    """Tiny checkpoints with the key layout of real ones."""
    k = []
    if model == "sdxl":
        u = "model.diffusion_model."
        k += [u + "time_embed.0.weight", u + "time_embed.2.bias", u + "label_emb.0.0.weight",
              u + "input_blocks.0.0.weight"]
        for b in (1, 2, 4, 5, 7, 8, 10, 11):
            k += [u + "input_blocks.%d.0.in_layers.0.weight" % b,
                  u + "input_blocks.%d.0.emb_layers.1.bias" % b]
        k += [u + "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight",
              u + "input_blocks.4.1.proj_in.weight",
              u + "middle_block.1.transformer_blocks.9.ff.net.0.proj.weight",
              u + "middle_block.0.out_layers.3.weight",
              u + "output_blocks.2.1.conv.weight", u + "output_blocks.10.0.skip_connection.weight",
              u + "out.0.weight", u + "out.2.bias"]
        c0 = "conditioner.embedders.0.transformer.text_model."
        k += [c0 + "embeddings.token_embedding.weight", c0 + "embeddings.position_embedding.weight",
              c0 + "embeddings.position_ids", c0 + "final_layer_norm.weight"]
        k += [c0 + "encoder.layers.%d.mlp.fc1.weight" % i for i in (0, 1, 2, 10, 11)]
        c1 = "conditioner.embedders.1.model."
        k += [c1 + "token_embedding.weight", c1 + "positional_embedding", c1 + "text_projection",
              c1 + "logit_scale", c1 + "ln_final.weight"]
        k += [c1 + "transformer.resblocks.%d.attn.in_proj_weight" % i for i in (0, 7, 31)]
        k += [c1 + "transformer.resblocks.7.mlp.c_fc.bias"]
        v = "first_stage_model."
        k += [v + "encoder.down.0.block.1.conv1.weight", v + "encoder.mid.attn_1.q.weight",
              v + "decoder.up.3.upsample.conv.weight", v + "quant_conv.weight"]
        k += ["denoiser.sigmas"]
    elif model == "sd15":
        u = "model.diffusion_model."
        k += [u + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
              u + "input_blocks.11.0.in_layers.2.weight", u + "middle_block.2.in_layers.0.bias",
              u + "time_embed.0.weight"]
        c = "cond_stage_model.transformer.text_model."
        k += [c + "embeddings.token_embedding.weight", c + "embeddings.position_ids",
              c + "encoder.layers.5.mlp.fc1.weight", c + "encoder.layers.11.self_attn.k_proj.bias",
              c + "final_layer_norm.bias"]
        k += ["first_stage_model.decoder.conv_in.weight", "first_stage_model.post_quant_conv.bias"]
        k += ["alphas_cumprod", "model_ema.decay", "model_ema.num_updates"]
    elif model == "flux":
        u = "model.diffusion_model."
        k += [u + "img_in.weight", u + "double_blocks.3.img_attn.qkv.weight",
              u + "double_blocks.18.txt_mlp.0.weight", u + "single_blocks.37.linear1.weight",
              u + "final_layer.linear.weight"]
        k += ["text_encoders.clip_l.transformer.text_model.encoder.layers.3.mlp.fc2.weight",
              "text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight",
              "text_encoders.t5xxl.transformer.encoder.block.5.layer.1.DenseReluDense.wi_0.weight",
              "text_encoders.t5xxl.transformer.shared.weight"]
        k += ["vae.decoder.up.0.block.2.conv2.weight", "vae.encoder.conv_in.weight"]
    elif model == "sd3":
        k += ["model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight",
              "model.diffusion_model.x_embedder.proj.weight",
              "text_encoders.clip_g.transformer.text_model.encoder.layers.31.mlp.fc1.weight",
              "text_encoders.clip_g.transformer.text_projection.weight",
              "first_stage_model.encoder.down.1.downsample.conv.weight",
              "model.model.extra.weight", "net.blocks.2.weight", "vae.post.weight"]
    return k


def main():
    if len(sys.argv) != 2:
        print("usage: gen_fixtures.py DIR", file=sys.stderr)
        return 2
    top = sys.argv[1]
    for sub in ("invalid", "valid", "random", "names"):
        os.makedirs(os.path.join(top, sub), exist_ok=True)
    bad = []

    for name, (data, want) in INVALID.items():
        p = os.path.join(top, "invalid", name + ".safetensors")
        with open(p, "wb") as f:
            f.write(data)
        ok, why = ref_open(p)
        if ok != (want == "accept"):
            bad.append("invalid/%s: reference %s (%s), expected %s" % (name, "accepts" if ok else "rejects", why, want))

    for name, data in VALID_RAW.items():
        p = os.path.join(top, "valid", name + ".safetensors")
        with open(p, "wb") as f:
            f.write(data)
    # Valid files from the reference writer.
    v = os.path.join(top, "valid")
    save_file({}, os.path.join(v, "ref_empty.safetensors"))
    save_file({"s": np.array(1.5, dtype=np.float32)}, os.path.join(v, "scalar.safetensors"))
    save_file({"a": np.zeros((0,), np.float16), "b": np.zeros((2, 0), np.float32),
               "c": np.arange(3, dtype=np.uint8)}, os.path.join(v, "ref_zero_share.safetensors"))
    save_file({"w": np.ones((2, 2), np.float16)}, os.path.join(v, "metadata.safetensors"),
              metadata={"format": "pt", "title": "t\u00e9st", "empty": ""})
    for name in sorted(os.listdir(v)):
        ok, why = ref_open(os.path.join(v, name))
        if not ok:
            bad.append("valid/%s: reference rejects: %s" % (name, why))

    rng = random.Random(20261122)
    for i in range(24):
        p = os.path.join(top, "random", "%02d.safetensors" % i)
        random_file(rng, p)
        dump(p, os.path.join(top, "random", "%02d.txt" % i))
    # The dtypes numpy cannot write, as bytes, cross-checked the same way.
    p = os.path.join(top, "random", "all_dtypes.safetensors")
    with open(p, "wb") as f:
        f.write(VALID_RAW["all_dtypes"])
    dump(p, os.path.join(top, "random", "all_dtypes.txt"))

    for model in ("sdxl", "sd15", "flux", "sd3"):
        keys = key_set(model)
        assert len(set(keys)) == len(keys), model
        save_file({k: np.zeros((1 + i % 3,), np.float16) for i, k in enumerate(keys)},
                  os.path.join(top, "names", model + ".safetensors"))

    for b in bad:
        print("gen_fixtures: " + b, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
