#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""make bench, GGUF and PyTorch zip files: the files, written by the
reference writers, and the reference loaders, timed in-process.

  bench_formats.py gen-gguf OUT --size BYTES [--seed S]
      A Flux-shaped diffusion-model GGUF as ComfyUI-GGUF users load them
      (keys as in the original model, no prefixes: double_blocks.N,
      single_blocks.N...; 2-D weights Q8_0, biases and norms F32), the
      hidden size and then the number of single blocks chosen so the file
      is BYTES less under one block, written by gguf-py's
      GGUFWriter one tensor at a time (tensor infos first, then each
      tensor's data generated and written): one tensor in memory at a time.
      The Q8_0 blocks are random bytes with a finite f16 scale.

  bench_formats.py gen-pt OUT --from FILE.safetensors
      A PyTorch zip checkpoint, torch.save({"state_dict": sd}) as old SD
      .ckpt files are, with FILE's tensors (names, dtypes, shapes, bytes):
      every tensor a view of a copy-on-write map of FILE, so torch.save
      streams the bytes from the page cache and nothing is held in memory.

  bench_formats.py ref-gguf FILE
      gguf-py's GGUFReader(FILE) and a copy of every tensor's data into
      memory of its own (np.array(copy=True)), as a loader that keeps the
      tensors must do (the reader's arrays are views of its memmap).
  bench_formats.py ref-torch FILE [--mmap]
      torch.load(FILE, weights_only=True) (each storage read into memory of
      its own), or with --mmap torch.load(..., mmap=True) and a clone of
      every tensor.

  The ref-* commands print "BYTES SECONDS CPU_SECONDS" for the load alone
  (after the imports), as helper-mmapload does.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

Q8_BLOCK, Q8_BYTES = 32, 34


def flux_keys(h, nsingle=38):
    """[(name, torch-order shape)] of a Flux-dev transformer with hidden
    size h (Flux-dev: 3072) and nsingle single blocks (38), as the original
    model names them."""
    import make_checkpoint as mc
    k = mc.Keys()
    k.wb("img_in", h, 64)
    for e, i in (("time_in", 256), ("vector_in", 768), ("guidance_in", 256)):
        k.wb(e + ".in_layer", h, i)
        k.wb(e + ".out_layer", h, h)
    k.wb("txt_in", h, 4096)
    for i in range(19):
        mc.flux_double(k, "double_blocks.%d." % i, h)
    for i in range(nsingle):
        mc.flux_single(k, "single_blocks.%d." % i, h)
    k.wb("final_layer.linear", 64, h)
    k.wb("final_layer.adaLN_modulation.1", 2 * h, h)
    return [(name, shape) for name, shape, _ in k.t]


def gguf_nbytes(shape):
    """Bytes of a tensor as stored: 2-D weights Q8_0, the rest F32."""
    n = int(np.prod(shape))
    return n // Q8_BLOCK * Q8_BYTES if len(shape) == 2 else 4 * n


def gen_gguf(a):
    import gguf
    from gguf import GGMLQuantizationType as Q
    def size(h, n):
        return sum(gguf_nbytes(s) for _, s in flux_keys(h, n))
    # The largest hidden size (a multiple of Q8_0's 32) that fits, then
    # single blocks added while they fit: within one block of BYTES.
    h, n = 128, 38
    while size(h + 32, n) <= a.size:
        h += 32
    while size(h, n + 1) <= a.size:
        n += 1
    keys = flux_keys(h, n)
    rng = np.random.default_rng(a.seed)
    w = gguf.GGUFWriter(a.out + ".tmp", "flux")
    w.add_name("vramd bench flux-shaped (hidden %d, %d single blocks)" % (h, n))
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, shape in keys:
        if len(shape) == 2:
            w.add_tensor_info(name, [shape[0], shape[1] // Q8_BLOCK * Q8_BYTES], np.dtype(np.uint8),
                              gguf_nbytes(shape), raw_dtype=Q.Q8_0)
        else:
            w.add_tensor_info(name, shape, np.dtype(np.float32), gguf_nbytes(shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    scale = np.array([1.0 / 127], dtype=np.float16).view(np.uint8)
    for name, shape in keys:
        if len(shape) == 2:
            b = rng.integers(0, 256, size=(shape[0] * shape[1] // Q8_BLOCK, Q8_BYTES), dtype=np.uint8)
            b[:, :2] = scale
            w.write_tensor_data(b.reshape(shape[0], -1))
        else:
            w.write_tensor_data(rng.standard_normal(shape, dtype=np.float32))
    w.close()
    os.rename(a.out + ".tmp", a.out)
    print("%s: %d tensors, hidden %d, %d single blocks, %d bytes" % (a.out, len(keys), h, n, os.path.getsize(a.out)))


def gen_pt(a):
    import collections
    import torch
    dtypes = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "I8": torch.int8}
    with open(a.src, "rb") as f:
        hlen = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(hlen))
    header.pop("__metadata__", None)
    data = np.memmap(a.src, dtype=np.uint8, mode="c", offset=8 + hlen)
    sd = collections.OrderedDict()
    for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        b, e = t["data_offsets"]
        sd[name] = torch.from_numpy(data[b:e]).view(dtypes[t["dtype"]]).reshape(t["shape"])
    torch.save({"state_dict": sd, "global_step": 1}, a.out + ".tmp")
    os.rename(a.out + ".tmp", a.out)
    print("%s: %d tensors, %d bytes" % (a.out, len(sd), os.path.getsize(a.out)))


def timed(load):
    t0, c0 = time.perf_counter(), time.process_time()
    n, keep = load()
    t1, c1 = time.perf_counter(), time.process_time()
    print("%d %.6f %.6f" % (n, t1 - t0, c1 - c0))
    del keep


def ref_gguf(a):
    from gguf import GGUFReader

    def load():
        r = GGUFReader(a.file)
        out = {t.name: np.array(t.data, copy=True) for t in r.tensors}
        return sum(x.nbytes for x in out.values()), out
    timed(load)


def ref_torch(a):
    import torch

    def load():
        sd = torch.load(a.file, weights_only=True, mmap=a.mmap)["state_dict"]
        if a.mmap:
            sd = {k: v.clone() for k, v in sd.items()}
        # Tensors sharing a storage count once, as in the file.
        seen = {}
        for v in sd.values():
            s = v.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
        return sum(seen.values()), sd
    timed(load)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen-gguf")
    g.add_argument("out")
    g.add_argument("--size", type=int, required=True)
    g.add_argument("--seed", type=int, default=11)
    p = sub.add_parser("gen-pt")
    p.add_argument("out")
    p.add_argument("--from", dest="src", required=True)
    r = sub.add_parser("ref-gguf")
    r.add_argument("file")
    r = sub.add_parser("ref-torch")
    r.add_argument("file")
    r.add_argument("--mmap", action="store_true")
    a = ap.parse_args()
    {"gen-gguf": gen_gguf, "gen-pt": gen_pt, "ref-gguf": ref_gguf, "ref-torch": ref_torch}[a.cmd](a)


if __name__ == "__main__":
    main()
