#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Fixtures of tests/test-pytorch.c, written into DIR:

  DIR/valid/NAME.pt      torch.save of state dicts (every dtype vramd has,
                         shared storages, parameters, nested dicts, ...)
  DIR/unsupported/NAME.pt  valid files vramd cannot serve
  DIR/invalid/NAME.pt    broken or hostile files: crafted pickles (code
                         execution through REDUCE, INST, eval, ...), damaged
                         zips; hostile ones would run `touch MARKER`
  DIR/manifest.txt       what torch.load(weights_only=True) returns, with
                         ComfyUI's pick of the state dict:
      F <file> <root key or ->
      T <name> <dtype> <ndim> <shape...> <crc32 of the bytes>

Nothing here unpickles a hostile file.

Usage: gen_torch.py DIR MARKER
"""
import collections
import io
import os
import pickle
import struct
import sys
import zipfile
import zlib

import torch

torch.manual_seed(7)

DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.complex64: "C64", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    torch.float8_e4m3fnuz: "F8_E4M3FNUZ", torch.float8_e5m2fnuz: "F8_E5M2FNUZ", torch.float8_e8m0fnu: "F8_E8M0",
    torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64",
}


def rand(shape, dt=torch.float32):
    t = torch.randn(shape) * 4
    if dt.is_complex:
        return torch.complex(t, t * 2).to(dt)
    if dt == torch.bool:
        return t > 0
    if not dt.is_floating_point:
        return t.to(torch.int64).abs().to(dt)
    return t.to(dt)


def sd15_like():
    sd = collections.OrderedDict()
    for i in range(3):
        sd[f"model.diffusion_model.input_blocks.{i}.0.weight"] = rand((8, 4, 3, 3), torch.float16)
        sd[f"model.diffusion_model.input_blocks.{i}.0.bias"] = rand((8,), torch.float16)
    sd["model.diffusion_model.out.2.weight"] = rand((4, 8, 3, 3), torch.float16)
    sd["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] = rand((50, 16))
    for i in range(2):
        sd[f"cond_stage_model.transformer.text_model.encoder.layers.{i}.mlp.fc1.weight"] = rand((32, 16))
    sd["first_stage_model.decoder.conv_in.weight"] = rand((8, 4, 3, 3))
    sd["alphas_cumprod"] = rand((10,), torch.float32)
    sd["model_ema.num_updates"] = torch.tensor(3, dtype=torch.int32)
    return sd


def valid_files(d):
    torch.save({"state_dict": sd15_like(), "epoch": 3, "global_step": 1000,
                "pytorch-lightning_version": "1.4.2"}, f"{d}/sd15_ckpt.pt")
    torch.save(sd15_like(), f"{d}/flat.pt")
    torch.save({"model": sd15_like()}, f"{d}/one_key.pt")
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    torch.save(m.state_dict(), f"{d}/module.pt")  # _metadata through BUILD
    torch.save({f"t_{n}": rand((2, 3), dt) for dt, n in DTYPES.items()}, f"{d}/all_dtypes.pt")
    base = torch.arange(40, dtype=torch.float32)
    torch.save({"base": base, "slice": base[2:10], "row": base.view(8, 5)[3], "same": base.view(5, 8),
                "tail": base[39:], "other": rand((3,))}, f"{d}/shared.pt")
    torch.save({"p": torch.nn.Parameter(rand((3, 2))), "q": torch.nn.Parameter(rand((2,)), requires_grad=False),
                "t": rand((2,))}, f"{d}/params.pt")
    torch.save({"scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4), "one": torch.ones(1, 1, 5),
                "extra": b"\x00\xffbytes", "n": 5, "s": "text", "f": 1.5, "none": None, "l": [1, (2, 3)],
                "nested": {"x": torch.ones(2)}}, f"{d}/mixed.pt")
    torch.save(sd15_like(), f"{d}/proto4.pt", pickle_protocol=4)
    torch.save({}, f"{d}/empty.pt")
    # a stride-1 size-1 dimension in the middle is contiguous all the same
    torch.save({"odd_stride": torch.ones(3, 1, 4).transpose(0, 1).transpose(0, 1)}, f"{d}/size1.pt")


def pick(obj):
    """ComfyUI's load_torch_file choice."""
    if "state_dict" in obj:
        return "state_dict", obj["state_dict"]
    if len(obj) == 1:
        k = next(iter(obj))
        if isinstance(obj[k], dict):
            return k, obj[k]
    return "-", obj


def manifest(d, out):
    for fn in sorted(os.listdir(d)):
        # torch's weights_only unpickler lacks protocol 4's FRAME; that
        # file is this script's own, safe to load in full
        obj = torch.load(f"{d}/{fn}", weights_only=fn != "proto4.pt")
        root, sd = pick(obj)
        out.write(f"F {fn[:-3]} {root}\n")
        for k, v in sd.items():
            if not isinstance(v, torch.Tensor):
                continue
            data = v.reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b""
            shape = " ".join(str(x) for x in v.shape)
            out.write(f"T {k} {DTYPES[v.dtype]} {v.dim()} {shape} {zlib.crc32(data)}\n".replace("  ", " "))


def unsupported_files(d):
    x = rand((4, 3))
    torch.save({"t": x.t()}, f"{d}/noncontig.pt")
    torch.save({"t": x[:, 1]}, f"{d}/strided.pt")
    torch.save({"c": torch.ones(2, dtype=torch.complex128)}, f"{d}/complex128.pt")
    torch.save({"a": torch.ones(2)}, f"{d}/legacy.pt", _use_new_zipfile_serialization=False)
    with open(f"{d}/bare_pickle.pt", "wb") as f:
        pickle.dump({"a": 1}, f, protocol=2)
    # a valid checkpoint with its records deflated
    src = zipfile.ZipFile(f"{d}/../valid/flat.pt")
    with zipfile.ZipFile(f"{d}/compressed.pt", "w", zipfile.ZIP_DEFLATED) as z:
        for i in src.infolist():
            z.writestr(i.filename, src.read(i.filename))
    zip_of(f"{d}/big_endian.pt", PKL_ONE, {"byteorder": b"big"})


# ----------------------------------------------------------------------
# Crafted pickles and zips


def zip_of(path, pkl, records=None, name="archive", crc_bad=False):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{name}/data.pkl", pkl)
        for k, v in {"version": b"3\n", **(records or {})}.items():
            z.writestr(f"{name}/{k}", v)
    if crc_bad:
        with open(path, "r+b") as f:
            b = bytearray(f.read())
            i = b.index(pkl)
            b[i + len(pkl) - 2] ^= 0xff  # a byte before STOP
            f.seek(0)
            f.write(b)


def u(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def storage(key, typ="FloatStorage", numel=4):
    return (b"(" + u("storage") + f"ctorch\n{typ}\n".encode() + u(key) + u("cpu") +
            b"J" + struct.pack("<i", numel) + b"tQ")


def tensor(key="0", offset=0, size=(4,), stride=(1,), typ="FloatStorage", numel=4):
    tup = lambda xs: b"(" + b"".join(b"J" + struct.pack("<i", x) for x in xs) + b"t"
    return (b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage(key, typ, numel) + b"J" + struct.pack("<i", offset) +
            tup(size) + tup(stride) + b"\x89" + b"ccollections\nOrderedDict\n)R" + b"tR")


def sd(*items):
    """A dict pickle of (name, value-bytes)."""
    return b"\x80\x02}(" + b"".join(u(k) + v for k, v in items) + b"u."


PKL_ONE = sd(("w", tensor()))
DATA4 = {"data/0": b"\0" * 16}
INVALID = {}


def hostile(marker):
    cmd = f"touch {marker}"
    H = {}
    H["reduce_os_system"] = b"\x80\x02cos\nsystem\n(" + u(cmd) + b"tR."
    H["reduce_posix_system"] = b"\x80\x02}(" + u("w") + b"cposix\nsystem\n(" + u(cmd) + b"tRu."
    H["global_eval"] = b"\x80\x02cbuiltins\neval\n(" + u(f"__import__('os').system('{cmd}')") + b"tR."
    H["inst"] = b"\x80\x02(" + u(cmd) + b"ios\nsystem\n."
    H["obj"] = b"\x80\x02(cos\nsystem\n" + u(cmd) + b"o."
    H["stack_global"] = b"\x80\x04" + u("os") + u("system") + b"\x93(" + u(cmd) + b"tR."
    H["newobj"] = b"\x80\x02csubprocess\nPopen\n(" + u(cmd) + b"t\x81."
    H["ext1"] = b"\x80\x02\x82\x01."
    H["persid_text"] = b"\x80\x02P0\n."
    H["build_setstate"] = b"\x80\x02ccollections\nOrderedDict\n)R}(" + u("__setstate__") + b"cos\nsystem\nub."
    H["reduce_storage"] = b"\x80\x02ctorch\nFloatStorage\n)R."
    H["torch_load"] = b"\x80\x02ctorch\nload\n(" + u("/etc/passwd") + b"tR."
    # resource exhaustion
    H["deep_lists"] = b"\x80\x02" + b"]" * 200000 + b"a" * 199999 + b"."
    H["deep_marks"] = b"\x80\x02" + b"(" * 200000 + b"."
    H["huge_memo_put"] = b"\x80\x02}r\xff\xff\xff\xff."
    H["memo_get_missing"] = b"\x80\x02}h\x05."
    H["long_huge"] = b"\x80\x02\x8b\xff\xff\xff\x7f."
    H["string_huge"] = b"\x80\x02X\xff\xff\xff\x7fabc."
    H["frame_huge"] = b"\x80\x04\x95\xff\xff\xff\xff\xff\xff\x00\x00."
    return H


def invalid_files(d, marker):
    for name, pkl in hostile(marker).items():
        zip_of(f"{d}/{name}.pt", pkl, DATA4)
    zip_of(f"{d}/top_list.pt", b"\x80\x02]." , DATA4)
    zip_of(f"{d}/trailing.pt", PKL_ONE + b"N", DATA4)
    zip_of(f"{d}/no_stop.pt", PKL_ONE[:-1], DATA4)
    zip_of(f"{d}/stack_left.pt", b"\x80\x02N" + PKL_ONE[2:], DATA4)
    zip_of(f"{d}/dup_name.pt", sd(("w", tensor()), ("w", tensor())), DATA4)
    zip_of(f"{d}/past_storage.pt", sd(("w", tensor(offset=2, size=(3,)))), DATA4)
    zip_of(f"{d}/no_record.pt", PKL_ONE, {})
    zip_of(f"{d}/record_size.pt", PKL_ONE, {"data/0": b"\0" * 12})
    zip_of(f"{d}/two_types.pt", sd(("a", tensor()), ("b", tensor(typ="HalfStorage"))), DATA4)
    zip_of(f"{d}/key_path.pt", sd(("w", tensor(key="../x"))), DATA4)
    zip_of(f"{d}/int_key.pt", b"\x80\x02}(K\x01" + tensor() + b"u.", DATA4)
    zip_of(f"{d}/crc.pt", PKL_ONE, DATA4, crc_bad=True)
    zip_of(f"{d}/unhashable.pt", b"\x80\x02}(]K\x01u.", DATA4)
    zip_of(f"{d}/setitem_list.pt", b"\x80\x02]K\x01K\x02s.", DATA4)
    zip_of(f"{d}/bad_utf8.pt", b"\x80\x02X\x02\x00\x00\x00\xc3\x28.", DATA4)
    zip_of(f"{d}/no_pickle.pt", b"", {}, name="")
    zip_of(f"{d}/ok_control.pt", PKL_ONE, DATA4)  # valid: the crafted ones differ from it in one thing
    with open(f"{d}/../valid/flat.pt", "rb") as f:
        b = f.read()
    with open(f"{d}/truncated.pt", "wb") as f:
        f.write(b[:-30])
    with open(f"{d}/not_zip.pt", "wb") as f:
        f.write(b"hello world, not a checkpoint")
    with open(f"{d}/empty_file.pt", "wb") as f:
        pass


def main():
    d, marker = sys.argv[1], sys.argv[2]
    for sub in ("valid", "unsupported", "invalid"):
        os.makedirs(f"{d}/{sub}", exist_ok=True)
    valid_files(f"{d}/valid")
    with open(f"{d}/manifest.txt", "w") as out:
        manifest(f"{d}/valid", out)
    unsupported_files(f"{d}/unsupported")
    invalid_files(f"{d}/invalid", marker)
    # the control crafted file is what torch reads too
    t = torch.load(f"{d}/invalid/ok_control.pt", weights_only=True)
    assert list(t) == ["w"] and t["w"].shape == (4,), t


if __name__ == "__main__":
    main()
