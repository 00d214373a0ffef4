# SPDX-License-Identifier: MIT
"""Checkpoints: open, inspect (no broker needed, no tensor bytes read)."""
import ctypes as C
from dataclasses import dataclass
from typing import Tuple

from . import _native as N
from ._handle import Handle, Owner
from ._native import call, lib, text
from .tensors import COMPONENTS, dtype_name

LAYER_EMBEDDING = 1


@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    dtype: str
    shape: Tuple[int, ...]
    component: str
    layer: int
    file_offset: int
    nbytes: int


@dataclass(frozen=True)
class LayerInfo:
    index: int
    name: str
    component: str
    first_tensor: int
    ntensors: int
    nbytes: int
    flags: int

    @property
    def embedding(self):
        return bool(self.flags & LAYER_EMBEDDING)


@dataclass(frozen=True)
class ComponentInfo:
    name: str
    ntensors: int
    nlayers: int
    nbytes: int


class Model(Owner):
    """A validated checkpoint (vram_model_open).  Inspecting it reads only
    the header.  Loads made from it keep it open."""

    _what = "model"

    def __init__(self, path):
        p = C.c_void_p()
        call("vram_model_open", str(path).encode(), C.byref(p))
        self._h = Handle(p, lib.vram_model_close)
        h = self._h.ptr
        self.path = text(lib.vram_model_path(h))
        self.format = text(lib.vram_model_format(h))
        self.file_size = lib.vram_model_file_size(h)
        self.header_size = lib.vram_model_header_size(h)
        self.data_offset = lib.vram_model_data_offset(h)
        self.data_size = lib.vram_model_data_size(h)
        self.tensors = tuple(self._tensor(i) for i in range(call("vram_model_tensor_count", h)))
        self.layers = tuple(self._layer(i) for i in range(call("vram_model_layer_count", h)))
        self._by_name = {t.name: t for t in self.tensors}
        self.components = {}
        for ci, cname in enumerate(COMPONENTS):
            c = N.sized(N.ComponentInfo)
            call("vram_model_component", h, ci, C.byref(c))
            self.components[cname] = ComponentInfo(cname, c.ntensors, c.nlayers, c.nbytes)
        self.metadata = {}
        for i in range(call("vram_model_metadata_count", h)):
            k, v = C.c_char_p(), C.c_char_p()
            call("vram_model_metadata", h, i, C.byref(k), C.byref(v))
            self.metadata[text(k.value)] = text(v.value)

    def _tensor(self, i):
        t = N.sized(N.TensorInfo)
        call("vram_model_tensor", self._h.ptr, i, C.byref(t))
        return TensorInfo(i, text(t.name), dtype_name(t.dtype), tuple(t.shape[k] for k in range(t.ndim)),
                          COMPONENTS[t.component], t.layer, t.file_offset, t.nbytes)

    def _layer(self, i):
        li = N.sized(N.LayerInfo)
        call("vram_model_layer", self._h.ptr, i, C.byref(li))
        return LayerInfo(i, text(li.name), COMPONENTS[li.component], li.first_tensor, li.ntensors, li.nbytes,
                         li.flags)

    def __len__(self):
        return len(self.tensors)

    def __contains__(self, name):
        return name in self._by_name

    def tensor(self, name_or_index):
        """TensorInfo by name or index (KeyError / IndexError)."""
        if isinstance(name_or_index, int):
            return self.tensors[name_or_index]
        return self._by_name[name_or_index]

    def layer_tensors(self, layer):
        li = self.layers[layer]
        return self.tensors[li.first_tensor:li.first_tensor + li.ntensors]


def open_model(path):
    """Opens and validates a checkpoint (safetensors)."""
    return Model(path)
