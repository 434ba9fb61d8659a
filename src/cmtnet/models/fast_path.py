"""The CPU fast path: one pass over a folded CMT (models/fuse.py) that changes how it runs on a CPU, not what it
computes. `cpu_fast_path(reparameterize_model(model))` returns a copy whose results equal the folded model's
up to float rounding; the commands apply it where the model runs on a CPU (`applies_on`), never elsewhere.

- Every conv of a block, and the stem's first, is one oneDNN call with pre-packed weights (models/onednn.py),
  the GELU after it as the call's post-op and the block's two residual adds as sums into the map the LPU
  wrote, each of which saves a pass over memory.
- The BatchNorms before zero-padded 3x3 convs (the IRFFN's first, the stem's first two), which no plain conv
  takes, fold into their convs with a border correction (`EdgeCorrectedConv`); in bfloat16 the input is
  padded instead, so that the GELU after the conv can run inside it.
- The attention runs explicitly (q k^T + bias, softmax, times v): SDPA with a float mask takes its math path
  on a CPU and adds mask checks and a scaling pass to it.
- The stem and the first stage take a large batch a few images at a time (`MicroBatched`), so that their
  maps, the largest of the network, stay in the processor's cache between passes.

The modules fall back to the plain ops where their input does not suit them (another device, gradients, a
layout or dtype oneDNN does not take here), and traced, compiled and exported graphs keep plain ops, which their
own backends fuse (`_capture` says which graph is being recorded). A fast-path model is not for TorchScript:
`torch.jit.script` and the exporters take the plain fold. `benchmarks/` and `cmtnet bench` (paths `fused` and
`fused_cl`) measure what each part pays.
"""
import copy
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cmt import CMTStage, CMTStages, ConvStem
from .fuse import (
    FusedAttention, FusedCMTBlock, FusedIRFFN, InferenceOnly, bn_scale_shift, channel_norm, copy_conv,
    fold_affine_in, is_exact_gelu,
)
from .onednn import OneDNNConv, compute_dtype, onednn_applies

__all__ = [
    'EARLY_MAP_BUDGET', 'EdgeCorrectedConv', 'FastAttention', 'FastCMTBlock', 'FastIRFFN', 'MicroBatched',
    'applies_on', 'cpu_fast_path',
]

# where the padded input and the GELU inside the conv beat the border correction and a separate GELU
# (benchmarks/padded_gelu.py)
PADDED_GELU_DTYPES = (torch.bfloat16,)


def _capture(x: torch.Tensor) -> Optional[str]:
    """Which graph is being recorded of the fast path's forward on `x`: 'export' (traced by FX or TorchScript,
    or exported: plain ops, for any size), 'compile' (`torch.compile`, whose CPU backend fuses plain ops but
    not in-place updates of slices), or None in eager mode."""
    # the one place the fast path asks: its eager shortcuts (in-place border updates, oneDNN calls, micro-batches)
    # are invisible to a tracer or wrong in an exported graph, and a compiler does better with plain ops
    if isinstance(x, torch.fx.Proxy) or torch.jit.is_tracing() or torch.compiler.is_exporting():
        return 'export'
    return 'compile' if torch.compiler.is_compiling() else None


class EdgeCorrectedConv(InferenceOnly):
    """A 3x3 stride-1 zero-padded conv that absorbed the BatchNorm `bn` before it, s * x + t per channel, and
    the GELU after it if `gelu`.

    conv(s * x + t) = conv_s(x) + sum of the taps of t that fall inside the image. `conv.bias` holds the
    interior value (every tap inside); positions on the border rows and columns lose the taps on the zero
    padding, subtracted in place on those rows and columns only: no per-grid map is kept, so any size works.
    Traced and compiled graphs add the correction as one map built from the grid's sides instead.

    With `gelu`, where oneDNN runs the conv in a dtype of `PADDED_GELU_DTYPES`, the input is padded instead
    with -t / s per channel (the value the BatchNorm maps to the zero the original conv pads with), so that
    the conv needs no correction and runs unpadded with the GELU as its post-op; compiled for the CPU (not
    exported), the graph pads the same way with plain ops, so that inductor can fuse the GELU into its conv.
    Where a channel has s = 0 (no finite pad value), or off these paths, the correction and a separate GELU
    run.
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, gelu: bool = False):
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1) or conv.dilation != (1, 1):
            raise ValueError(
                f'EdgeCorrectedConv folds into a 3x3 conv with stride 1 and padding 1, got kernel '
                f'{conv.kernel_size}, stride {conv.stride}, padding {conv.padding}, dilation {conv.dilation}')
        with torch.no_grad():
            scale, shift = bn_scale_shift(bn)
            weight, taps = fold_affine_in(conv, scale, shift)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(scale[:conv.out_channels])
            self.conv = OneDNNConv(copy_conv(conv, weight, bias + taps.sum((1, 2))))
            self.gelu = gelu
            # per output channel: what the top/bottom rows, left/right columns and the corners lose
            self.register_buffer('rows', torch.stack([taps[:, 0].sum(1), taps[:, 2].sum(1)]))
            self.register_buffer('cols', torch.stack([taps[:, :, 0].sum(1), taps[:, :, 2].sum(1)]))
            self.register_buffer('corners', taps[:, 0::2, 0::2].permute(1, 2, 0).contiguous())
            # per input channel: the value the BatchNorm maps to zero, where every channel has one
            pad = -shift / scale
            self.register_buffer('pad', pad if gelu and bool(torch.isfinite(pad).all()) else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels_last, where the border rows and columns are cheap strided views (in-place updates of NCHW
        # row slices with a per-channel operand are far slower)
        x = x.contiguous(memory_format=torch.channels_last)
        capture = _capture(x)
        dtype = self._padded_gelu_dtype(x, capture)
        if dtype is not None:
            return self.conv.unpadded_gelu(self._padded(x, dtype, capture))
        y = self.conv(x)
        if capture is not None:
            # the tracer drops in-place updates of slices, and a compiler turns each into a copy of the whole
            # map: add the correction as one map instead (which a compiler fuses into the next elementwise op)
            y = y + self._edge_map(y.shape[2], y.shape[3])
        else:
            # the border loses the taps on the padding; a corner lost a row and a column, which share one tap
            nhwc = y.permute(0, 2, 3, 1)
            nhwc[:, 0].sub_(self.rows[0])
            nhwc[:, -1].sub_(self.rows[1])
            nhwc[:, :, 0].sub_(self.cols[0])
            nhwc[:, :, -1].sub_(self.cols[1])
            nhwc[:, 0, 0].add_(self.corners[0, 0])
            nhwc[:, 0, -1].add_(self.corners[0, 1])
            nhwc[:, -1, 0].add_(self.corners[1, 0])
            nhwc[:, -1, -1].add_(self.corners[1, 1])
        return F.gelu(y) if self.gelu else y

    def _padded_gelu_dtype(self, x: torch.Tensor, capture: Optional[str]) -> Optional[torch.dtype]:
        """The dtype the conv computes in where it runs on `x` padded with `pad` and the GELU as its post-op
        (see the docstring), else None; exported graphs (ONNX, the int8 program, whose int8 convs take no GELU
        post-op) keep the correction."""
        if self.pad is None or capture == 'export':
            return None
        dtype = compute_dtype(x, self.conv.conv.weight)
        if dtype not in PADDED_GELU_DTYPES:
            return None
        applies = x.device.type == 'cpu' if capture == 'compile' else onednn_applies(x, self.conv.conv.weight)
        return dtype if applies else None

    def _padded(self, x: torch.Tensor, dtype: torch.dtype, capture: Optional[str]) -> torch.Tensor:
        """`x` (channels_last) with a one-pixel border of `pad`, in `dtype` (the one the conv computes in)."""
        B, C, H, W = x.shape
        if capture == 'compile':
            # one select, which the compiler makes one pass (it would copy the whole map for each border
            # written in place)
            rows, cols = torch.arange(H + 2, device=x.device), torch.arange(W + 2, device=x.device)
            inside = ((rows > 0) & (rows <= H))[:, None] & ((cols > 0) & (cols <= W))[None, :]
            return torch.where(inside, F.pad(x.to(dtype), (1, 1, 1, 1)), self.pad.to(dtype)[:, None, None])
        out = torch.empty((B, C, H + 2, W + 2), dtype=dtype, device=x.device, memory_format=torch.channels_last)
        nhwc, pad = out.permute(0, 2, 3, 1), self.pad.to(dtype)
        nhwc[:, 0] = pad
        nhwc[:, -1] = pad
        nhwc[:, 1:-1, 0] = pad
        nhwc[:, 1:-1, -1] = pad
        nhwc[:, 1:-1, 1:-1] = x.permute(0, 2, 3, 1)
        return out

    def _edge_map(self, height: int, width: int) -> torch.Tensor:
        """The border correction as a (C, H, W) map, built from the grid's sides (so traced graphs keep it
        for any size)."""
        rows = torch.arange(height, device=self.rows.device)
        cols = torch.arange(width, device=self.rows.device)
        top, bottom = (rows == 0).to(self.rows.dtype)[:, None], (rows == height - 1).to(self.rows.dtype)[:, None]
        left, right = (cols == 0).to(self.rows.dtype)[None, :], (cols == width - 1).to(self.rows.dtype)[None, :]
        r, c, k = self.rows[..., None, None], self.cols[..., None, None], self.corners[..., None, None]
        return (k[0, 0] * top * left + k[0, 1] * top * right + k[1, 0] * bottom * left + k[1, 1] * bottom * right
                - r[0] * top - r[1] * bottom - c[0] * left - c[1] * right)


def _onednn(conv: Optional[nn.Conv2d]) -> Optional[OneDNNConv]:
    return None if conv is None else OneDNNConv(conv)


class FastAttention(FusedAttention):
    """A folded attention whose convs are oneDNN calls, run explicitly, and whose output projection is summed
    into `residual` (in place where the oneDNN call serves it)."""

    def __init__(self, attn: FusedAttention):
        super().__init__(_onednn(attn.q), OneDNNConv(attn.kv), _onednn(attn.sr), OneDNNConv(attn.proj),
                         attn.num_heads, attn.fused_attn)

    def forward(self, x: torch.Tensor, rel_pos_bias: Optional[torch.Tensor], residual: torch.Tensor) -> torch.Tensor:
        return self.proj(self.attention(x, rel_pos_bias, sdpa=False), residual)


class FastIRFFN(InferenceOnly):
    """A folded IRFFN as oneDNN calls: the first GELU inside the first conv, the BatchNorm and the second GELU
    in the edge-corrected depthwise conv, the output summed into `residual`."""

    def __init__(self, mlp: FusedIRFFN):
        super().__init__()
        gelu1, gelu2 = is_exact_gelu(mlp.act1), is_exact_gelu(mlp.act2)
        self.fc1 = OneDNNConv(mlp.fc1, gelu=gelu1)
        self.act1 = nn.Identity() if gelu1 else mlp.act1
        self.dwconv = EdgeCorrectedConv(mlp.dwconv, mlp.norm, gelu=gelu2)
        self.act2 = nn.Identity() if gelu2 else mlp.act2
        self.fc2 = OneDNNConv(mlp.fc2)
        self.hidden_chs = mlp.fc1.out_channels

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act2(self.dwconv(self.act1(self.fc1(x)))), residual)


class FastCMTBlock(InferenceOnly):
    """A folded CMT block on the fast path; the two residual adds happen inside the output projections, in
    place, into the map the LPU wrote."""

    def __init__(self, block: FusedCMTBlock):
        super().__init__()
        self.lpu = OneDNNConv(block.lpu)
        self.attn = FastAttention(block.attn)
        self.mlp = FastIRFFN(block.mlp)
        self.dim, self.eps1, self.eps2 = block.dim, block.eps1, block.eps2
        self.hidden_chs = self.mlp.hidden_chs

    def forward(self, x: torch.Tensor, rel_pos_bias: Optional[torch.Tensor]) -> torch.Tensor:
        x = self.lpu(x.contiguous(memory_format=torch.channels_last))
        x = self.attn(channel_norm(x, self.dim, self.eps1), rel_pos_bias, x)
        return self.mlp(channel_norm(x, self.dim, self.eps2), x)


# bytes of an early map per micro-batch: well inside a server's or a laptop's last-level cache (16-32 MiB
# typically), so that the stem's and first stage's passes over their maps hit the cache instead of memory
# (`cmtnet bench`'s fused paths and benchmarks/compiled_micro_batches.py measure the gain)
EARLY_MAP_BUDGET = 16 * 2 ** 20


class MicroBatched(InferenceOnly):
    """`module` run over a large CPU batch a few images at a time (the results are the same, image by image).

    A micro-batch holds as many images as keep a map of `map_chs` channels at 1 / `map_stride` of the
    module's input sides within `EARLY_MAP_BUDGET` bytes. The whole batch runs at once off the CPU, when it
    fits, and in traced or exported graphs, whose batch may vary. `torch.compile` for static shapes
    (its default, and `dynamic=False`) unrolls the micro-batches into its graph, which is built for one batch
    size anyway, and its fused kernels then keep their maps in cache as eager mode does; compiled with
    `dynamic=True`, the batch runs whole, in one graph for every batch size.
    """

    def __init__(self, module: nn.Module, map_chs: int, map_stride: int):
        super().__init__()
        self.module = module
        self.map_chs = map_chs
        self.map_stride = map_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.micro_batch(x)
        return torch.cat([self.module(part) for part in x.split(size)]) if size else self.module(x)

    def micro_batch(self, x: torch.Tensor) -> int:
        """Images per micro-batch for the input `x`, or 0: the whole batch at once."""
        capture = _capture(x)
        if capture == 'export' or x.device.type != 'cpu' or x.dim() != 4:
            return 0
        if capture == 'compile' and not torch._dynamo.config.assume_static_by_default:
            return 0  # compiled for dynamic shapes: a split would specialize the graph to this batch size
        per_image = (self.map_chs * max(1, x.shape[2] // self.map_stride) * max(1, x.shape[3] // self.map_stride)
                     * x.element_size())
        size = max(1, EARLY_MAP_BUDGET // per_image)
        return size if size < x.shape[0] else 0

    def extra_repr(self) -> str:
        return f'map_chs={self.map_chs}, map_stride={self.map_stride}'


def _fast_stem(stem: ConvStem) -> nn.Module:
    """The stem with its first conv and GELU one oneDNN call and its first two BatchNorms folded into the next
    convs, micro-batched counting three maps of the stem's width per image (a conv's input and output and the
    border pass after it); changed in place."""
    gelu1, gelu2, gelu3 = is_exact_gelu(stem.act1), is_exact_gelu(stem.act2), is_exact_gelu(stem.act3)
    stem.conv1 = OneDNNConv(stem.conv1, gelu=gelu1)
    stem.conv2 = EdgeCorrectedConv(stem.conv2, stem.norm1, gelu=gelu2)
    stem.conv3 = EdgeCorrectedConv(stem.conv3, stem.norm2, gelu=gelu3)
    stem.act1 = nn.Identity() if gelu1 else stem.act1
    stem.act2 = nn.Identity() if gelu2 else stem.act2
    stem.act3 = nn.Identity() if gelu3 else stem.act3
    stem.norm1, stem.norm2 = nn.Identity(), nn.Identity()
    return MicroBatched(stem, map_chs=3 * stem.norm3.num_features, map_stride=2)


def _first_stage(stage: nn.Module) -> nn.Module:
    """The first stage micro-batched on its IRFFN's hidden map, where its blocks are on the fast path."""
    if not isinstance(stage, CMTStage) or not isinstance(stage.blocks[0], FastCMTBlock):
        return stage
    map_stride = 1 if isinstance(stage.downsample, nn.Identity) else 2
    return MicroBatched(stage, map_chs=stage.blocks[0].hidden_chs, map_stride=map_stride)


def _replace_children(module: nn.Module) -> None:
    """The folded blocks and the stems of `module` (at any depth) put on the fast path, in place."""
    for name, child in module.named_children():
        if isinstance(child, FusedCMTBlock):
            setattr(module, name, FastCMTBlock(child))
        elif type(child) is ConvStem and isinstance(child.norm1, nn.BatchNorm2d):
            setattr(module, name, _fast_stem(child))
        else:
            _replace_children(child)


def cpu_fast_path(folded: nn.Module) -> nn.Module:
    """A copy of the folded model `folded` (`timm.utils.reparameterize_model`) that runs fast on a CPU, with the
    same results up to float rounding; `folded` is left untouched. Parts it does not know (an unfolded block,
    another stem) are kept as they are; a model on the fast path already comes back as it is."""
    model = copy.deepcopy(folded)
    with torch.no_grad():
        _replace_children(model)
        for stages in [m for m in model.modules() if isinstance(m, CMTStages)]:
            stages[0] = _first_stage(stages[0])
    return model


def applies_on(device: Union[str, torch.device]) -> bool:
    """Whether the fast path serves a model that runs on `device`: on a CPU only."""
    return torch.device(device).type == 'cpu'
