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

The ops are private to PyTorch: they may be missing from a build or change their signature in a release.
So on first use they are probed once on tiny tensors against the plain ops (`fast_path_available`); any
error or mismatch turns the fast path off for the process, and every module runs the plain ops.

One module may serve several threads at once: its packed weights are kept under a lock.
"""
import threading
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .grid_cache import eager_inference

__all__ = ['OneDNNConv', 'fast_path_available', 'onednn_applies']


def _pack(conv: nn.Conv2d, shape: Tuple[int, ...]) -> torch.Tensor:
    """`conv`'s weight re-laid for oneDNN, for inputs of `shape`."""
    return torch.ops.mkldnn._reorder_convolution_weight(
        conv.weight.detach(), list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, list(shape))


def _conv(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, gelu: bool,
          residual: Optional[torch.Tensor]) -> torch.Tensor:
    """The one oneDNN call: conv of `x` with the packed `weight`, then GELU, or summed into `residual`."""
    geometry = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
    bias = None if conv.bias is None else conv.bias.detach()
    if residual is not None:
        return torch.ops.mkldnn._convolution_pointwise_.binary(
            residual, x, weight, bias, *geometry, 'add', 1.0, None, [], None)
    unary, algorithm = ('gelu', 'none') if gelu else ('none', '')
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *geometry, unary, [], algorithm)


def _probe() -> bool:
    """Whether the private ops exist, take the arguments `_conv` gives them and match the plain ops, on tiny
    tensors (a 3x3 conv plain and with GELU, a 1x1 conv summed into a residual)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        g = torch.Generator().manual_seed(0)
        conv3, conv1 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
        with torch.no_grad():
            for conv in (conv3, conv1):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=g))
            x = torch.randn(1, 4, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)
            residual = torch.randn(1, 4, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)
            checks = [
                (_conv(conv3, x, _pack(conv3, tuple(x.shape)), False, None), conv3(x)),
                (_conv(conv3, x, _pack(conv3, tuple(x.shape)), True, None), F.gelu(conv3(x))),
                (_conv(conv1, x, _pack(conv1, tuple(x.shape)), False, residual.clone()), residual + conv1(x)),
            ]
            return all(isinstance(got, torch.Tensor) and got.shape == want.shape
                       and torch.allclose(got, want, rtol=1e-4, atol=1e-5) for got, want in checks)
    except Exception:  # a missing op, another signature, a build without oneDNN: the plain ops serve
        return False


_fast_path: Optional[bool] = None  # probed on first use
_probe_lock = threading.Lock()


def fast_path_available() -> bool:
    """Whether this PyTorch's oneDNN ops work as this module calls them (probed once, see the docstring)."""
    global _fast_path
    if _fast_path is None:
        with _probe_lock:
            if _fast_path is None:
                _fast_path = _probe()
    return _fast_path


def onednn_applies(x: torch.Tensor, weight: torch.Tensor, residual: Optional[torch.Tensor] = None) -> bool:
    """Whether the oneDNN call serves this input: see the module's docstring."""
    if not eager_inference([x, weight] if residual is None else [x, weight, residual]):
        return False
    if x.device.type != 'cpu' or x.dtype != torch.float32 or weight.dtype != torch.float32 or x.dim() != 4:
        return False
    if not x.is_contiguous(memory_format=torch.channels_last):
        return False
    if residual is not None and not residual.is_contiguous(memory_format=torch.channels_last):
        return False
    return fast_path_available()


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
        self._lock = threading.Lock()  # one model may serve several threads

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
        with self._lock:
            if version != self._packed_version:
                self._packed, self._packed_version = {}, version
            packed = self._packed.pop(shape, None)
            if packed is None:
                packed = _pack(self.conv, shape)
                while len(self._packed) >= self.shapes_kept:
                    self._packed.pop(next(iter(self._packed)))
            self._packed[shape] = packed  # the most recent last
        return packed

    @torch.jit.unused
    def _onednn(self, x: torch.Tensor, residual: Optional[torch.Tensor]) -> torch.Tensor:
        return _conv(self.conv, x, self.packed_weight(tuple(x.shape)), self.gelu, residual)

    def __getstate__(self):
        # the packed weight is an opaque oneDNN tensor: not copied or pickled, rebuilt on the next call; a
        # lock is neither copied nor pickled: each copy gets its own
        state = self.__dict__.copy()
        state['_packed'], state['_packed_version'] = {}, (0, -1)
        del state['_lock']
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._lock = threading.Lock()

    def extra_repr(self) -> str:
        return 'gelu=True' if self.gelu else ''
