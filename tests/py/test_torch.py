# SPDX-License-Identifier: MIT
"""The binding with torch (CPU; PyPI's wheel runs without a GPU) against a
real vramd on simulated GPUs: tensors share the grants, equal the
reference reader for F16/BF16/F32/F8, keep the grants alive, follow the
plan; and the node's eviction on RECLAIM while tensors are alive."""
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


if __name__ == "__main__":
    harness.run(__name__)
