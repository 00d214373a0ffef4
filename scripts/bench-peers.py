#!/usr/bin/env python3
"""make bench's peers (scripts/bench-load.sh): loads a checkpoint onto the
CPU as another loader would and prints "GB/s CPU-s/GB".

  bench-peers.py safetensors FILE       safetensors.torch.load_file, then
                                        every byte read (its tensors map the
                                        file lazily)
  bench-peers.py fastsafetensors FILE   fastsafetensors' SafeTensorsFileLoader
                                        (nogds, cpu: its threads pread the
                                        file), then every tensor taken

The clock starts after the imports (torch's import is not loading)."""
import os
import resource
import sys
import time


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load_safetensors(path):
    import torch
    from safetensors.torch import load_file
    t0, c0 = time.monotonic(), cpu_seconds()
    tensors = load_file(path, device="cpu")
    for t in tensors.values():
        if t.numel():
            t.reshape(-1).view(torch.uint8).max()
    return t0, c0


def load_fastsafetensors(path):
    from fastsafetensors import SafeTensorsFileLoader, SingleGroup
    t0, c0 = time.monotonic(), cpu_seconds()
    loader = SafeTensorsFileLoader(SingleGroup(), device="cpu", nogds=True)
    loader.add_filenames({0: [path]})
    buf = loader.copy_files_to_device()
    for name in list(buf.key_to_rank_lidx):
        buf.get_tensor(name)
    return t0, c0


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("safetensors", "fastsafetensors"):
        sys.exit("usage: bench-peers.py safetensors|fastsafetensors FILE")
    path = sys.argv[2]
    if sys.argv[1] == "safetensors":
        import torch  # noqa: F401  (imported before the clock starts)
        t0, c0 = load_safetensors(path)
    else:
        import fastsafetensors  # noqa: F401
        t0, c0 = load_fastsafetensors(path)
    secs, cpu = time.monotonic() - t0, cpu_seconds() - c0
    gb = os.path.getsize(path) / 1e9
    print("%.3f %.3f" % (gb / secs, cpu / gb))


if __name__ == "__main__":
    main()
