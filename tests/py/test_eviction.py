# SPDX-License-Identifier: MIT
"""NOT YET IN make check: the node's eviction on RECLAIM.  Flaky (about 2
runs in 3 fail here): the first allocation by another client sometimes
succeeds without the node being asked to reclaim (evictions stays 0), as if
the node's load did not hold memory on cuda:0.  Run by hand:
    .venv/bin/python tests/py/harness.py test_eviction
"""
import gc
import os
import unittest

import harness
import vramd

torch = None


def setUpModule():
    global torch
    torch = harness.need_torch(unittest.TestCase())


class NodeEviction(unittest.TestCase):
    """comfyui/loader.py's VramdModel without ComfyUI: a module whose
    weights are vramd views gives them back on RECLAIM while idle (the
    tensors it handed out stay valid), and its next forward loads them
    again, with the same result."""

    def test_reclaim_while_tensors_alive(self):
        torch.set_grad_enabled(False)  # as ComfyUI runs nodes (inference mode)
        self.addCleanup(torch.set_grad_enabled, True)
        with harness.Broker(sim="8MiB", host="64MiB", extra=("--reclaim-deadline-ms", "1000")) as b:
            path = os.path.join(b.dir, "m.safetensors")
            from safetensors.torch import save_file
            g = torch.Generator().manual_seed(1)
            w = torch.randn((512, 1024), generator=g)
            save_file({"model.diffusion_model.input_blocks.0.0.weight": w,
                       "model.diffusion_model.input_blocks.0.0.bias": torch.randn(512, generator=g)}, path)
            os.environ["VRAMD_SOCKET"] = b.socket
            os.environ["VRAMD_CLIENT_NAME"] = "node"
            pack = harness.import_pack()
            loader = pack.loader
            pack.broker.reset()
            client = pack.broker.client()
            m = vramd.open_model(path)
            plan = client.plan(m, unet_compute_device="cuda:0", unet_virtual_vram_gb=0.0)
            vm = loader.VramdModel(client, m, plan, dict(reclaimable=True))
            lin = torch.nn.Linear(1024, 512, device="meta")
            comp = loader.Component("unet", lin, torch.device("cpu"))
            sd = {"weight": vm.views["model.diffusion_model.input_blocks.0.0.weight"],
                  "bias": vm.views["model.diffusion_model.input_blocks.0.0.bias"]}
            names = {id(v): k for k, v in vm.views.items()}
            comp.adopt(sd, names, vm.views)
            del sd
            vm.add(comp)
            pack.broker.register(vm)
            x = torch.randn((3, 1024), generator=g)
            want = lin(x)
            self.assertEqual(lin.weight.data_ptr(), vm.loaded.host_ptr(1))
            vm.last_used -= 10  # idle
            other = vramd.connect(b.socket, "other")
            total = other.device("cuda:0").total  # fits only once the node gave everything back
            g2 = other.alloc("cuda:0", total)
            self.assertEqual(vm.evictions, 1)
            self.assertFalse(vm.resident)
            self.assertEqual(lin.weight.device.type, "meta")
            g2.free()
            gc.collect()
            got = lin(x)  # loads again
            self.assertTrue(vm.resident)
            self.assertTrue(torch.equal(got, want))
            # a tensor alive outside the model: evicted, but its grant stays
            # (reported as 0 freed, so the asker is refused), valid, until it dies
            alive = vm.views["model.diffusion_model.input_blocks.0.0.weight"]
            vm.last_used -= 10
            with self.assertRaises(vramd.VramError):
                other.alloc("cuda:0", total)
            self.assertEqual(vm.evictions, 2)
            self.assertTrue(torch.equal(alive, w))
            del alive
            gc.collect()
            g2 = other.alloc("cuda:0", total)
            g2.free()
            gc.collect()
            self.assertTrue(torch.equal(lin(x), want))
            # busy (a forward running): not evicted
            vm.active += 1
            vm.last_used -= 10
            with self.assertRaises(vramd.VramError):
                other.alloc("cuda:0", total)
            self.assertTrue(vm.resident)
            self.assertEqual(vm.evictions, 2)
            vm.active -= 1
            other.close()
            pack.broker.reset()


if __name__ == "__main__":
    harness.run(__name__)
