# SPDX-License-Identifier: MIT
"""The binding with torch (CPU; PyPI's wheel runs without a GPU) against a
real vramd on simulated GPUs: tensors share the grants, equal the
reference reader for F16/BF16/F32/F8, keep the grants alive, follow the
plan; shared copies are read-only (a write from another process faults)
until a tensor is made private; DEMAND and OFFER; pager views."""
import errno
import gc
import os
import unittest

import harness
import vramd

torch = None


def setUpModule():
    global torch
    torch = harness.need_torch(unittest.TestCase())


def write_mixed(path):
    """Every dtype the node meets: F16, BF16, F32, F8_E4M3, F8_E5M2, odd sizes."""
    from safetensors.torch import save_file
    g = torch.Generator().manual_seed(3)
    t = {}
    for i, dt in enumerate((torch.float16, torch.bfloat16, torch.float32, torch.float8_e4m3fn,
                            torch.float8_e5m2)):
        w = torch.randn((29, 13), generator=g) * 4
        t["model.diffusion_model.input_blocks.%d.0.weight" % i] = w.to(dt)
        t["model.diffusion_model.input_blocks.%d.0.bias" % i] = torch.randn(13, generator=g).to(dt)
    t["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] = \
        torch.randn((31, 7), generator=g).to(torch.bfloat16)
    t["first_stage_model.decoder.conv_in.weight"] = torch.randn((5, 3, 3, 3), generator=g)
    save_file(t, path)
    return t


def held_by(observer, name):
    return sum(c.held for c in observer.status().clients if c.name == name)


class TorchViews(unittest.TestCase):
    def setUp(self):
        self.broker = harness.Broker(sim="64MiB,64MiB")
        self.path = os.path.join(self.broker.dir, "mixed.safetensors")
        self.ref = write_mixed(self.path)
        self.observer = vramd.connect(self.broker.socket, "observer")

    def tearDown(self):
        self.observer.close()
        gc.collect()
        self.broker.stop()

    def test_equal_to_reference_and_shared(self):
        c = vramd.connect(self.broker.socket, "t")
        m = vramd.open_model(self.path)
        plan = c.plan(m, unet_compute_device="cuda:0", unet_virtual_vram_gb=0.0, clip_compute_device="cuda:1",
                      clip_virtual_vram_gb=0.0, vae_device="cpu")
        loaded = c.load(m, plan)
        sd = loaded.state_dict()
        self.assertEqual(set(sd), set(self.ref))
        for name, want in self.ref.items():
            got = sd[name]
            self.assertEqual(got.dtype, want.dtype, name)
            self.assertEqual(got.shape, want.shape, name)
            self.assertTrue(torch.equal(got.view(torch.uint8), want.view(torch.uint8)), name)
            i = m.tensor(name).index
            self.assertEqual(got.data_ptr(), loaded.host_ptr(i), name)
            self.assertEqual(loaded.device(i).name, plan.tensor_device(i), name)
            self.assertEqual(got.device.type, "cpu")
        self.assertEqual({loaded.device(m.tensor(n).index).name for n in sd if n.startswith("cond")}, {"cuda:1"})
        # writes show through: torch -> numpy view of the same grant
        w = sd["model.diffusion_model.input_blocks.0.0.weight"]
        w[0, 0] = 11.0
        self.assertEqual(float(loaded.numpy(m.tensor("model.diffusion_model.input_blocks.0.0.weight").index)[0, 0]),
                         11.0)
        # the last tensor releases the grants
        loaded.close()
        c.close()
        del loaded, c, plan, m
        gc.collect()
        self.assertGreater(held_by(self.observer, "t"), 0)
        keep = sd["first_stage_model.decoder.conv_in.weight"]
        sd = w = got = want = None
        gc.collect()
        self.assertGreater(held_by(self.observer, "t"), 0)
        self.assertTrue(torch.equal(keep, self.ref["first_stage_model.decoder.conv_in.weight"]))
        del keep
        gc.collect()
        self.assertEqual(held_by(self.observer, "t"), 0)

    def test_converted_load_matches_torch(self):
        c = vramd.connect(self.broker.socket, "cast")
        m = vramd.open_model(self.path)
        loaded = c.load(m, device="cpu", cast_to="F32", cast_from=["F16", "BF16", "F8_E4M3", "F8_E5M2"])
        for name, want in self.ref.items():
            got = loaded.torch(name)
            self.assertEqual(got.dtype, torch.float32, name)
            self.assertTrue(torch.equal(got, want.to(torch.float32)), name)
        self.assertGreater(loaded.stats().converted, 0)

    def test_shared_copies_read_only_until_made_private(self):
        c = vramd.connect(self.broker.socket, "first")
        m = vramd.open_model(self.path)
        first = c.load(m, device="cuda:0", shared=True)
        st = first.stats()
        self.assertEqual(st.share, "filled")
        self.assertEqual((st.share_hits, st.share_waited, st.share_refused), (0, 0, 0))
        self.assertEqual(st.shared_bytes, st.bytes)
        self.assertIn("shared copy: filled", st.share_text())
        names = list(self.ref)
        self.assertTrue(all(first.shared(n) for n in names))
        self.assertFalse(first.numpy(names[0]).flags.writeable)
        self.assertEqual(held_by(self.observer, "first"), 0)  # copies are nobody's grants
        mapped = [x for x in self.observer.status().clients if x.name == "first"][0].shared_dev[0]
        self.assertGreaterEqual(mapped, st.shared_bytes)  # whole copies, granule-rounded
        self.assertEqual(mapped, sum(d["in_use"] for d in c.cache_list()["devices"]))
        # another process maps the same copy (a hit), equal to the file, and
        # dies writing it: the mapping is read-only
        child = ("import sys, vramd, torch\n"
                 "c = vramd.connect(sys.argv[1], 'second'); m = vramd.open_model(sys.argv[2])\n"
                 "l = c.load(m, device='cuda:0', shared=True)\n"
                 "print(l.stats().share, flush=True)\n"
                 "w = l.torch(sys.argv[3]); print(float(w.flatten()[0]), flush=True)\n"
                 "w.flatten()[0] = 7\n"
                 "print('wrote', flush=True)\n")
        import subprocess
        import sys
        name = names[0]
        # (under make asan: ASan leaves the SIGSEGV to the kernel, so the
        # child dies of it rather than exiting 1 with a report)
        asan = ":".join(filter(None, (os.environ.get("ASAN_OPTIONS"), "handle_segv=0")))
        r = subprocess.run([sys.executable, "-c", child, self.broker.socket, self.path, name],
                           capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=os.path.join(
                               harness.ROOT, "python"), ASAN_OPTIONS=asan), timeout=120)
        out = r.stdout.split()
        self.assertEqual(out[0], "hit", r.stdout + r.stderr)
        self.assertEqual(float(out[1]), float(self.ref[name].flatten()[0].float()), r.stdout)
        self.assertNotIn("wrote", out, r.stdout)
        self.assertEqual(r.returncode, -11, "the write should fault (SIGSEGV): " + r.stdout + r.stderr)
        # a private copy of one tensor: writable, the copy everyone maps untouched
        v = first.torch(name)
        first.make_private(name)
        self.assertFalse(first.shared(name))
        self.assertTrue(first.shared(names[1]))
        self.assertTrue(first.numpy(name).flags.writeable)
        p = first.torch(name)
        self.assertNotEqual(p.data_ptr(), v.data_ptr())
        self.assertTrue(torch.equal(p, self.ref[name]))
        p.flatten()[0] = 7
        self.assertEqual(float(first.torch(name).flatten()[0]), 7.0)
        self.assertTrue(torch.equal(v, self.ref[name]))  # the old view still shows the copy
        first.make_private(name)  # private already: nothing
        self.assertEqual(first.torch(name).data_ptr(), p.data_ptr())
        self.assertGreater(held_by(self.observer, "first"), 0)  # the private copy is its own grant
        third = vramd.connect(self.broker.socket, "third").load(m, device="cuda:0", shared=True)
        self.assertEqual(third.stats().share, "hit")
        self.assertTrue(torch.equal(third.torch(name), self.ref[name]))
        # a private load (the default) shares nothing
        own = c.load(m, device="cuda:0")
        self.assertEqual(own.stats().share, "")
        self.assertFalse(any(own.shared(n) for n in names))
        # dropping: refused while in use, done once nobody maps the copies
        with self.assertRaises(vramd.VramError) as cm:
            c.cache_drop(m)
        self.assertEqual(cm.exception.errno, errno.EBUSY)
        del first, third, v, p
        gc.collect()
        c.cache_drop(m)
        self.assertEqual(c.cache_list()["copies"], [])
        again = c.load(m, device="cuda:0", shared=True)
        self.assertEqual(again.stats().share, "filled")

    def test_demand_and_offer(self):
        c = vramd.connect(self.broker.socket, "wants")
        c.demand("cuda:1", 48 << 20, 8 << 20)
        me = [x for x in self.observer.status().clients if x.name == "wants"][0]
        self.assertEqual(me.want_dev[1], 48 << 20)
        self.assertEqual(me.share_dev[1], 48 << 20)  # alone: all it wants
        with self.assertRaises(vramd.VramError) as cm:
            c.demand("cuda:1", 1 << 20, 2 << 20)  # min above want
        self.assertEqual(cm.exception.errno, errno.EINVAL)
        # another client holds most of the device: "wants" is below its
        # share; when that memory is freed, it is offered some
        offers = []
        c.set_offer_handler(lambda dev, n: offers.append((dev, n)))
        other = vramd.connect(self.broker.socket, "holder")
        g = other.alloc("cuda:1", 40 << 20)
        me = [x for x in self.observer.status().clients if x.name == "wants"][0]
        self.assertLess(me.held_dev[1], me.share_dev[1])
        g.free()
        import select
        ready, _, _ = select.select([c.fileno()], [], [], 30)
        self.assertTrue(ready, "no OFFER came")
        c.dispatch()
        self.assertEqual(len(offers), 1)
        self.assertEqual(offers[0][0], 1)
        self.assertGreater(offers[0][1], 0)
        c.set_offer_handler(None)
        c.demand("cuda:1", 0, 0)

    def test_pager_views(self):
        c = vramd.connect(self.broker.socket, "pg")
        m = vramd.open_model(self.path)
        plan = c.plan(m, unet_compute_device="cuda:0", unet_expert_mode_allocations="cuda:0,40%;cpu,60%")
        donors = plan.donor_layers("unet")
        self.assertTrue(donors)
        loaded = c.load(m, plan)
        pager = loaded.pager(dispatch_thread=False, reclaim=False)
        for li in donors:
            with pager.layer(li):
                for t in m.layer_tensors(li):
                    got = pager.torch(t.index)
                    self.assertTrue(torch.equal(got.view(torch.uint8), self.ref[t.name].view(torch.uint8)))
                    self.assertNotEqual(got.data_ptr(), loaded.host_ptr(t.index))
        self.assertGreater(pager.stats().acquires, 0)
        # Released in a stream's order: on simulated GPUs a plain release
        # (the handle is never looked at); the next acquire reads the
        # right bytes, a second release says the layer is not acquired.
        for li in donors:
            pager.acquire(li)
            pager.release(li, stream=0xdead)
            with self.assertRaises(vramd.VramError) as e:
                pager.release(li)
            self.assertIn("is not acquired", str(e.exception))
            with pager.layer(li, stream=0):
                for t in m.layer_tensors(li):
                    got = pager.torch(t.index)
                    self.assertTrue(torch.equal(got.view(torch.uint8), self.ref[t.name].view(torch.uint8)))
        with self.assertRaises(TypeError):
            pager.release(donors[0], stream="current")


class NodePager(unittest.TestCase):
    """The node pack's VRAMD_PAGER=1 path without ComfyUI: a stand-in UNet
    (Linear layers named as a UNet's blocks) built over a vramd load whose
    plan puts some blocks on the cpu donor; with the pager, each donor
    module's forward runs on the pager's copies in the window and the
    outputs equal those of the default path (the donor views, as ComfyUI's
    cast path would read them)."""

    BLOCKS = 6

    def setUp(self):
        from safetensors.torch import save_file
        self.broker = harness.Broker(sim="64MiB,64MiB")
        self.path = os.path.join(self.broker.dir, "blocks.safetensors")
        g = torch.Generator().manual_seed(11)
        t = {}
        for i in range(self.BLOCKS):
            t["model.diffusion_model.input_blocks.%d.0.weight" % i] = torch.randn((64, 64), generator=g) / 8
            t["model.diffusion_model.input_blocks.%d.0.bias" % i] = torch.randn(64, generator=g)
        save_file(t, self.path)
        self.saved = os.environ.get("VRAMD_PAGER")
        self.pack = harness.import_pack()
        self.loader = __import__(self.pack.__name__ + ".loader", fromlist=["loader"])

    def tearDown(self):
        if self.saved is None:
            os.environ.pop("VRAMD_PAGER", None)
        else:
            os.environ["VRAMD_PAGER"] = self.saved
        gc.collect()
        self.broker.stop()

    def build(self, c, m, pager):
        """(VramdModel, stand-in UNet, marked paths) with VRAMD_PAGER as told."""
        L = self.loader
        os.environ["VRAMD_PAGER"] = "1" if pager else "0"
        plan = c.plan(m, unet_compute_device="cuda:0", unet_expert_mode_allocations="cuda:0,40%;cpu,60%")
        vm = L.VramdModel(c, m, plan, dict(reclaimable=False, shared=False))
        with torch.device("meta"):
            unet = torch.nn.Module()
            unet.input_blocks = torch.nn.ModuleList(
                torch.nn.Sequential(torch.nn.Linear(64, 64)) for _ in range(self.BLOCKS))
        comp = L.Component("unet", unet, torch.device("cpu"))
        names = {id(v): k for k, v in vm.views.items()}
        prefix = "model.diffusion_model."
        comp.adopt({k[len(prefix):]: v for k, v in vm.views.items() if k.startswith(prefix)}, names, vm.views)
        vm.add(comp)
        return vm, unet, vm.mark_donors(comp)

    @staticmethod
    def forward(unet, x):
        for b in unet.input_blocks:
            x = torch.tanh(b(x))
        return x

    def test_pager_serves_donor_modules(self):
        c = vramd.connect(self.broker.socket, "np")
        m = vramd.open_model(self.path)
        x = torch.randn((3, 64), generator=torch.Generator().manual_seed(2))
        vm0, unet0, marked0 = self.build(c, m, pager=False)
        self.assertEqual(marked0, [])  # plain Linear: no comfy_cast_weights to set
        want = self.forward(unet0, x)
        vm, unet, paged = self.build(c, m, pager=True)
        donors = {"input_blocks.%d.0" % m.tensor(n).layer for n in vm.plan.donor_tensors()}
        self.assertTrue(donors)
        self.assertEqual(sorted(paged), sorted(donors))
        seen = {}
        for path in paged:
            mod = unet.get_submodule(path)
            mod.register_forward_pre_hook(lambda mod, args, path=path: seen.__setitem__(
                path, (mod.weight.data_ptr(), mod.weight.clone())))
        for _ in range(3):  # passes: the window is reused, prefetch follows the order
            got = self.forward(unet, x)
            self.assertTrue(torch.equal(got, want))
        for path in paged:
            mod = unet.get_submodule(path)
            src = "model.diffusion_model.%s.weight" % path
            ptr, w = seen[path]
            self.assertNotEqual(ptr, vm.views[src].data_ptr())  # the pager's copy
            self.assertTrue(torch.equal(w, vm.views[src]))
            self.assertEqual(mod.weight.data_ptr(), vm.views[src].data_ptr())  # the donor view again
        st = vm.pager.stats()
        self.assertGreaterEqual(st.acquires, 3 * len(paged))  # a module's weight and bias: one layer
        self.assertGreater(st.bytes_paged, 0)
        # a forward that raises releases what it acquired (more of them than
        # the pager lets be outstanding) and leaves the donor view in place
        mod = unet.get_submodule(paged[0])
        for _ in range(10):
            with self.assertRaises(RuntimeError):
                mod(torch.randn((3, 65)))
        self.assertEqual(mod.weight.data_ptr(), vm.views["model.diffusion_model.%s.weight" % paged[0]].data_ptr())
        self.assertTrue(torch.equal(self.forward(unet, x), want))
        vm.pager.close()
        vm.pager = None


def write_flux_gguf(path):
    """A small GGUF diffusion model as city96's converter writes one: Flux's
    key names without prefix, general.architecture "flux", quantised
    weights (Q8_0, Q4_0, Q5_1, BF16) beside F32 biases and an F16 weight;
    written with PyPI gguf's GGUFWriter."""
    import gguf
    import numpy as np
    Q = gguf.GGMLQuantizationType
    rng = np.random.default_rng(5)
    w = gguf.GGUFWriter(path, "flux")
    for name, shape, qt in (("double_blocks.0.img_attn.qkv.weight", (96, 64), Q.Q8_0),
                            ("double_blocks.0.img_attn.qkv.bias", (96,), Q.F32),
                            ("double_blocks.0.img_mlp.0.weight", (128, 64), Q.Q4_0),
                            ("single_blocks.0.linear1.weight", (64, 256), Q.Q5_1),
                            ("img_in.weight", (64, 64), Q.F16),
                            ("final_layer.linear.weight", (64, 64), Q.BF16)):
        a = rng.standard_normal(shape).astype(np.float32)
        if qt == Q.F32:
            w.add_tensor(name, a)
        elif qt == Q.F16:
            w.add_tensor(name, a.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(a, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


class GgufNode(unittest.TestCase):
    """Load Diffusion Model (vramd) on a quantised GGUF file: without
    ComfyUI-GGUF, one clear message naming it; with it, the tensors as its
    gguf_sd_loader makes them (GGMLTensor over the raw blocks).  ComfyUI-GGUF
    needs ComfyUI, which CI has not: a stand-in with its GGMLTensor's
    constructor takes its place here (ComfyUI-GGUF itself is not
    installed), and ComfyUI's model build from that state dict is not run."""

    def setUp(self):
        self.broker = harness.Broker(sim="64MiB,64MiB")
        os.environ["VRAMD_SOCKET"] = self.broker.socket
        self.path = os.path.join(self.broker.dir, "flux-q8.gguf")
        write_flux_gguf(self.path)
        self.pack = harness.import_pack()

    def tearDown(self):
        self.pack.broker.reset()
        gc.collect()
        self.broker.stop()

    def test_needs_comfyui_gguf(self):
        loader = self.pack.loader
        self.assertIsNone(loader.comfyui_gguf())
        node = self.pack.NODE_CLASS_MAPPINGS["DiffusionModelLoaderVramd"]()
        with self.assertRaises(RuntimeError) as cm:
            node.load_unet(self.path, "default", compute_device="cuda:0", virtual_vram_gb=0.0)
        msg = str(cm.exception)
        for want in ("flux-q8.gguf", "ComfyUI-GGUF", "city96/ComfyUI-GGUF", "Q8_0 x1", "Q4_0 x1", "Q5_1 x1",
                     "custom_nodes"):
            self.assertIn(want, msg)
        self.assertNotIn("BF16", msg)  # torch has that one
        node = self.pack.NODE_CLASS_MAPPINGS["CheckpointLoaderVramd"]()
        with self.assertRaises(RuntimeError) as cm:
            node.load_checkpoint(self.path, "cuda:0", 0.0, "cpu", "cpu", 0.0, "cpu", "cuda:0", eject_models=False)
        self.assertIn("Load Diffusion Model (vramd)", str(cm.exception))

    def test_tensors_as_comfyui_gguf_makes_them(self):
        import gguf
        import sys
        import types
        loader = self.pack.loader

        class StandInGGMLTensor(torch.Tensor):  # ComfyUI-GGUF's ops.GGMLTensor's constructor
            def __new__(cls, *args, tensor_type, tensor_shape, patches=[], **kwargs):
                return super().__new__(cls, *args, **kwargs)

            def __init__(self, *args, tensor_type, tensor_shape, patches=[], **kwargs):
                super().__init__()
                self.tensor_type, self.tensor_shape, self.patches = tensor_type, tensor_shape, patches

        ops = types.ModuleType("ComfyUI-GGUF.ops")
        ops.GGMLTensor, ops.GGMLOps = StandInGGMLTensor, type("GGMLOps", (), {})
        nodes = types.ModuleType("ComfyUI-GGUF.nodes")
        nodes.GGUFModelPatcher = type("GGUFModelPatcher", (), {})
        sys.modules.update({ops.__name__: ops, nodes.__name__: nodes})
        try:
            self.assertEqual(loader.comfyui_gguf(), (StandInGGMLTensor, ops.GGMLOps, nodes.GGUFModelPatcher))
        finally:
            del sys.modules[ops.__name__], sys.modules[nodes.__name__]
        self.assertIsNone(loader.comfyui_gguf())

        client = self.pack.broker.client()
        model = vramd.open_model(self.path)
        plan = client.plan(model, unet_compute_device="cuda:0", unet_virtual_vram_gb=0.0)
        vm = loader.VramdModel(client, model, plan, loader.load_options())
        sd = loader.gguf_state_dict(vm, StandInGGMLTensor, gguf.GGMLQuantizationType)
        reader = gguf.GGUFReader(self.path)
        self.assertEqual(sorted(sd), sorted(t.name for t in reader.tensors))
        for rt in reader.tensors:
            got = sd[rt.name]
            i = model.tensor(rt.name).index
            self.assertIsInstance(got, StandInGGMLTensor)
            self.assertEqual(got.tensor_type, rt.tensor_type, rt.name)
            self.assertEqual(got.tensor_shape, torch.Size(int(n) for n in reversed(rt.shape)), rt.name)
            # gguf_sd_loader's tensor: torch.from_numpy(rt.data), F32/F16 viewed to the shape
            want = torch.from_numpy(rt.data.copy())
            if rt.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                want = want.view(*got.tensor_shape)
            self.assertEqual(got.dtype, want.dtype, rt.name)
            self.assertEqual(tuple(got.size()), tuple(want.shape), rt.name)
            self.assertTrue(torch.equal(torch.Tensor(got), want), rt.name)
            self.assertEqual(got.data_ptr(), vm.loaded.host_ptr(i), rt.name)  # no copy
        self.assertIn(vm.stats.share, ("filled", "hit"))


if __name__ == "__main__":
    harness.run(__name__)
