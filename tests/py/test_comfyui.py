# SPDX-License-Identifier: MIT
"""With a real ComfyUI (opt-in): COMFYUI_DIR names a checkout, COMFYUI_PYTHON
its interpreter (default: COMFYUI_DIR/.venv/bin/python, else python3).
comfy_compare.py, run there, loads a generated SD1.5-shaped checkpoint
through ComfyUI's CheckpointLoaderSimple and through the vramd node and
compares classes, weights and UNet/CLIP/VAE outputs on the CPU.  With
COMFYUI_GGUF_DIR too (a ComfyUI-GGUF checkout), comfy_gguf_compare.py does
the same for a quantised Flux-shaped GGUF against ComfyUI-GGUF's loader."""
import os
import subprocess
import unittest

import harness

COMFYUI = os.environ.get("COMFYUI_DIR")


@unittest.skipUnless(COMFYUI, "COMFYUI_DIR is not set (a ComfyUI checkout to compare against)")
class RealComfyUI(unittest.TestCase):
    def test_same_models_as_comfyuis_loader(self):
        py = os.environ.get("COMFYUI_PYTHON") or os.path.join(COMFYUI, ".venv", "bin", "python")
        if not os.path.exists(py):
            py = "python3"
        with harness.Broker(sim="2GiB", host="2GiB") as b:
            env = dict(os.environ, VRAMD_LIBRARY=os.environ["VRAMD_LIBRARY"])
            # Not from a folder holding a nodes.py: the fork re-executes then.
            r = subprocess.run([py, os.path.join(harness.ROOT, "tests", "py", "comfy_compare.py"), "--comfyui",
                                COMFYUI, "--socket", b.socket, "--dir", b.dir], cwd=b.dir, env=env,
                               capture_output=True, text=True, timeout=900)
            out = r.stdout.strip().splitlines()
            self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr[-3000:])
            self.assertEqual(out[-1], "OK", r.stdout[-3000:])
            print("\n".join(out[-3:-1]))  # what was compared, the LoRA line


@unittest.skipUnless(COMFYUI and os.environ.get("COMFYUI_GGUF_DIR"),
                     "COMFYUI_DIR and COMFYUI_GGUF_DIR are not both set (a ComfyUI checkout and a "
                     "ComfyUI-GGUF checkout, city96/ComfyUI-GGUF, to compare against)")
class RealComfyUIGGUF(unittest.TestCase):
    def test_same_gguf_model_as_comfyui_ggufs_loader(self):
        py = os.environ.get("COMFYUI_PYTHON") or os.path.join(COMFYUI, ".venv", "bin", "python")
        if not os.path.exists(py):
            py = "python3"
        with harness.Broker(sim="1GiB", host="1GiB") as b:
            r = subprocess.run([py, os.path.join(harness.ROOT, "tests", "py", "comfy_gguf_compare.py"),
                                "--comfyui", COMFYUI, "--gguf-node", os.environ["COMFYUI_GGUF_DIR"],
                                "--socket", b.socket, "--dir", b.dir], cwd=b.dir, env=dict(os.environ),
                               capture_output=True, text=True, timeout=900)
            out = r.stdout.strip().splitlines()
            self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr[-3000:])
            self.assertEqual(out[-1], "OK", r.stdout[-3000:])
            print(out[-2])


class Cuda(unittest.TestCase):
    """On a machine with an NVIDIA GPU and a broker with CUDA pools: the
    CUDA tensor path and a forward with a donor layer paged in."""

    def setUp(self):
        torch = harness.need_torch(self)
        if not torch.cuda.is_available():
            self.skipTest("no CUDA device visible to torch")
        self.torch = torch

    def test_cuda_views_and_paged_forward(self):
        torch = self.torch
        import vramd
        from safetensors.torch import save_file
        with harness.Broker(sim=None, host="1GiB", extra=("--cuda",)) as b:
            c = vramd.connect(b.socket, "cuda-test")
            if not any(d.backend == "cuda" for d in c.devices):
                self.skipTest("the broker sees no CUDA device: " + c.note)
            path = os.path.join(b.dir, "m.safetensors")
            g = torch.Generator().manual_seed(2)
            ref = {"model.diffusion_model.input_blocks.%d.0.weight" % i: torch.randn((256, 256), generator=g)
                   .to(torch.bfloat16) for i in range(4)}
            save_file(ref, path)
            m = vramd.open_model(path)
            plan = c.plan(m, unet_compute_device="cuda:0", unet_expert_mode_allocations="cuda:0,50%;cpu,50%")
            loaded = c.load(m, plan)
            x = torch.randn((8, 256), generator=g).to(torch.bfloat16).cuda()
            pager = loaded.pager(dispatch_thread=False, reclaim=False)
            donors = set(plan.donor_layers())
            self.assertTrue(donors)
            for t in m.tensors:
                want = ref[t.name].cuda()
                if t.layer in donors:
                    with pager.layer(t.layer):
                        w = pager.torch(t.index)
                        self.assertEqual(w.device.type, "cuda")
                        y = x @ w
                        torch.cuda.synchronize()
                else:
                    w = loaded.torch(t.index)
                    self.assertEqual(w.device.type, "cuda")
                    self.assertEqual(w.data_ptr(), loaded.device_ptr(t.index))
                    y = x @ w
                self.assertTrue(torch.equal(y, x @ want), t.name)


if __name__ == "__main__":
    harness.run(__name__)
