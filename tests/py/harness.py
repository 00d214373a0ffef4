# SPDX-License-Identifier: MIT
"""Shared by the Python suites: a real vramd on simulated GPUs in a temp
dir, checkpoints written with the reference safetensors library, the C
compiler's view of vram.h's structs."""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("VRAM_BUILD") or "build"
BUILD = BUILD if os.path.isabs(BUILD) else os.path.join(ROOT, BUILD)
sys.path.insert(0, os.path.join(ROOT, "python"))
os.environ.setdefault("VRAMD_LIBRARY", os.path.join(BUILD, "lib", "libvram.so.0"))


def _alive(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


class Broker:
    """vramd --sim-gpus ... on DIR/vramd.sock; stop() or context manager."""

    def __init__(self, sim="64MiB", host="64MiB", extra=()):
        self.dir = tempfile.mkdtemp(prefix="vramd-py-")
        self.socket = os.path.join(self.dir, "vramd.sock")
        admin = os.path.join(self.dir, "admin.sock")
        args = [os.path.join(BUILD, "bin", "vramd"), "--socket", self.socket, "--admin-socket", admin,
                "--state-dir", os.path.join(self.dir, "state"), "--socket-mode", "0666",
                "--host-pool", host, *extra]
        if sim:
            args += ["--sim-gpus", sim]
        if "--cuda" in args:
            args.remove("--cuda")
        else:
            args.append("--no-cuda")
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        env.pop("LISTEN_FDS", None)
        self.log = open(os.path.join(self.dir, "vramd.log"), "w")
        self.proc = subprocess.Popen(args, stderr=self.log, env=env)
        for _ in range(500):
            if _alive(self.socket) and _alive(admin):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        self.stop()
        raise RuntimeError("vramd did not start: " + open(os.path.join(self.dir, "vramd.log")).read())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def c_sizes():
    """{struct name: sizeof} compiled from runtime/vram.h by the C compiler."""
    import vramd._native as N
    names = sorted(N.STRUCTS)
    src = "#include <stdio.h>\n#include \"runtime/vram.h\"\nint main(void){\n"
    for n in names:
        src += 'printf("%%s %%zu\\n", "%s", sizeof(struct %s));\n' % (n, n)
    src += "return 0;}\n"
    d = tempfile.mkdtemp(prefix="vramd-sizes-")
    try:
        exe = os.path.join(d, "sizes")
        subprocess.run([os.environ.get("CC", "cc"), "-I", ROOT, "-x", "c", "-", "-o", exe], input=src.encode(),
                       check=True)
        out = subprocess.run([exe], check=True, capture_output=True).stdout.decode()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def write_checkpoint(path, seed=5, blocks=6, rows=33, cols=17, dtypes=("F16", "F32")):
    """A small checkpoint (numpy reference writer): unet blocks of a
    rows x cols weight (dtypes[0]) and a bias (dtypes[1]) each, a CLIP
    embedding and layers, a VAE conv; odd sizes so nothing is aligned.
    Returns {name: numpy array} as written."""
    import numpy as np
    from safetensors.numpy import save_file
    r = np.random.default_rng(seed)
    npd = {"F16": np.float16, "F32": np.float32}
    t = {}
    for i in range(blocks):
        t["model.diffusion_model.input_blocks.%d.0.weight" % i] = r.standard_normal((rows, cols)).astype(npd[dtypes[0]])
        t["model.diffusion_model.input_blocks.%d.0.bias" % i] = r.standard_normal(cols).astype(npd[dtypes[1]])
    t["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] = \
        r.standard_normal((301, 17)).astype(np.float16)
    for i in range(3):
        t["cond_stage_model.transformer.text_model.encoder.layers.%d.mlp.fc1.weight" % i] = \
            r.standard_normal((33, 65)).astype(np.float32)
    t["first_stage_model.decoder.conv_in.weight"] = r.standard_normal((13, 7, 3, 3)).astype(np.float32)
    save_file(t, path, metadata={"format": "pt"})
    return t


def need_torch(case):
    """Imports torch or fails the test (CI installs it: make deps)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        case.fail("torch is not installed: run `make deps` (it installs torch into .venv)")
    import torch
    return torch


def import_pack(name="vramd_comfyui_pack"):
    """The node pack (comfyui/) as a package, without ComfyUI: ComfyUI
    imports it by folder name; here it gets a name of its own."""
    import importlib.util
    if name in sys.modules:
        return sys.modules[name]
    d = os.path.join(ROOT, "comfyui")
    spec = importlib.util.spec_from_file_location(name, os.path.join(d, "__init__.py"),
                                                  submodule_search_locations=[d])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    import importlib as il
    for sub in ("nodes", "broker"):
        setattr(mod, sub, il.import_module(name + "." + sub))
    try:
        mod.loader = il.import_module(name + ".loader")
    except ImportError:
        pass  # torch absent
    return mod


def run(module):
    """Runs one suite module; exit status 0 when all passed or skipped."""
    suite = unittest.defaultTestLoader.loadTestsFromName(module)
    res = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    for case, why in res.skipped:
        print("SKIPPED %s: %s" % (case.id(), why))
    sys.exit(0 if res.wasSuccessful() else 1)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    run(sys.argv[1])
