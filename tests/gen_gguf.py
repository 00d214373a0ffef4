#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Fixtures of tests/test-gguf.c, written into DIR:

  DIR/valid/NAME.gguf    written by gguf-py's GGUFWriter (the reference)
  DIR/invalid/NAME.gguf  bytes built here, one broken rule each
  DIR/manifest.txt       what gguf-py's GGUFReader sees in every valid file:
      F <file>
      T <name> <type id> <ndim> <ne0> <ne1> <ne2> <ne3> <abs offset> <nbytes> <crc32 of the bytes>
      K <key>\t<value type>\t<value as text, for scalars; arrays: array length>
      D <abs data offset> <alignment>

Every invalid file is offered to GGUFReader too: the ones it accepts are
listed in DIR/reference-accepts.txt (vramd is stricter there on purpose:
docs/formats.md says where), and a file the C reader must reject that the
reference accepts without being listed in STRICTER below fails the run.

Usage: gen_gguf.py DIR
"""
import os
import struct
import sys
import zlib

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q, GGUFValueType as V
from gguf.constants import GGML_QUANT_SIZES

RNG = np.random.default_rng(1234)


# ----------------------------------------------------------------------
# Valid files: the reference writer


def quant_bytes(qtype, ne):
    """Random stored bytes of a qtype tensor with ggml shape ne (row first)."""
    block, size = GGML_QUANT_SIZES[qtype]
    rows = int(np.prod(ne[1:])) if len(ne) > 1 else 1
    per_row = ne[0] // block * size
    shape = tuple(reversed(ne[1:])) + (per_row,)
    return RNG.integers(0, 256, size=shape, dtype=np.uint8) if rows else np.zeros(shape, np.uint8)


def add(w, name, qtype, shape):
    """Adds a tensor of torch-order shape to writer w."""
    ne = list(reversed(shape))
    if qtype == Q.F32:
        w.add_tensor(name, RNG.standard_normal(shape).astype(np.float32))
    elif qtype == Q.F16:
        w.add_tensor(name, RNG.standard_normal(shape).astype(np.float16))
    elif qtype in (Q.Q8_0, Q.Q4_0) and shape and shape[-1] % 32 == 0:
        data = gguf.quants.quantize(RNG.standard_normal(shape).astype(np.float32), qtype)
        w.add_tensor(name, data, raw_dtype=qtype)
    elif qtype in (Q.I8, Q.I16, Q.I32, Q.I64, Q.F64):
        dt = {Q.I8: np.int8, Q.I16: np.int16, Q.I32: np.int32, Q.I64: np.int64, Q.F64: np.float64}[qtype]
        w.add_tensor(name, RNG.integers(-100, 100, size=shape).astype(dt))
    else:
        w.add_tensor(name, quant_bytes(qtype, ne), raw_dtype=qtype)


def write(path, arch, tensors, meta=None, alignment=None):
    w = gguf.GGUFWriter(path, arch)
    if alignment:
        w.add_custom_alignment(alignment)
    for k, (vt, v) in (meta or {}).items():
        if vt == V.ARRAY:
            w.add_array(k, v)
        else:
            w.add_key_value(k, v, vt)
    for name, qtype, shape in tensors:
        add(w, name, qtype, shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def flux_like():
    """A Flux-shaped diffusion model as ComfyUI-GGUF's convert writes it:
    no prefixes, 2-D weights quantised, 1-D ones F32."""
    t = [("img_in.weight", Q.Q8_0, [96, 64]), ("img_in.bias", Q.F32, [96]),
         ("txt_in.weight", Q.Q8_0, [96, 128]), ("time_in.in_layer.weight", Q.F16, [96, 64]),
         ("final_layer.linear.weight", Q.Q4_K, [64, 256]), ("final_layer.linear.bias", Q.F32, [64])]
    for i in range(3):
        for part in ("img_attn.qkv", "img_attn.proj", "txt_mlp.0"):
            t.append((f"double_blocks.{i}.{part}.weight", Q.Q4_K if i else Q.Q5_K, [96, 256]))
            t.append((f"double_blocks.{i}.{part}.bias", Q.F32, [96]))
        t.append((f"double_blocks.{i}.img_attn.norm.query_norm.scale", Q.F32, [32]))
    for i in range(12):
        t.append((f"single_blocks.{i}.linear1.weight", Q.Q6_K if i % 2 else Q.Q4_0, [64, 256]))
        t.append((f"single_blocks.{i}.linear1.bias", Q.F32, [64]))
    return t


def wan_like():
    t = [("patch_embedding.weight", Q.F16, [16, 4, 1, 2, 2][:4]), ("text_embedding.0.weight", Q.Q8_0, [64, 64])]
    for i in range(4):
        for part in ("self_attn.q", "self_attn.k", "cross_attn.o", "ffn.0"):
            t.append((f"blocks.{i}.{part}.weight", Q.Q3_K, [32, 256]))
        t.append((f"blocks.{i}.norm3.weight", Q.F32, [32]))
    t.append(("head.head.weight", Q.BF16, [16, 64]))
    return t


def t5_like():
    return [("token_embd.weight", Q.Q8_0, [100, 64]),
            ("enc.blk.0.attn_q.weight", Q.Q8_0, [64, 64]), ("enc.blk.0.attn_norm.weight", Q.F32, [64]),
            ("enc.blk.1.attn_q.weight", Q.Q8_0, [64, 64]), ("enc.output_norm.weight", Q.F32, [64])]


def all_types():
    t = []
    for q in Q:
        if q not in GGML_QUANT_SIZES:
            continue
        block = GGML_QUANT_SIZES[q][0]
        t.append((f"t{int(q):02d}_{q.name}", q, [3, 2 * block]))
    return t


def valid_files(d):
    meta_all = {
        "general.name": (V.STRING, "all value types"),
        "general.license": (V.STRING, "cc-by-nc-4.0"),
        "general.file_type": (V.UINT32, 15),
        "v.u8": (V.UINT8, 200), "v.i8": (V.INT8, -5), "v.u16": (V.UINT16, 65000), "v.i16": (V.INT16, -300),
        "v.u32": (V.UINT32, 4000000000), "v.i32": (V.INT32, -70000), "v.f32": (V.FLOAT32, 0.5),
        "v.bool": (V.BOOL, True), "v.u64": (V.UINT64, 2 ** 63 + 5), "v.i64": (V.INT64, -(2 ** 40)),
        "v.f64": (V.FLOAT64, 1.25), "v.str_empty": (V.STRING, ""), "v.utf8": (V.STRING, "Grüße ✓"),
        "v.arr_i32": (V.ARRAY, [1, -2, 3]), "v.arr_str": (V.ARRAY, ["a", "bb", ""]),
"v.arr_long": (V.ARRAY, list(range(40))),
        "v.arr_f32": (V.ARRAY, [0.25, 1.5]),
        "v.arr_bool": (V.ARRAY, [True, False]),
    }
    write(f"{d}/flux_q.gguf", "flux", flux_like(),
          {"general.file_type": (V.UINT32, 15), "general.quantization_version": (V.UINT32, 2),
           "general.name": (V.STRING, "flux-like test model"), "general.license": (V.STRING, "flux-1-dev-non-commercial-license")})
    write(f"{d}/wan_q.gguf", "wan", wan_like(), {"general.file_type": (V.UINT32, 12)})
    write(f"{d}/t5_q.gguf", "t5encoder", t5_like())
    write(f"{d}/all_types.gguf", "test", all_types())
    write(f"{d}/meta_all.gguf", "test", [("x.weight", Q.F32, [4])], meta_all)
    write(f"{d}/align64.gguf", "test", [("a.weight", Q.F16, [3, 5]), ("b.weight", Q.Q8_0, [1, 32])], alignment=64)
    write(f"{d}/align1.gguf", "test", [("a", Q.F16, [3]), ("b", Q.F32, [1]), ("c", Q.I8, [7])], alignment=1)
    write(f"{d}/no_tensors.gguf", "test", [], {"general.name": (V.STRING, "empty")})
    write(f"{d}/zero_dim.gguf", "test", [("empty", Q.F32, [0, 4]), ("after", Q.F16, [2])])
    write(f"{d}/scalar.gguf", "test", [("s", Q.F32, [])])
    write(f"{d}/dims4.gguf", "test", [("d4", Q.F16, [2, 3, 4, 5]), ("q4", Q.Q4_0, [2, 1, 3, 64])])
    # Version 2: the same layout as 3 (the writer writes 3; patched).
    with open(f"{d}/wan_q.gguf", "rb") as f:
        b = bytearray(f.read())
    b[4:8] = struct.pack("<I", 2)
    with open(f"{d}/v2.gguf", "wb") as f:
        f.write(b)


def manifest(d, out):
    for fn in sorted(os.listdir(d)):
        r = gguf.GGUFReader(f"{d}/{fn}")
        out.write(f"F {fn[:-5]}\n")
        out.write(f"D {r.data_offset} {r.alignment}\n")
        for t in r.tensors:
            ne = [int(x) for x in t.shape] + [1] * (4 - len(t.shape))
            data = np.asarray(t.data).tobytes()
            assert len(data) == t.n_bytes, (fn, t.name)
            out.write(f"T {t.name} {int(t.tensor_type)} {len(t.shape)} {ne[0]} {ne[1]} {ne[2]} {ne[3]} "
                      f"{t.data_offset} {t.n_bytes} {zlib.crc32(data)}\n")
        for f in r.fields.values():
            if f.name.startswith("GGUF."):
                continue
            vt = f.types[0]
            if vt == V.ARRAY:
                val = str(len(f.data))
            elif vt == V.STRING:
                val = bytes(f.parts[f.data[0]]).decode()
            elif vt == V.BOOL:
                val = "true" if f.parts[f.data[0]][0] else "false"
            else:
                val = repr(f.parts[f.data[0]][0].item())
            out.write(f"K {f.name}\t{int(vt)}\t{val}\n")


# ----------------------------------------------------------------------
# Invalid files: bytes


def s(b):
    b = b.encode() if isinstance(b, str) else b
    return struct.pack("<Q", len(b)) + b


def kv(key, vt, payload):
    return s(key) + struct.pack("<I", vt) + payload


def kv_u32(key, v):
    return kv(key, V.UINT32, struct.pack("<I", v))


def ti(name, ne, qtype, offset):
    return s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", x) for x in ne) + \
        struct.pack("<IQ", qtype, offset)


def build(kvs=(), tis=(), data=b"", version=3, ntensors=None, nkv=None, align=32, pad=True, magic=b"GGUF"):
    head = magic + struct.pack("<I", version) + \
        struct.pack("<QQ", len(tis) if ntensors is None else ntensors, len(kvs) if nkv is None else nkv)
    b = head + b"".join(kvs) + b"".join(tis)
    if pad:
        b += b"\0" * (-len(b) % align)
    return b + data


def one(name="t", ne=(4,), qtype=Q.F32, offset=0, nbytes=16, **kw):
    return build(tis=[ti(name, list(ne), qtype, offset)], data=b"\1" * nbytes, **kw)


INVALID = {}


def invalid_files():
    I = INVALID
    I["short"] = b"GG"
    I["magic"] = b"GGML" + b"\0" * 20
    I["header_short"] = b"GGUF\3\0\0\0" + b"\0" * 8
    I["big_endian"] = build(version=0x03000000)
    I["version1"] = build(version=1)
    I["version4"] = build(version=4)
    I["nkv_huge"] = build(nkv=2 ** 62)
    I["ntensors_huge"] = build(ntensors=2 ** 40)
    I["key_empty"] = build([kv("", V.UINT8, b"\1")])
    I["key_long"] = build([kv("k" * 65536, V.UINT8, b"\1")])
    I["key_nul"] = build([kv("a\0b", V.UINT8, b"\1")])
    I["key_utf8"] = build([kv(b"a\xff", V.UINT8, b"\1")])
    I["value_type_past_eof"] = build([s("abcde")], pad=False)
    I["key_past_eof"] = b"GGUF\3\0\0\0" + struct.pack("<QQ", 0, 1) + struct.pack("<Q", 100) + b"abc" * 7
    I["vtype_unknown"] = build([kv("a", 13, b"\0" * 8)])
    I["bool_2"] = build([kv("a", V.BOOL, b"\2")])
    I["bool_arr_2"] = build([kv("a", V.ARRAY, struct.pack("<IQ", V.BOOL, 2) + b"\1\3")])
    I["string_past_eof"] = build([kv("a", V.STRING, struct.pack("<Q", 2 ** 40) + b"xy")])
    I["nested_array"] = build([kv("a", V.ARRAY, struct.pack("<IQ", V.ARRAY, 1) + struct.pack("<IQ", V.UINT8, 0))])
    I["array_type_unknown"] = build([kv("a", V.ARRAY, struct.pack("<IQ", 77, 0))])
    I["array_past_eof"] = build([kv("a", V.ARRAY, struct.pack("<IQ", V.UINT64, 2 ** 61) + b"\0" * 16)])
    I["array_str_past_eof"] = build([kv("a", V.ARRAY, struct.pack("<IQ", V.STRING, 2) + s("x") + s("yz")[:-1])],
                                    pad=False)
    I["dup_key"] = build([kv_u32("a", 1), kv_u32("b", 2), kv_u32("a", 3)])
    I["align_type"] = build([kv("general.alignment", V.UINT64, struct.pack("<Q", 32))])
    I["align_zero"] = build([kv_u32("general.alignment", 0)])
    I["align_odd"] = build([kv_u32("general.alignment", 48)], align=16)
    I["name_empty"] = one(name="")
    I["name_nul"] = one(name="a\0")
    I["name_utf8"] = one(name=b"\xc0\x80")
    I["dup_tensor"] = build(tis=[ti("a", [4], Q.F32, 0), ti("a", [4], Q.F32, 32)], data=b"\0" * 48)
    I["ndim5"] = one(ne=(1, 1, 1, 1, 4))
    I["dim_neg"] = one(ne=(2 ** 63,))
    I["elem_overflow"] = one(ne=(2 ** 32, 2 ** 32))
    I["bytes_overflow"] = one(ne=(2 ** 62, 1), qtype=Q.F64)
    I["type_unknown"] = one(qtype=99)
    I["type_gap"] = one(qtype=37 + 5)  # 42: past the table
    I["type_removed"] = one(qtype=4)
    I["type_removed_repack"] = one(qtype=31)
    I["block_row"] = one(ne=(48, 2), qtype=Q.Q8_0, nbytes=34 * 3)
    I["offset_unaligned"] = one(offset=8)
    I["offset_gap"] = build(tis=[ti("a", [4], Q.F32, 0), ti("b", [4], Q.F32, 64)], data=b"\0" * 96)
    I["offset_order"] = build(tis=[ti("a", [4], Q.F32, 32), ti("b", [4], Q.F32, 0)], data=b"\0" * 48)
    I["overlap"] = build(tis=[ti("a", [16], Q.F32, 0), ti("b", [4], Q.F32, 32)], data=b"\0" * 64)
    I["truncated"] = one(nbytes=15)
    I["truncated_header"] = build(tis=[ti("a", [4], Q.F32, 0)], pad=False)[:-4]
    I["no_padding_before_data"] = build(tis=[ti("a", [4], Q.F32, 0)], pad=False) + b"\0" * 16
    I["trailing"] = one(nbytes=16 + 32 + 1)
    I["trailing_no_tensors"] = build([kv_u32("a", 1)]) + b"\0" * 32
    I["ti_past_eof"] = build(ntensors=1)


# Rejected here, accepted by GGUFReader: vramd follows ggml's own reader
# (gguf.cpp) or is stricter (docs/formats.md).  The list is exact: the run
# fails when the reference's verdict on a file differs from it.
STRICTER = {
    "big_endian",            # a valid big-endian file: unsupported here
    # numpy slices of the memory map come back short past the end of the
    # file, and GGUFReader does not check their length:
    "string_past_eof", "array_str_past_eof",
    "array_type_unknown",    # an empty array of an unknown type
    "key_empty", "key_nul", "key_long", "name_empty", "name_nul",
    "nested_array",          # ggml rejects arrays of arrays
    "bool_2", "bool_arr_2",
    "ndim5",                 # ggml: at most 4 dimensions
    "offset_gap", "offset_order", "overlap",  # ggml: in order, padded
    "trailing", "trailing_no_tensors",
}


def main():
    d = sys.argv[1]
    os.makedirs(f"{d}/valid", exist_ok=True)
    os.makedirs(f"{d}/invalid", exist_ok=True)
    valid_files(f"{d}/valid")
    with open(f"{d}/manifest.txt", "w") as out:
        manifest(f"{d}/valid", out)
    invalid_files()
    accepted = []
    for name, b in INVALID.items():
        p = f"{d}/invalid/{name}.gguf"
        with open(p, "wb") as f:
            f.write(b)
        try:
            r = gguf.GGUFReader(p)
            for t in r.tensors:
                np.asarray(t.data).tobytes()
            ok = True
        except Exception:
            ok = False
        if ok:
            accepted.append(name)
        if ok != (name in STRICTER):
            sys.exit(f"gen_gguf: the reference {'accepts' if ok else 'rejects'} invalid/{name}, "
                     f"which STRICTER {'does not list' if ok else 'lists'}")
    with open(f"{d}/reference-accepts.txt", "w") as f:
        f.write("\n".join(accepted) + "\n")


if __name__ == "__main__":
    main()
