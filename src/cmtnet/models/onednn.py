"""One oneDNN call per conv on CPU for the fused model: the weights pre-packed once, the GELU after the conv or
the residual add after it done in the same call.

In eager mode on CPU, a conv followed by a GELU or by a residual add costs three passes over memory (the conv
writes its map, the elementwise op reads it and writes another): on CMT's large early maps each pass costs as
much as the depthwise conv itself. oneDNN runs a conv with its activation or a sum as post-ops, writing once;
PyTorch exposes this as `torch.ops.mkldnn._convolution_pointwise` (what inductor emits for the same fusion),
and with weights re-laid once for oneDNN (`_reorder_convolution_weight`) the 1x1 convs also skip a per-call
weight reorder. The results equal the plain ops up to float rounding.

The fast call is taken only where it is exact and safe: CPU, float32, channels_last input, no gradient
needed, and not while scripting, tracing, compiling or exporting (those graphs keep the plain ops, which
their own backends fuse). Everywhere else the same module runs the plain conv, GELU and add.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .grid_cache import eager_inference

__all__ = ['OneDNNConv', 'onednn_applies']


def _ops_present() -> bool:
    try:
        return (torch.backends.mkldnn.is_available()
                and hasattr(torch.ops.mkldnn, '_convolution_pointwise')
                and hasattr(torch.ops.mkldnn, '_reorder_convolution_weight'))
    except (AttributeError, RuntimeError):
        return False


_OPS_PRESENT = _ops_present()


def onednn_applies(x: torch.Tensor, weight: torch.Tensor, residual: Optional[torch.Tensor] = None) -> bool:
    """Whether the oneDNN call serves this input: see the module's docstring."""
    if not _OPS_PRESENT or not eager_inference([x, weight] if residual is None else [x, weight, residual]):
        return False
    if x.device.type != 'cpu' or x.dtype != torch.float32 or weight.dtype != torch.float32 or x.dim() != 4:
        return False
    if not x.is_contiguous(memory_format=torch.channels_last):
        return False
    return residual is None or residual.is_contiguous(memory_format=torch.channels_last)


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # an inference tensor keeps no version counter (and cannot be changed in place)
        return 0


class OneDNNConv(nn.Module):
    """`conv`, then GELU if `gelu`, or plus `residual` (summed into `residual` in place on the fast path).

    Inference only: it lives inside fused models (models/fuse.py), whose modules refuse to train.
    """

    shapes_kept = 2

    def __init__(self, conv: nn.Conv2d, gelu: bool = False):
        super().__init__()
        self.conv = conv
        self.gelu = gelu
        # the weight re-laid for oneDNN, per input shape (the layout oneDNN picks depends on it: a weight
        # packed for one shape and used at another is re-laid on every call, 13x slower for a 1x1 conv at
        # batch 1); the last two shapes are kept (a micro-batched stage sees two), dropped when the weight
        # changes
        self._packed: Dict[Tuple[int, ...], torch.Tensor] = {}
        self._packed_version = (0, -1)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        if residual is not None and self.gelu:
            raise ValueError('OneDNNConv adds a residual only without a GELU')
        if not torch.jit.is_scripting():
            if onednn_applies(x, self.conv.weight, residual):
                return self._onednn(x, residual)
        y = self.conv(x)
        if self.gelu:
            y = F.gelu(y)
        if residual is not None:
            y = residual + y
        return y

    @torch.jit.unused
    def packed_weight(self, shape: Tuple[int, ...]) -> torch.Tensor:
        weight = self.conv.weight
        version = (weight.data_ptr(), _version(weight))
        if version != self._packed_version:
            self._packed, self._packed_version = {}, version
        packed = self._packed.pop(shape, None)
        if packed is None:
            conv = self.conv
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                weight.detach(), list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, list(shape))
            while len(self._packed) >= self.shapes_kept:
                self._packed.pop(next(iter(self._packed)))
        self._packed[shape] = packed  # the most recent last
        return packed

    @torch.jit.unused
    def _onednn(self, x: torch.Tensor, residual: Optional[torch.Tensor]) -> torch.Tensor:
        conv = self.conv
        geometry = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        weight = self.packed_weight(tuple(x.shape))
        bias = None if conv.bias is None else conv.bias.detach()
        if residual is not None:
            return torch.ops.mkldnn._convolution_pointwise_.binary(
                residual, x, weight, bias, *geometry, 'add', 1.0, None, [], None)
        unary, algorithm = ('gelu', 'none') if self.gelu else ('none', '')
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *geometry, unary, [], algorithm)

    def __getstate__(self):
        # the packed weight is an opaque oneDNN tensor: not copied or pickled, rebuilt on the next call
        state = self.__dict__.copy()
        state['_packed'], state['_packed_version'] = {}, (0, -1)
        return state

    def extra_repr(self) -> str:
        return 'gelu=True' if self.gelu else ''
