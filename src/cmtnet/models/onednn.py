"""One oneDNN call per conv for the CPU fast path (models/fast_path.py): the weights pre-packed once, the GELU
after the conv or the residual add after it done in the same call.

In eager mode on CPU, a conv followed by a GELU or by a residual add costs three passes over memory (the conv
writes its map, the elementwise op reads it and writes another): on CMT's large early maps each pass costs as
much as the depthwise conv itself. oneDNN runs a conv with its activation or a sum as post-ops, writing once;
PyTorch exposes this as `torch.ops.mkldnn._convolution_pointwise` (what inductor emits for the same fusion),
and with weights re-laid once for oneDNN (`_reorder_convolution_weight`) the 1x1 convs also skip a per-call
weight reorder. The results equal the plain ops up to float rounding.

The fast call is taken only where it is exact and safe: CPU, float32 or bfloat16, channels_last input, no
gradient needed, and not while tracing, compiling or exporting (those graphs keep the plain ops, which their own
backends fuse). Everywhere else the same module runs the plain conv, GELU and add. Like the fast path it serves,
it is not for TorchScript.

bfloat16 runs on the same calls, whichever way it is asked for: a model whose weights are bfloat16
(`model.to(torch.bfloat16)`, runtime.inference_model), or a float32 model under CPU autocast to bfloat16. Under
autocast the module computes as autocast would (the input and weight in bfloat16, a bfloat16 result), with
the bfloat16 weight and bias cast once and packed beside the float32 ones instead of on every call.

The ops are private to PyTorch: they may be missing from a build or change their signature in a release.
So on first use they are probed once on tiny tensors against the plain ops (`fast_path_available`); any
error or mismatch turns the oneDNN calls off for the process, with one warning naming the reason, and every
module runs the plain ops.

One module may serve several threads at once: its packed weights are kept under a lock.
"""
import threading
import warnings
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .grid_cache import eager_inference, tensor_version

__all__ = ['FAST_DTYPES', 'OneDNNConv', 'compute_dtype', 'cpu_autocast', 'fast_path_available', 'onednn_applies']


def _pack(conv: nn.Conv2d, shape: Tuple[int, ...], dtype: Optional[torch.dtype] = None,
          padding: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """`conv`'s weight (cast to `dtype` if given) re-laid for oneDNN, for inputs of `shape` (padded by
    `padding`, default the conv's own)."""
    weight = conv.weight.detach()
    return torch.ops.mkldnn._reorder_convolution_weight(
        weight if dtype is None else weight.to(dtype), list(padding or conv.padding), list(conv.stride),
        list(conv.dilation), conv.groups, list(shape))


def _conv(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, gelu: bool,
          residual: Optional[torch.Tensor], bias: Optional[torch.Tensor] = None,
          padding: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """The one oneDNN call: conv of `x` with the packed `weight` and `bias` (default: the conv's), then GELU,
    or summed into `residual`; padded by `padding` (default: the conv's own)."""
    geometry = (list(padding or conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
    if bias is None and conv.bias is not None:
        bias = conv.bias.detach()
    if residual is not None:
        return torch.ops.mkldnn._convolution_pointwise_.binary(
            residual, x, weight, bias, *geometry, 'add', 1.0, None, [], None)
    unary, algorithm = ('gelu', 'none') if gelu else ('none', '')
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *geometry, unary, [], algorithm)


def _probe() -> Optional[str]:
    """Why the private ops cannot serve, or None where they exist, take the arguments `_conv` gives them and
    match the plain ops on tiny tensors (a 3x3 conv plain, with GELU, and unpadded with GELU; a 1x1 conv
    summed into a residual)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return 'this PyTorch has no oneDNN (torch.backends.mkldnn is not available)'
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
                (_conv(conv3, x, _pack(conv3, tuple(x.shape), padding=(0, 0)), True, None, padding=(0, 0)),
                 F.gelu(F.conv2d(x, conv3.weight, conv3.bias))),
                (_conv(conv1, x, _pack(conv1, tuple(x.shape)), False, residual.clone()), residual + conv1(x)),
            ]
            for name, (got, want) in zip(('conv', 'conv + GELU', 'unpadded conv + GELU', 'conv + sum'), checks):
                if not (isinstance(got, torch.Tensor) and got.shape == want.shape
                        and torch.allclose(got, want, rtol=1e-4, atol=1e-5)):
                    return f'its {name} call does not give the plain ops\' result'
            return None
    except Exception as e:  # a missing op, another signature: the plain ops serve, and the warning says why
        return f'{type(e).__name__}: {e}'.splitlines()[0]


_fast_path: Optional[bool] = None  # probed on first use
_probe_lock = threading.Lock()


def fast_path_available() -> bool:
    """Whether this PyTorch's oneDNN ops work as this module calls them (probed once, see the docstring; where
    they do not, a RuntimeWarning says why, once)."""
    global _fast_path
    if _fast_path is None:
        with _probe_lock:
            if _fast_path is None:
                reason = _probe()
                if reason is not None:
                    warnings.warn(f'the oneDNN calls of the CPU fast path are off, the plain ops run instead: '
                                  f'{reason}', RuntimeWarning, stacklevel=2)
                _fast_path = reason is None
    return _fast_path


FAST_DTYPES = (torch.float32, torch.bfloat16)


def cpu_autocast(x: torch.Tensor) -> bool:
    """Whether `x` is computed on the CPU under autocast to a lower precision (never while FX traces: its
    graphs record no autocast state to branch on)."""
    if isinstance(x, torch.fx.Proxy):
        return False
    return x.device.type == 'cpu' and torch.is_autocast_enabled('cpu')


def compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype a conv of `x` by `weight` computes in here: bfloat16 under CPU autocast to bfloat16 (for
    float32 and bfloat16 tensors, as autocast casts a conv's inputs), else the input's own."""
    if (cpu_autocast(x) and torch.get_autocast_dtype('cpu') == torch.bfloat16 and x.dtype in FAST_DTYPES
            and weight.dtype in FAST_DTYPES):
        return torch.bfloat16
    return x.dtype


def onednn_applies(x: torch.Tensor, weight: torch.Tensor, residual: Optional[torch.Tensor] = None) -> bool:
    """Whether the oneDNN call serves this input: see the module's docstring."""
    if not eager_inference([x, weight] if residual is None else [x, weight, residual]):
        return False
    if x.device.type != 'cpu' or x.dim() != 4 or compute_dtype(x, weight) not in FAST_DTYPES:
        return False
    if compute_dtype(x, weight) != torch.bfloat16 and weight.dtype != x.dtype:
        return False
    if not x.is_contiguous(memory_format=torch.channels_last):
        return False
    if residual is not None and not residual.is_contiguous(memory_format=torch.channels_last):
        return False
    return fast_path_available()


class OneDNNConv(nn.Module):
    """`conv`, then GELU if `gelu`, or plus `residual` (summed into `residual` in place on the fast path).

    Inference only: it lives inside models on the CPU fast path (models/fast_path.py), whose modules refuse to
    train.
    """

    shapes_kept = 2

    def __init__(self, conv: nn.Conv2d, gelu: bool = False):
        super().__init__()
        self.conv = conv
        self.gelu = gelu
        # the weight re-laid for oneDNN, per input shape and dtype (the layout oneDNN picks depends on the
        # shape: a weight packed for one shape and used at another is re-laid on every call); the last two are
        # kept (a micro-batched stage sees two shapes), dropped when the weight changes; with them, the bias
        # cast to each dtype the weight is packed in
        self._packed: Dict[Tuple[int, ...], torch.Tensor] = {}
        self._biases: Dict[torch.dtype, torch.Tensor] = {}
        self._packed_version = (0, -1)
        self._lock = threading.Lock()  # one model may serve several threads

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        if residual is not None and self.gelu:
            raise ValueError('OneDNNConv adds a residual only without a GELU')
        if onednn_applies(x, self.conv.weight, residual):
            return self._onednn(x, residual)
        y = self.conv(x)
        if self.gelu:
            y = F.gelu(y)
        if residual is not None:
            y = residual + y
        return y

    def packed_weight(self, shape: Tuple[int, ...], dtype: Optional[torch.dtype] = None,
                      padding: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """The weight in `dtype` (default: its own) packed for inputs of `shape` padded by `padding` (default:
        the conv's own)."""
        weight = self.conv.weight
        dtype = dtype or weight.dtype
        padding = tuple(padding or self.conv.padding)
        version = (weight.data_ptr(), tensor_version(weight))
        key = (*shape, dtype, *padding)
        with self._lock:
            if version != self._packed_version:
                self._packed, self._biases, self._packed_version = {}, {}, version
            packed = self._packed.pop(key, None)
            if packed is None:
                packed = _pack(self.conv, shape, None if dtype == weight.dtype else dtype, padding)
                while len(self._packed) >= self.shapes_kept:
                    self._packed.pop(next(iter(self._packed)))
            self._packed[key] = packed  # the most recent last
        return packed

    def _bias(self, dtype: torch.dtype) -> Optional[torch.Tensor]:
        """The bias in `dtype`: the conv's own, or a copy cast once (kept with the packed weights)."""
        bias = self.conv.bias
        if bias is None or bias.dtype == dtype:
            return None if bias is None else bias.detach()
        with self._lock:
            cast = self._biases.get(dtype)
            if cast is None:
                cast = self._biases[dtype] = bias.detach().to(dtype)
        return cast

    def _onednn(self, x: torch.Tensor, residual: Optional[torch.Tensor], gelu: Optional[bool] = None,
                padding: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """The oneDNN call in `compute_dtype`, with the module's GELU and padding unless given."""
        dtype = compute_dtype(x, self.conv.weight)
        x = x.to(dtype)
        if residual is not None and residual.dtype != dtype:  # autocast: the sum is a new bfloat16 map
            residual = residual.to(dtype)
        # packed before the bias: a new weight clears both
        weight = self.packed_weight(tuple(x.shape), dtype, padding)
        return _conv(self.conv, x, weight, self.gelu if gelu is None else gelu, residual, self._bias(dtype), padding)

    def unpadded_gelu(self, x: torch.Tensor) -> torch.Tensor:
        """GELU(conv of `x` with no padding), for an input its caller has padded itself (`EdgeCorrectedConv`):
        one oneDNN call in `compute_dtype` where the fast path serves it, else the plain ops (which a compiler
        fuses into one call)."""
        if onednn_applies(x, self.conv.weight):
            return self._onednn(x, None, gelu=True, padding=(0, 0))
        conv = self.conv
        return F.gelu(F.conv2d(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups))

    def __getstate__(self):
        # the packed weight is an opaque oneDNN tensor: not copied or pickled, rebuilt on the next call; a
        # lock is neither copied nor pickled: each copy gets its own
        state = self.__dict__.copy()
        state['_packed'], state['_biases'], state['_packed_version'] = {}, {}, (0, -1)
        del state['_lock']
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._lock = threading.Lock()

    def extra_repr(self) -> str:
        return 'gelu=True' if self.gelu else ''
