# SPDX-License-Identifier: MIT
"""The binding without torch: struct layouts, errors, inspection, plans,
loads viewed through numpy, grants released when the last view goes."""
import ctypes as C
import errno
import gc
import os
import tempfile
import unittest

import harness
import numpy as np
from safetensors import safe_open

import vramd
import vramd._native as N


def held_by(observer, name):
    return sum(c.held for c in observer.status().clients if c.name == name)


class Structs(unittest.TestCase):
    def test_sizes_match_the_c_compiler(self):
        sizes = harness.c_sizes()
        self.assertEqual(set(sizes), set(N.STRUCTS))
        for name, cls in N.STRUCTS.items():
            self.assertEqual(C.sizeof(cls), sizes[name], name)

    def test_library_found_and_versioned(self):
        self.assertTrue(os.path.exists(vramd.library_path))
        self.assertEqual(vramd.library_version()[0], N.API_MAJOR)


class Errors(unittest.TestCase):
    def test_missing_file(self):
        with self.assertRaises(vramd.VramError) as cm:
            vramd.open_model("/nonexistent/x.safetensors")
        self.assertEqual(cm.exception.errno, errno.ENOENT)
        self.assertIn("/nonexistent/x.safetensors", str(cm.exception))
        self.assertIsInstance(cm.exception, OSError)

    def test_malformed_file(self):
        with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
            f.write(b"\x05\x00\x00\x00\x00\x00\x00\x00{\"a\":")
            f.flush()
            with self.assertRaises(vramd.VramError) as cm:
                vramd.open_model(f.name)
            self.assertEqual(cm.exception.errno, errno.EINVAL)
            self.assertIn("invalid safetensors", cm.exception.strerror)

    def test_no_broker(self):
        with self.assertRaises(vramd.BrokerUnavailable) as cm:
            vramd.connect("/nonexistent/vramd.sock")
        msg = str(cm.exception)
        self.assertIn("/nonexistent/vramd.sock", msg)
        self.assertIn("vramd --socket", msg)

    def test_bad_plan_input_named(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "m.safetensors")
            harness.write_checkpoint(path)
            m = vramd.open_model(path)
            with self.assertRaises(vramd.VramError) as cm:
                vramd.Plan(m, devices="cuda:0=1GiB,cpu=1GiB", unet_expert_mode_allocations="cuda:0,abc")
            self.assertEqual(cm.exception.errno, errno.EINVAL)
            self.assertIn("unet allocation", cm.exception.strerror)
            self.assertIn("abc", cm.exception.strerror)
            with self.assertRaises(TypeError):
                vramd.Plan(m, devices="cpu=1GiB", unet_vram=3)

    def test_dtypes_match_library(self):
        for code, name in enumerate(vramd.DTYPES):
            self.assertEqual(vramd.tensors.dtype_name(code), name)
        self.assertEqual(vramd.tensors.dtype_name(len(vramd.DTYPES)), "")  # NULL: out of range

    def test_unknown_load_option(self):
        with self.assertRaises(TypeError):
            vramd.load_options(shared_copy=True)
        o, _ = vramd.load_options(reclaimable=True, chunk_size=1 << 20, cast_to="bf16", cast_from=["F32"])
        self.assertEqual(o.flags & 1, 1)
        self.assertEqual(o.chunk_size, 1 << 20)
        self.assertEqual(o.cast_to, vramd.DTYPES.index("BF16"))
        self.assertEqual(o.cast_from, 1 << vramd.DTYPES.index("F32"))
        o, _ = vramd.load_options(shared=True, reclaimable=False)
        self.assertEqual(o.flags, 2)  # VRAM_LOAD_SHARED


class WithBroker(unittest.TestCase):
    def setUp(self):
        self.broker = harness.Broker()
        self.path = os.path.join(self.broker.dir, "m.safetensors")
        self.ref = harness.write_checkpoint(self.path)
        self.observer = vramd.connect(self.broker.socket, "observer")

    def tearDown(self):
        self.observer.close()
        gc.collect()
        self.broker.stop()

    def test_inspect_matches_reference(self):
        m = vramd.open_model(self.path)
        with safe_open(self.path, framework="numpy") as f:
            self.assertEqual(sorted(f.keys()), sorted(t.name for t in m.tensors))
            for k in f.keys():
                t = m.tensor(k)
                a = f.get_tensor(k)
                self.assertEqual(t.shape, a.shape)
                self.assertEqual(t.nbytes, a.nbytes)
        self.assertEqual(m.components["unet"].ntensors, 12)
        self.assertEqual(m.metadata, {"format": "pt"})
        self.assertEqual(m.tensor(0).component, "unet")

    def test_devices_and_status(self):
        with vramd.connect(self.broker.socket, "dev-test") as c:
            names = [d.name for d in c.devices]
            self.assertEqual(names, ["cuda:0", "cpu"])
            self.assertTrue(c.device("cuda:0").simulated)
            st = c.status()
            self.assertIn("dev-test", [x.name for x in st.clients])
            self.assertEqual(len(st.devices), 2)

    def test_numpy_views_share_the_grant(self):
        c = vramd.connect(self.broker.socket, "np")
        m = vramd.open_model(self.path)
        plan = c.plan(m, unet_compute_device="cuda:0", unet_virtual_vram_gb=0.0, clip_compute_device="cpu")
        loaded = c.load(m, plan)
        for t in m.tensors:
            a = loaded.numpy(t.name)
            np.testing.assert_array_equal(a, self.ref[t.name])
            self.assertEqual(a.__array_interface__["data"][0], loaded.host_ptr(t.index))
            self.assertEqual(loaded.device(t.index).name, plan.tensor_device(t.index))
        # a write through one view shows through another and the pointer
        w = "model.diffusion_model.input_blocks.0.0.weight"
        a = loaded.numpy(w)
        a[0, 0] = 7.0
        self.assertEqual(loaded.numpy(w)[0, 0], 7.0)
        self.assertEqual(C.c_uint16.from_address(loaded.host_ptr(w)).value, np.float16(7.0).view(np.uint16))
        self.assertGreater(held_by(self.observer, "np"), 0)
        # close() with a view alive keeps the grants; the last view frees them
        loaded.close()
        c.close()
        m.close()
        plan.close()
        self.assertGreater(held_by(self.observer, "np"), 0)
        self.assertEqual(a[0, 0], 7.0)
        del a
        gc.collect()
        self.assertEqual(held_by(self.observer, "np"), 0)
        self.assertNotIn("np", [x.name for x in self.observer.status().clients])

    def test_forgotten_handles_are_released(self):
        def work():
            c = vramd.connect(self.broker.socket, "forgetful")
            m = vramd.open_model(self.path)
            loaded = c.load(m, device="cpu")
            g = c.alloc("cuda:0", 1 << 20)
            g.numpy()[:] = 3
            return loaded.numpy(1).copy()
        work()
        gc.collect()
        self.assertNotIn("forgetful", [x.name for x in self.observer.status().clients])

    def test_plan_follows_inputs(self):
        m = vramd.open_model(self.path)
        unet = m.components["unet"].nbytes
        plan = vramd.Plan(m, devices="cuda:0=1GiB,cpu=1GiB", unet_compute_device="cuda:0",
                          unet_expert_mode_allocations="cuda:0,50%;cpu,50%")
        self.assertEqual(plan.compute_device("unet"), "cuda:0")
        self.assertGreater(plan.bytes("unet", "cpu"), 0)
        self.assertEqual(plan.bytes("unet", "cpu") + plan.bytes("unet", "cuda:0"), unet)
        self.assertTrue(plan.donor_layers("unet"))
        self.assertIn("devices", plan.to_json())

    def test_progress_and_cancel(self):
        c = vramd.connect(self.broker.socket, "prog")
        m = vramd.open_model(self.path)
        seen = []
        loaded = c.load(m, device="cpu", progress=lambda d, t: seen.append((d, t)))
        self.assertEqual(seen[-1][0], seen[-1][1])
        self.assertEqual(loaded.stats().bytes, m.data_size)
        loaded.close()
        with self.assertRaises(vramd.VramError) as cm:
            c.load(m, device="cpu", progress=lambda d, t: False)
        self.assertEqual(cm.exception.errno, errno.ECANCELED)

        class Boom(Exception):
            pass

        def boom(d, t):
            raise Boom()
        with self.assertRaises(Boom):
            c.load(m, device="cpu", progress=boom)
        c.close()

    def test_reclaim_handler_called(self):
        # A holds all of cuda:0 reclaimably; B's request makes the broker
        # ask A, whose handler frees a grant.
        a = vramd.connect(self.broker.socket, "a")
        g = a.alloc("cuda:0", 64 << 20, reclaimable=True)
        calls = []

        def handler(dev, nbytes, deadline):
            nonlocal g
            calls.append((dev, nbytes))
            size = g.size
            g.free()
            g = None
            gc.collect()
            return size
        a.set_reclaim_handler(handler)
        a.start_dispatch_thread()
        b = vramd.connect(self.broker.socket, "b")
        gb = b.alloc("cuda:0", 32 << 20)
        self.assertEqual(calls[0][0], a.find_device("cuda:0"))
        self.assertGreaterEqual(gb.size, 32 << 20)
        a.close()
        b.close()


if __name__ == "__main__":
    harness.run(__name__)
