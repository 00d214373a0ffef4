# SPDX-License-Identifier: MIT
"""The node classes.  Importable without ComfyUI (and without torch): the
inputs are declared here; the work is in loader.py, imported when a node
runs."""
import os

from . import broker

SEED_CLASS = "CheckpointLoaderAdvancedDisTorch2MultiGPU"
WEIGHT_DTYPES = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]


def _files(folder):
    """Names under ComfyUI's model folder (upstream's folder_paths, or the
    pip-installable fork's comfy.cmd.folder_paths); [] without ComfyUI."""
    fp = _folder_paths()
    if fp is None:
        return []
    names = list(fp.get_filename_list(folder))
    if folder == "diffusion_models":
        try:
            names += [n for n in fp.get_filename_list("unet") if n not in names]
        except Exception:  # noqa: BLE001 - older ComfyUI without the alias
            pass
    return names


def _folder_paths():
    for mod in ("folder_paths", "comfy.cmd.folder_paths"):
        try:
            return __import__(mod, fromlist=["get_filename_list"])
        except ImportError:
            continue
    return None


def resolve(folder, name):
    """The full path of name under folder ("checkpoints", "diffusion_models");
    an absolute path is taken as is (scripts, tests)."""
    if os.path.isabs(name):
        return name
    fp = _folder_paths()
    if fp is None:
        raise FileNotFoundError("vramd: ComfyUI's folder_paths is not importable to resolve %r" % name)
    for f in ((folder, "unet") if folder == "diffusion_models" else (folder,)):
        try:
            path = fp.get_full_path(f, name)
        except Exception:  # noqa: BLE001 - unknown folder name in this ComfyUI
            path = None
        if path:
            return path
    raise FileNotFoundError("vramd: %s not found in ComfyUI's %s folder" % (name, folder))


def _compute_default(devices):
    gpus = [d for d in devices if d != "cpu"]
    return gpus[0] if gpus else "cpu"


class CheckpointLoaderVramd:
    """Load Checkpoint (vramd): the seed node's inputs, loaded by vramd."""

    @classmethod
    def INPUT_TYPES(cls):
        devices = broker.device_names()
        compute = _compute_default(devices)
        return {
            "required": {
                "ckpt_name": (_files("checkpoints"),),
                "unet_compute_device": (devices, {"default": compute}),
                "unet_virtual_vram_gb": ("FLOAT", {"default": 4.0, "min": 0.0, "max": 128.0, "step": 0.1}),
                "unet_donor_device": ("STRING", {"default": "cpu"}),
                "clip_compute_device": (devices, {"default": "cpu"}),
                "clip_virtual_vram_gb": ("FLOAT", {"default": 2.0, "min": 0.0, "max": 128.0, "step": 0.1}),
                "clip_donor_device": ("STRING", {"default": "cpu"}),
                "vae_device": (devices, {"default": compute}),
            },
            "optional": {
                "unet_expert_mode_allocations": ("STRING", {"multiline": False, "default": ""}),
                "clip_expert_mode_allocations": ("STRING", {"multiline": False, "default": ""}),
                "high_precision_loras": ("BOOLEAN", {"default": True}),
                "eject_models": ("BOOLEAN", {"default": True}),
            },
        }

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    RETURN_NAMES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load_checkpoint"
    CATEGORY = "loaders/vramd"
    DESCRIPTION = ("Loads a checkpoint into memory the vramd broker owns, placed across devices with "
                   "DisTorch2's inputs (virtual VRAM, donor devices, expert allocations).")

    def load_checkpoint(self, ckpt_name, unet_compute_device, unet_virtual_vram_gb, unet_donor_device,
                        clip_compute_device, clip_virtual_vram_gb, clip_donor_device, vae_device,
                        unet_expert_mode_allocations="", clip_expert_mode_allocations="",
                        high_precision_loras=True, eject_models=True):
        from . import loader
        path = resolve("checkpoints", ckpt_name)
        return loader.load_checkpoint(path, dict(
            unet_compute_device=unet_compute_device, unet_virtual_vram_gb=unet_virtual_vram_gb,
            unet_donor_device=unet_donor_device, clip_compute_device=clip_compute_device,
            clip_virtual_vram_gb=clip_virtual_vram_gb, clip_donor_device=clip_donor_device,
            vae_device=vae_device, unet_expert_mode_allocations=unet_expert_mode_allocations,
            clip_expert_mode_allocations=clip_expert_mode_allocations,
            high_precision_loras=high_precision_loras), eject_models=eject_models)


class DiffusionModelLoaderVramd:
    """Load Diffusion Model (vramd): models/diffusion_models, UNet inputs."""

    @classmethod
    def INPUT_TYPES(cls):
        devices = broker.device_names()
        return {
            "required": {
                "unet_name": (_files("diffusion_models"),),
                "weight_dtype": (WEIGHT_DTYPES, {"default": "default"}),
            },
            "optional": {
                "compute_device": (devices, {"default": _compute_default(devices)}),
                "virtual_vram_gb": ("FLOAT", {"default": 4.0, "min": 0.0, "max": 128.0, "step": 0.1}),
                "donor_device": ("STRING", {"default": "cpu"}),
                "expert_mode_allocations": ("STRING", {"multiline": False, "default": ""}),
                "eject_models": ("BOOLEAN", {"default": True}),
            },
        }

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_unet"
    CATEGORY = "loaders/vramd"
    DESCRIPTION = "Loads a diffusion model (UNet/DiT only) into vramd memory, placed with DisTorch2's inputs."

    def load_unet(self, unet_name, weight_dtype="default", compute_device=None, virtual_vram_gb=4.0,
                  donor_device="cpu", expert_mode_allocations="", eject_models=True):
        from . import loader
        path = resolve("diffusion_models", unet_name)
        return loader.load_diffusion_model(path, weight_dtype, dict(
            unet_compute_device=compute_device, unet_virtual_vram_gb=virtual_vram_gb,
            unet_donor_device=donor_device, unet_expert_mode_allocations=expert_mode_allocations),
            eject_models=eject_models)


class CheckpointLoaderVramdAlias(CheckpointLoaderVramd):
    """Registered under the seed node's class name when VRAMD_SEED_ALIAS=1."""
    CATEGORY = "multigpu/distorch_2"


NODE_CLASS_MAPPINGS = {
    "CheckpointLoaderVramd": CheckpointLoaderVramd,
    "DiffusionModelLoaderVramd": DiffusionModelLoaderVramd,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "CheckpointLoaderVramd": "Load Checkpoint (vramd)",
    "DiffusionModelLoaderVramd": "Load Diffusion Model (vramd)",
}

# Custom node names override each other silently: answering to the seed
# node's name (so that saved DisTorch2 workflows open unchanged) is opt-in.
if os.environ.get("VRAMD_SEED_ALIAS", "") not in ("", "0"):
    NODE_CLASS_MAPPINGS[SEED_CLASS] = CheckpointLoaderVramdAlias
    NODE_DISPLAY_NAME_MAPPINGS[SEED_CLASS] = "Checkpoint Loader Advanced (DisTorch2, by vramd)"
