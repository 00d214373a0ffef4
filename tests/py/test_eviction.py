# SPDX-License-Identifier: MIT
"""comfyui/loader.py's VramdModel without ComfyUI, against a real vramd:

- RECLAIM under fair shares (docs/protocol.md, "Cooperative reclaim and
  fair shares"): the node's private, reclaimable load holds most of a
  device; another client asks for no more than its fair share, which does
  not fit, so the broker asks the node (above its share) to give memory
  back.  Idle, the node gives all of it back and loads again at its next
  forward, same result; with one of its tensors alive elsewhere, or busy,
  it gives nothing and the asker is refused.  Each case checks the
  holdings that make it so first: nothing is left to timing.
- Shared loads (the node's default): the module's weights are read-only
  views of the broker's copy; make_writable gives one a private copy
  (what the patcher does before ComfyUI writes a weight in place), the
  other instance's copy stays as it was, and a written weight keeps the
  model from being evicted until it is restored.  A forced cache drop
  asks the node to let go.
"""
import gc
import os
import time
import unittest

import harness
import vramd

torch = None
MiB = 1 << 20
W = "model.diffusion_model.input_blocks.0.0.weight"
B = "model.diffusion_model.input_blocks.0.0.bias"


def setUpModule():
    global torch
    torch = harness.need_torch(unittest.TestCase())


def held(observer, name, device):
    st = observer.status()
    i = [d.name for d in st.devices].index(device)
    return sum(c.held_dev[i] for c in st.clients if c.name == name)


class NodeModel(unittest.TestCase):
    """A Linear whose weights are a node load's views, built as the node
    builds its components (Component.adopt, VramdModel.add, register)."""

    SIM = "8MiB"
    OUT, IN = 1280, 1024  # 5 MiB of fp32 weight: more than half of the 8 MiB device

    def setUp(self):
        torch.set_grad_enabled(False)  # as ComfyUI runs nodes (inference mode)
        self.addCleanup(torch.set_grad_enabled, True)
        self.b = harness.Broker(sim=self.SIM, host="64MiB", extra=("--reclaim-deadline-ms", "5000"))
        self.addCleanup(self.b.stop)
        self.path = os.path.join(self.b.dir, "m.safetensors")
        from safetensors.torch import save_file
        g = torch.Generator().manual_seed(1)
        self.w = torch.randn((self.OUT, self.IN), generator=g)
        save_file({W: self.w, B: torch.randn(self.OUT, generator=g)}, self.path)
        self.x = torch.randn((3, self.IN), generator=g)
        os.environ["VRAMD_SOCKET"] = self.b.socket
        os.environ["VRAMD_CLIENT_NAME"] = "node"
        self.pack = harness.import_pack()
        self.loader = self.pack.loader
        self.pack.broker.reset()
        self.addCleanup(self.pack.broker.reset)
        self.observer = vramd.connect(self.b.socket, "observer")
        self.addCleanup(self.observer.close)

    def build(self, shared):
        os.environ["VRAMD_SHARED"] = "1" if shared else "0"
        self.addCleanup(os.environ.pop, "VRAMD_SHARED", None)
        client = self.pack.broker.client()
        m = vramd.open_model(self.path)
        plan = client.plan(m, unet_compute_device="cuda:0", unet_virtual_vram_gb=0.0)
        vm = self.loader.VramdModel(client, m, plan, self.loader.load_options())
        lin = torch.nn.Linear(self.IN, self.OUT, device="meta")
        comp = self.loader.Component("unet", lin, torch.device("cpu"))
        names = {id(v): k for k, v in vm.views.items()}
        comp.adopt({"weight": vm.views[W], "bias": vm.views[B]}, names, vm.views)
        vm.add(comp)
        self.pack.broker.register(vm)
        return vm, lin

    def idle(self, vm):
        vm.last_used -= 10 * vm.IDLE_S


class Reclaim(NodeModel):
    def test_reclaim_under_fair_shares(self):
        vm, lin = self.build(shared=False)
        want = lin(self.x)
        self.assertEqual(lin.weight.data_ptr(), vm.loaded.host_ptr(W))
        self.assertFalse(vm.loaded.shared(W))
        other = vramd.connect(self.b.socket, "other")
        self.addCleanup(other.close)
        dev = other.device("cuda:0")
        ask = dev.total // 2  # the other's fair share once it asks: half
        node = held(self.observer, "node", "cuda:0")
        # what makes the broker ask the node: it holds more than its share
        # (half), and the ask does not fit in what is free
        self.assertGreater(node, dev.total // 2)
        self.assertGreater(ask, dev.total - node)

        # idle: everything given back, the ask served; the next forward loads again
        self.idle(vm)
        g = other.alloc("cuda:0", ask)
        self.assertEqual(vm.evictions, 1)
        self.assertFalse(vm.resident)
        self.assertEqual(lin.weight.device.type, "meta")
        self.assertEqual(held(self.observer, "node", "cuda:0"), 0)
        g.free()
        gc.collect()
        self.assertTrue(torch.equal(lin(self.x), want))
        self.assertTrue(vm.resident)
        self.assertEqual(held(self.observer, "node", "cuda:0"), node)

        # a tensor alive outside the model: unbound, but its grant stays
        # (reported as 0 freed, so the asker is refused), valid, until it dies
        alive = vm.views[W]
        self.idle(vm)
        with self.assertRaises(vramd.VramError) as cm:
            other.alloc("cuda:0", ask)
        self.assertIn("the clients asked to reclaim freed too little", str(cm.exception))
        self.assertEqual(vm.evictions, 2)
        self.assertTrue(torch.equal(alive, self.w))
        self.assertEqual(held(self.observer, "node", "cuda:0"), node)
        del alive
        gc.collect()
        self.assertEqual(held(self.observer, "node", "cuda:0"), 0)
        self.assertTrue(torch.equal(lin(self.x), want))

        # busy (a forward running): not evicted, the asker refused
        vm.active += 1
        self.idle(vm)
        with self.assertRaises(vramd.VramError) as cm:
            other.alloc("cuda:0", ask)
        self.assertIn("the clients asked to reclaim freed too little", str(cm.exception))
        self.assertTrue(vm.resident)
        self.assertEqual(vm.evictions, 2)
        vm.active -= 1

        # and idle again: given back at once
        self.idle(vm)
        other.alloc("cuda:0", ask).free()
        self.assertEqual(vm.evictions, 3)


class Shared(NodeModel):
    SIM = "32MiB"

    def test_shared_by_default_and_written_through_a_private_copy(self):
        os.environ.pop("VRAMD_SHARED", None)
        self.assertTrue(self.loader.load_options()["shared"])
        self.assertTrue(self.loader.load_options()["reclaimable"])
        vm, lin = self.build(shared=True)
        self.assertEqual(vm.stats.share, "filled")
        self.assertIn("shared copy: filled", vm.stats.share_text())
        self.assertTrue(vm.loaded.shared(W) and vm.loaded.shared(B))
        want = lin(self.x)
        # a second instance maps the same copy
        other = vramd.connect(self.b.socket, "instance-2")
        self.addCleanup(other.close)
        m2 = vramd.open_model(self.path)
        l2 = other.load(m2, other.plan(m2, unet_compute_device="cuda:0", unet_virtual_vram_gb=0.0), shared=True)
        self.assertEqual(l2.stats().share, "hit")
        self.assertEqual(l2.host_ptr(W) != 0, True)
        self.assertFalse(l2.numpy(W).flags.writeable)

        # what the patcher does before an in-place write (hook patches)
        old = lin.weight
        self.assertTrue(vm.make_writable(lin, "weight"))
        self.assertFalse(vm.loaded.shared(W))
        self.assertTrue(vm.loaded.shared(B))
        self.assertIsNot(lin.weight, old)
        self.assertEqual(lin.weight.data_ptr(), vm.loaded.host_ptr(W))
        self.assertTrue(torch.equal(lin.weight, self.w))
        self.assertEqual(vm.written, {W})
        with torch.inference_mode(False):
            lin.weight.mul_(2)  # would be SIGSEGV on the shared copy
        self.assertTrue(torch.equal(l2.torch(W), self.w))  # the other instance's copy is untouched
        self.assertTrue(torch.equal(old, self.w))          # and so is the old view
        self.assertFalse(torch.equal(lin(self.x), want))
        # written: never evicted (a reload would undo the write behind ComfyUI's back)
        self.idle(vm)
        self.assertEqual(vm.evict_if_idle(0), 0)
        with torch.inference_mode(False):
            lin.weight.copy_(self.w)
        vm.mark_restored(lin, "weight")
        self.assertEqual(vm.written, set())
        self.assertTrue(torch.equal(lin(self.x), want))
        # not ours: a module attribute that is no vramd view
        lin.extra = torch.nn.Parameter(torch.zeros(2), requires_grad=False)
        self.assertFalse(vm.make_writable(lin, "extra"))
        # a second make_writable of the private one: nothing to do
        ptr = lin.weight.data_ptr()
        self.assertTrue(vm.make_writable(lin, "weight"))
        self.assertEqual(lin.weight.data_ptr(), ptr)
        vm.mark_restored(lin, "weight")

        # a forced cache drop asks the instances mapping the copy to let go:
        # the idle node model does (and loads again, a new fill, at its next use)
        del l2, old
        other.close()
        gc.collect()
        self.idle(vm)
        admin = vramd.connect(self.b.socket, "admin")
        self.addCleanup(admin.close)
        admin.cache_drop(vramd.open_model(self.path), force=True)
        for _ in range(500):
            if vm.evictions:
                break
            time.sleep(0.01)
        self.assertEqual(vm.evictions, 1)
        self.assertTrue(torch.equal(lin(self.x), want))
        self.assertIn(vm.stats.share, ("filled", "hit"))

    def test_opt_out_is_private_and_writable(self):
        vm, lin = self.build(shared=False)
        self.assertFalse(self.loader.load_options()["shared"])
        self.assertEqual(vm.stats.share, "")
        self.assertFalse(vm.loaded.shared(W))
        self.assertTrue(vm.make_writable(lin, "weight"))
        self.assertEqual(lin.weight.data_ptr(), vm.loaded.host_ptr(W))  # no copy needed
        vm.mark_restored(lin, "weight")


if __name__ == "__main__":
    harness.run(__name__)
