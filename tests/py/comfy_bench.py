# SPDX-License-Identifier: MIT
"""Times ComfyUI's CheckpointLoaderSimple against "Load Checkpoint (vramd)"
on the same file, in a ComfyUI checkout's Python (scripts/bench-comfyui.sh
runs it): from calling the loader to MODEL, CLIP and VAE ready.

    comfy_bench.py --comfyui DIR --socket SOCK --ckpt PATH [--rounds N]
                   [--comfy-args "..."] [--hold DIR]      first instance
    comfy_bench.py ... --second                            second instance

First instance, interleaved per round (medians reported):
  comfyui_cold   ComfyUI's loader, the file's pages dropped (posix_fadvise)
  comfyui_warm   ComfyUI's loader again, the file in the page cache
  vramd_cold     the node, pages dropped and no shared copy (dropped first):
                 the broker fills the copy from the disk
  vramd_warm     the node, no shared copy, the file in the page cache
  vramd_hit      the node again, its shared copy there (same process)
With --hold DIR it then loads through the node and holds the model, writes
DIR/ready, and waits for DIR/done: meanwhile a second ComfyUI process
(--second) loads the same model through the node, which maps the copy the
first one holds (second_s), ROUNDS times.  Each result is one JSON line.
The node's own split: load_s (vram_load) of the total.
"""
import argparse
import gc
import json
import os
import shlex
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--comfyui", required=True)
ap.add_argument("--socket", required=True)
ap.add_argument("--ckpt", required=True)
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--comfy-args", default="")
ap.add_argument("--hold")
ap.add_argument("--second", action="store_true")
a = ap.parse_args()

# ComfyUI reads its arguments at import: CPU, no downloads, and the dtype flags asked for.
sys.argv = [sys.argv[0], "--cpu", "--disable-known-models"] + shlex.split(a.comfy_args)
sys.path.insert(0, a.comfyui)
os.environ["VRAMD_SOCKET"] = a.socket
os.environ["VRAMD_CLIENT_NAME"] = "comfy-bench-2" if a.second else "comfy-bench-1"

import torch  # noqa: E402

torch.set_grad_enabled(False)
import comfy.model_management as mm  # noqa: E402
import comfy_checkpoints  # noqa: E402
import harness  # noqa: E402 - the pack imported from this checkout

try:
    from comfy.nodes.base_nodes import CheckpointLoaderSimple  # the pip-installable fork
    import comfy.cmd.folder_paths as folder_paths
except ImportError:
    from nodes import CheckpointLoaderSimple
    import folder_paths

NAME = os.path.basename(a.ckpt)


pack = harness.import_pack()


def comfy_load():
    return CheckpointLoaderSimple().load_checkpoint(NAME)


def vramd_load():
    node = pack.NODE_CLASS_MAPPINGS["CheckpointLoaderVramd"]()
    return node.load_checkpoint(a.ckpt, unet_compute_device="cuda:0", unet_virtual_vram_gb=0.0,
                                unet_donor_device="cpu", clip_compute_device="cpu", clip_virtual_vram_gb=0.0,
                                clip_donor_device="cpu", vae_device="cuda:0", eject_models=False)


def drop_pages():
    fd = os.open(a.ckpt, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def drop_copies():
    """The file's shared copies go (they must be unused: the previous
    round's models are gone)."""
    import importlib
    vramd = importlib.import_module("vramd_comfyui_pack._binding").import_vramd()
    pack.broker.client().cache_drop(vramd.open_model(a.ckpt))


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    load_s = None
    share = None
    if hasattr(out[0].model, "_vramd"):
        st = out[0].model._vramd.stats
        load_s = st.ns / 1e9
        share = st.share or "private"
    del out  # the model and its hooks form cycles: nothing of it may stay in a local
    mm.unload_all_models()
    gc.collect()
    return dt, load_s, share


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def first():
    folder_paths.add_model_folder_path("checkpoints", os.path.dirname(a.ckpt))
    runs = {k: [] for k in ("comfyui_cold", "comfyui_warm", "vramd_cold", "vramd_warm", "vramd_hit")}
    loads = {k: [] for k in ("vramd_cold", "vramd_warm", "vramd_hit")}
    want = {"vramd_cold": "filled", "vramd_warm": "filled", "vramd_hit": "hit"}
    for _ in range(a.rounds):
        for k, fn, prep in (("comfyui_cold", comfy_load, drop_pages), ("comfyui_warm", comfy_load, None),
                            ("vramd_cold", vramd_load, lambda: (drop_copies(), drop_pages())),
                            ("vramd_warm", vramd_load, drop_copies), ("vramd_hit", vramd_load, None)):
            if prep:
                prep()
            dt, load_s, share = timed(fn)
            if k in want and share != want[k]:
                raise SystemExit("comfy_bench: %s: the load's shared copy was %r, not %r" % (k, share, want[k]))
            runs[k].append(dt)
            if load_s is not None:
                loads[k].append(load_s)
        drop_copies()  # not held through ComfyUI's next round (memory)
        print("round:", json.dumps({k: round(v[-1], 3) for k, v in runs.items()}), file=sys.stderr, flush=True)
    res = {"file_bytes": os.path.getsize(a.ckpt), "rounds": a.rounds, "comfy_args": a.comfy_args}
    res.update({k + "_s": median(v) for k, v in runs.items()})
    res.update({k + "_load_s": median(v) for k, v in loads.items()})
    print(json.dumps(res), flush=True)
    if a.hold:
        held = vramd_load()  # noqa: F841 - held while the second instance loads
        open(os.path.join(a.hold, "ready"), "w").close()
        while not os.path.exists(os.path.join(a.hold, "done")):
            time.sleep(0.05)


def second():
    runs, loads = [], []
    for _ in range(a.rounds):
        dt, load_s, share = timed(vramd_load)
        if share != "hit":
            raise SystemExit("comfy_bench: the second instance's load was %r, not a hit" % share)
        runs.append(dt)
        loads.append(load_s)
    print(json.dumps({"second_s": median(runs), "second_load_s": median(loads)}), flush=True)


second() if a.second else first()
