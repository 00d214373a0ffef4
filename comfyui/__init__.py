# SPDX-License-Identifier: MIT
"""vramd nodes for ComfyUI: "Load Checkpoint (vramd)", the successor of
ComfyUI-MultiGPU's CheckpointLoaderAdvancedDisTorch2MultiGPU, and "Load
Diffusion Model (vramd)".  README.md in this folder says how to install."""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
