# SPDX-License-Identifier: MIT
"""The node pack without ComfyUI (and without torch): its inputs and outputs
are the seed node's (facts.md §1, plus eject_models), the broker's devices
are listed, and a missing broker is one clear message."""
import os
import sys
import unittest

import harness

# The seed node, ComfyUI-MultiGPU v2.6.x CheckpointLoaderAdvancedDisTorch2MultiGPU:
# name -> (section, type or "LIST", default, min, max).
SEED = {
    "ckpt_name": ("required", "LIST", None, None, None),
    "unet_compute_device": ("required", "LIST", None, None, None),
    "unet_virtual_vram_gb": ("required", "FLOAT", 4.0, 0.0, 128.0),
    "unet_donor_device": ("required", "STRING", "cpu", None, None),
    "clip_compute_device": ("required", "LIST", "cpu", None, None),
    "clip_virtual_vram_gb": ("required", "FLOAT", 2.0, 0.0, 128.0),
    "clip_donor_device": ("required", "STRING", "cpu", None, None),
    "vae_device": ("required", "LIST", None, None, None),
    "unet_expert_mode_allocations": ("optional", "STRING", "", None, None),
    "clip_expert_mode_allocations": ("optional", "STRING", "", None, None),
    "high_precision_loras": ("optional", "BOOLEAN", True, None, None),
    "eject_models": ("optional", "BOOLEAN", True, None, None),
}
SEED_ORDER = list(SEED)


class Pack(unittest.TestCase):
    def setUp(self):
        for m in [m for m in sys.modules if m.startswith("vramd_comfyui_pack")]:
            del sys.modules[m]
        self.broker = harness.Broker(sim="64MiB,32MiB")
        os.environ["VRAMD_SOCKET"] = self.broker.socket
        os.environ.pop("VRAMD_SEED_ALIAS", None)
        self.pack = harness.import_pack()

    def tearDown(self):
        self.pack.broker.reset()
        self.broker.stop()

    def test_comfyui_absent(self):
        self.assertNotIn("comfy", sys.modules)
        with self.assertRaises(ImportError):
            import comfy  # noqa: F401

    def test_inputs_are_the_seed_nodes(self):
        node = self.pack.NODE_CLASS_MAPPINGS["CheckpointLoaderVramd"]
        it = node.INPUT_TYPES()
        flat = {}
        for section in ("required", "optional"):
            for k, v in it[section].items():
                flat[k] = (section, v)
        self.assertEqual(list(flat), SEED_ORDER)
        for name, (section, typ, default, lo, hi) in SEED.items():
            sec, spec = flat[name]
            self.assertEqual(sec, section, name)
            opts = spec[1] if len(spec) > 1 else {}
            if typ == "LIST":
                self.assertIsInstance(spec[0], list, name)
            else:
                self.assertEqual(spec[0], typ, name)
            if default is not None:
                self.assertEqual(opts.get("default"), default, name)
            if lo is not None:
                self.assertEqual((opts["min"], opts["max"]), (lo, hi), name)
        self.assertEqual(node.RETURN_TYPES, ("MODEL", "CLIP", "VAE"))
        # the function takes the inputs by their names, optional ones defaulted
        import inspect
        sig = inspect.signature(getattr(node, node.FUNCTION))
        self.assertEqual([p for p in sig.parameters if p != "self"], SEED_ORDER)
        for name, (section, *_rest) in SEED.items():
            has_default = sig.parameters[name].default is not inspect.Parameter.empty
            self.assertEqual(has_default, section == "optional", name)

    def test_device_lists_are_the_brokers(self):
        it = self.pack.NODE_CLASS_MAPPINGS["CheckpointLoaderVramd"].INPUT_TYPES()
        devs = it["required"]["unet_compute_device"][0]
        self.assertEqual(devs, ["cuda:0", "cuda:1", "cpu"])
        self.assertEqual(it["required"]["unet_compute_device"][1]["default"], "cuda:0")
        self.assertEqual(it["required"]["vae_device"][1]["default"], "cuda:0")
        self.assertIn(self.pack.broker.client_name(), [c.name for c in self.pack.broker.client().status().clients])

    def test_diffusion_model_loader(self):
        node = self.pack.NODE_CLASS_MAPPINGS["DiffusionModelLoaderVramd"]
        it = node.INPUT_TYPES()
        self.assertEqual(list(it["required"]), ["unet_name", "weight_dtype"])
        self.assertEqual(list(it["optional"]), ["compute_device", "virtual_vram_gb", "donor_device",
                                                "expert_mode_allocations", "eject_models"])
        self.assertEqual(node.RETURN_TYPES, ("MODEL",))

    def test_alias_is_opt_in(self):
        self.assertNotIn("CheckpointLoaderAdvancedDisTorch2MultiGPU", self.pack.NODE_CLASS_MAPPINGS)
        for m in [m for m in sys.modules if m.startswith("vramd_comfyui_pack")]:
            del sys.modules[m]
        os.environ["VRAMD_SEED_ALIAS"] = "1"
        try:
            pack = harness.import_pack()
            self.assertIn("CheckpointLoaderAdvancedDisTorch2MultiGPU", pack.NODE_CLASS_MAPPINGS)
        finally:
            os.environ.pop("VRAMD_SEED_ALIAS")

    def test_client_name(self):
        os.environ["VRAMD_CLIENT_NAME"] = "comfy-a"
        try:
            self.assertEqual(self.pack.broker.client_name(), "comfy-a")
        finally:
            del os.environ["VRAMD_CLIENT_NAME"]
        argv = sys.argv
        sys.argv = ["main.py", "--port", "8190"]
        try:
            self.assertEqual(self.pack.broker.client_name(), "comfyui-8190")
        finally:
            sys.argv = argv

    def test_no_broker_is_one_clear_message(self):
        self.pack.broker.reset()
        os.environ["VRAMD_SOCKET"] = os.path.join(self.broker.dir, "nobody.sock")
        it = self.pack.NODE_CLASS_MAPPINGS["CheckpointLoaderVramd"].INPUT_TYPES()  # still shows
        self.assertIn("cpu", it["required"]["unet_compute_device"][0])
        with self.assertRaises(self.pack.broker.BrokerError) as cm:
            self.pack.broker.client()
        msg = str(cm.exception)
        self.assertIn("nobody.sock", msg)
        self.assertIn("vramd --socket", msg)
        self.assertIn("VRAMD_SOCKET", msg)


if __name__ == "__main__":
    harness.run(__name__)
