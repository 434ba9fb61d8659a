"""Exact inference folding of CMT: the fast model for eval, reached through `timm.utils.reparameterize_model`.

CMT puts its activations before its BatchNorms and its BatchNorms before zero-padded depthwise convs, so the
generic tools (TorchScript freezing, inductor) fold none of them. The folds are ours, and they are exact
(the fused logits equal the unfused ones up to float rounding), in eval mode:

- `CMTBlock.fuse()` returns a `FusedCMTBlock`:
  - LPU: the shortcut becomes +1 on the depthwise conv's centre tap (one add pass less);
  - LMHSA: the LayerNorm's affine folds into the query projection and into the stride-k depthwise key/value
    reduction (it has no padding, so every output sees every tap), the BatchNorm after that reduction into
    the reduction conv, keys and values become one projection (all three when k = 1), the attention scale
    d^-1/2 folds into the queries; q, k/v and the output projection run as 1x1 convs, which oneDNN runs
    faster than `F.linear` runs the same numbers (1.15-1.3x on the project's CPU);
  - IRFFN: the LayerNorm's affine folds into the first 1x1 conv; the BatchNorm after the first GELU and the
    inner shortcut fold into the depthwise conv (`EdgeCorrectedConv`: a BatchNorm before a zero-padded conv
    shifts the border positions differently, corrected in place on the border rows and columns only); the
    two BatchNorms around the output projection fold into that 1x1 conv.
- `ConvStem.fuse()` folds the BatchNorms after the first two GELUs into the next 3x3 convs (again with the
  border correction).

Folding checks what it folds: a block made of other parts than these (an ablation step's plain FFN, no LPU,
BatchNorms for LayerNorms) is left unfolded, and so stays exact; a block without position bias folds.

Not folded: LayerNorms' normalisation itself and the GELUs (not affine); the stem's last BatchNorm and the
LayerNorm of patch aggregation (the fold would cross a stage boundary for a pass over small maps); the head
(1x1 conv + BatchNorm on the 1/32 map, a negligible pass). The fused blocks run in channels_last memory
whatever the input format (their tokens are then views of the map, never copies).

On CPU the fused model also saves passes over memory without changing the arithmetic:
- every conv of a block is one oneDNN call with pre-packed weights (models/onednn.py); the GELUs run inside
  their convs (the first IRFFN GELU and the stem's first directly, those after an edge-corrected conv on an
  input padded with the values that make the correction unnecessary), and the two residual adds of the
  block inside the output projections (summed in place into the map the LPU wrote);
- the attention runs explicitly (q k^T + bias, softmax, times v), not through SDPA, whose float-mask path on
  CPU adds mask checks and a scaling pass; off the CPU `fused_attn` selects SDPA as in the unfused model;
- the stem and the first stage take a large batch a few images at a time (`MicroBatched`, which folding
  wraps around them), so that their maps, the largest of the network, stay in the processor's cache
  between passes.
Scripted, traced, compiled and exported graphs keep the plain ops, which their own backends fuse.

A fused model is for inference only: its fused modules refuse `train()` with an error. The unfused model
keeps its parameter names and shapes; only the fused copy re-lays its weights.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .onednn import OneDNNConv, compute_dtype, onednn_applies

__all__ = [
    'EARLY_MAP_BUDGET', 'EdgeCorrectedConv', 'FusedAttention', 'FusedCMTBlock', 'FusedIRFFN', 'InferenceOnly',
    'MicroBatched', 'attend', 'bn_scale_shift', 'fuse_block', 'is_exact_gelu',
]


class InferenceOnly(nn.Module):
    """A module built by folding for eval: it starts in eval mode and refuses to train."""

    def __init__(self):
        super().__init__()
        self.training = False

    def train(self, mode: bool = True) -> 'InferenceOnly':
        if mode:
            raise RuntimeError(
                f'{type(self).__name__} is part of a model fused for inference (timm.utils.reparameterize_model); '
                f'it cannot train: train the unfused model and fuse a copy of it for inference')
        return super().train(False)


def bn_scale_shift(bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """(s, t) with bn(x) = s * x + t per channel, in eval mode (running statistics)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _conv1x1(weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A 1x1 conv computing the linear map (out, in) `weight` with `bias`."""
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1, device=weight.device, dtype=weight.dtype)
    conv.weight.data.copy_(weight[:, :, None, None])
    conv.bias.data.copy_(bias)
    return conv


def _copy_conv(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A conv with `conv`'s geometry and the given weight and bias."""
    new = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        groups=conv.groups, device=weight.device, dtype=weight.dtype)
    new.weight.data.copy_(weight)
    new.bias.data.copy_(bias)
    return new


def _input_index(conv: nn.Conv2d) -> torch.Tensor:
    """(out, in/groups) index of the input channel each weight of `conv` reads (any grouping)."""
    out_per_group = conv.out_channels // conv.groups
    in_per_group = conv.in_channels // conv.groups
    group = torch.arange(conv.out_channels, device=conv.weight.device) // out_per_group
    return group[:, None] * in_per_group + torch.arange(in_per_group, device=conv.weight.device)[None, :]


def _fold_affine_in(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """conv(scale * x + shift) as (weight, taps): conv's weight scaled per input channel, and the shift's
    contribution of each tap, (out, kh, kw), which a position gets from the taps that land inside the image."""
    index = _input_index(conv)
    weight = conv.weight * scale[index][..., None, None]
    taps = (conv.weight * shift[index][..., None, None]).sum(1)
    return weight, taps


# where the padded input and the GELU inside the conv beat the border correction and a separate GELU
PADDED_GELU_DTYPES = (torch.bfloat16,)


def is_exact_gelu(act: nn.Module) -> bool:
    """Whether `act` is the erf GELU that oneDNN can apply after a conv (models/onednn.py)."""
    return type(act) is nn.GELU and act.approximate == 'none'


class EdgeCorrectedConv(InferenceOnly):
    """A 3x3 stride-1 zero-padded conv that absorbed a per-channel affine s * x + t applied to its input, and
    the GELU after it if `gelu`.

    conv(s * x + t) = conv_s(x) + sum of the taps of t that fall inside the image. `conv.bias` holds the
    interior value (every tap inside); positions on the border rows and columns lose the taps on the zero
    padding, subtracted in place on those rows and columns only: no per-grid map is kept, so any size works.
    Traced and compiled graphs (ONNX export, inductor) add the correction as one map built from the grid's
    sides instead, in the graph. With `identity`, it also absorbs a shortcut around the conv: conv(y) + y with
    y = s * x + t.

    With `gelu`, on the CPU fast path (models/onednn.py) in bfloat16 the GELU runs inside the conv, which
    the border correction after the conv would not allow: the input is padded instead with -t / s per
    channel (the value the affine maps to the zero the original conv pads with), so that the conv needs no
    correction, and the conv runs unpadded with the GELU as its post-op. The padded copy costs one pass over
    the input, less than PyTorch's separate bfloat16 GELU (which computes in float32 and converts both ways);
    in float32 the separate GELU is the cheaper of the two on every stage after the first (measured, docs/
    speed.md), so float32 keeps it. Compiled for the CPU in bfloat16 (not exported), the graph pads the same
    way with plain ops, so that inductor can fuse the GELU into its conv as oneDNN's post-op. Where a channel
    has s = 0 (no finite pad value), or off these paths, the correction and a separate GELU run.
    """

    def __init__(self, conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor, identity: bool = False,
                 gelu: bool = False):
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1) or conv.dilation != (1, 1):
            raise ValueError(
                f'EdgeCorrectedConv folds into a 3x3 conv with stride 1 and padding 1, got kernel '
                f'{conv.kernel_size}, stride {conv.stride}, padding {conv.padding}, dilation {conv.dilation}')
        with torch.no_grad():
            weight, taps = _fold_affine_in(conv, scale, shift)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(scale[:conv.out_channels])
            bias = bias + taps.sum((1, 2))
            if identity:  # y itself: s on the centre tap of the matching channel, t everywhere
                if conv.groups != conv.in_channels or conv.in_channels != conv.out_channels:
                    raise ValueError('a shortcut folds only into a depthwise conv with as many outputs as inputs')
                weight[:, 0, 1, 1] += scale
                bias = bias + shift
            self.conv = OneDNNConv(_copy_conv(conv, weight, bias))
            self.gelu = gelu
            # per output channel: what the top/bottom rows, left/right columns and the corners lose
            self.register_buffer('rows', torch.stack([taps[:, 0].sum(1), taps[:, 2].sum(1)]))
            self.register_buffer('cols', torch.stack([taps[:, :, 0].sum(1), taps[:, :, 2].sum(1)]))
            self.register_buffer('corners', taps[:, 0::2, 0::2].permute(1, 2, 0).contiguous())
            # per input channel: the value the affine maps to zero, where every channel has one
            pad = -shift / scale
            self.register_buffer('pad', pad if gelu and bool(torch.isfinite(pad).all()) else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels_last, where the border rows and columns are cheap strided views (in-place updates of
        # NCHW row slices with a per-channel operand run a thousand times slower here)
        x = x.contiguous(memory_format=torch.channels_last)
        if not torch.jit.is_scripting():
            dtype = self._padded_gelu_dtype(x)
            if dtype is not None:
                return self.conv.unpadded_gelu(self._padded(x, dtype))
        y = self.conv(x)
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
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

    @torch.jit.unused
    def _padded_gelu_dtype(self, x: torch.Tensor) -> Optional[torch.dtype]:
        """The dtype the conv computes in where it runs on `x` padded with `pad` and the GELU as its post-op
        (see the docstring), else None."""
        dtype = compute_dtype(x, self.conv.conv.weight)
        if self.pad is None or dtype not in PADDED_GELU_DTYPES:
            return None
        if torch.compiler.is_compiling():
            # exported graphs (ONNX, the int8 program, whose int8 convs take no GELU post-op) keep the correction
            applies = x.device.type == 'cpu' and not torch.compiler.is_exporting()
        else:
            applies = onednn_applies(x, self.conv.conv.weight)
        return dtype if applies else None

    @torch.jit.unused
    def _padded(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """`x` (channels_last) with a one-pixel border of `pad`, in `dtype` (the one the conv computes in)."""
        B, C, H, W = x.shape
        if torch.compiler.is_compiling():
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


def _heads(x: torch.Tensor, parts: int, num_heads: int) -> List[torch.Tensor]:
    """A (B, parts * C, H, W) map as `parts` tensors (B, heads, H * W, C / heads); views in channels_last."""
    B, C, H, W = x.shape
    x = x.permute(0, 2, 3, 1).reshape(B, H * W, parts, num_heads, C // (parts * num_heads))
    return list(x.permute(2, 0, 3, 1, 4).unbind(0))


def attend(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor], sdpa: bool,
) -> torch.Tensor:
    """softmax(q k^T + bias) v, with the scale already in q (no bias: None): through
    `scaled_dot_product_attention` or explicitly."""
    if sdpa:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.)
    logits = q @ k.transpose(-2, -1)
    if bias is not None:
        logits = logits.add_(bias)
    return logits.softmax(dim=-1) @ v


class FusedAttention(InferenceOnly):
    """LMHSA (Eq. 2-4) with the LayerNorm affine, the key/value BatchNorm and the scale folded in.

    Takes the normalised map (B, C, H, W) and returns `residual` plus the projected attention output, as a
    map (summed into `residual` in place on CPU). `fused_attn` selects `scaled_dot_product_attention` off the
    CPU; on the CPU the explicit form runs, because SDPA with a float mask takes its math path there and adds
    mask checks and a scaling pass to it (about 5% of the fused model's time, measured).
    """

    def __init__(
            self,
            q: Optional[nn.Conv2d],
            kv: nn.Conv2d,
            sr: Optional[nn.Conv2d],
            proj: nn.Conv2d,
            num_heads: int,
            fused_attn: bool,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.fused_attn = fused_attn
        self.q = None if q is None else OneDNNConv(q)  # None when k = 1: kv then computes q, k and v at once
        self.sr = None if sr is None else OneDNNConv(sr)
        self.kv = OneDNNConv(kv)
        self.proj = OneDNNConv(proj)

    def forward(self, x: torch.Tensor, rel_pos_bias: Optional[torch.Tensor], residual: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        if self.q is None:
            q, k, v = _heads(self.kv(x), 3, self.num_heads)
        else:
            q = _heads(self.q(x), 1, self.num_heads)[0]
            k, v = _heads(self.kv(x if self.sr is None else self.sr(x)), 2, self.num_heads)
        bias = None if rel_pos_bias is None else rel_pos_bias.to(q.dtype)
        x = attend(q, k, v, bias, self.fused_attn and q.device.type != 'cpu')
        x = x.transpose(1, 2).reshape(B, H, W, C).permute(0, 3, 1, 2)
        return self.proj(x, residual)


class FusedIRFFN(InferenceOnly):
    """IRFFN (Eq. 5) with its three BatchNorms, its inner shortcut and the LayerNorm affine before it folded:
    1x1 conv -> GELU -> depthwise 3x3 (edge-corrected) -> GELU -> 1x1 conv, plus `residual` (summed into it
    in place on CPU). The first GELU runs inside the first conv (on CPU in one oneDNN call; `act1` is then an
    identity)."""

    def __init__(self, fc1: OneDNNConv, act1: nn.Module, dwconv: EdgeCorrectedConv, act2: nn.Module,
                 fc2: OneDNNConv):
        super().__init__()
        self.fc1 = fc1
        self.act1 = act1
        self.dwconv = dwconv
        self.act2 = act2
        self.fc2 = fc2

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act2(self.dwconv(self.act1(self.fc1(x)))), residual)


class FusedCMTBlock(InferenceOnly):
    """CMT block (Eq. 6) folded for inference; takes and returns an NCHW map, computed in channels_last."""

    def __init__(self, lpu: nn.Conv2d, attn: FusedAttention, mlp: FusedIRFFN, eps1: float, eps2: float):
        super().__init__()
        self.lpu = OneDNNConv(lpu)
        self.attn = attn
        self.mlp = mlp
        self.dim = lpu.out_channels  # an int, not x.shape[1]: a traced shape would not do as a norm's shape
        self.eps1 = eps1
        self.eps2 = eps2

    def forward(self, x: torch.Tensor, rel_pos_bias: Optional[torch.Tensor]) -> torch.Tensor:
        # in channels_last the token sequence is a view of the map: no layout copies between the parts; the
        # two residual adds happen inside the output projections (in place, into the map the LPU wrote)
        x = self.lpu(x.contiguous(memory_format=torch.channels_last))
        x = self.attn(_channel_norm(x, self.dim, self.eps1), rel_pos_bias, x)
        return self.mlp(_channel_norm(x, self.dim, self.eps2), x)


def _channel_norm(x: torch.Tensor, dim: int, eps: float) -> torch.Tensor:
    """LayerNorm over the channels of a channels_last map, without affine (folded into what follows)."""
    return F.layer_norm(x.permute(0, 2, 3, 1), (dim,), eps=eps).permute(0, 3, 1, 2)


def _bias(layer: nn.Module) -> torch.Tensor:
    """A linear's or conv's bias, zeros where it has none (qkv_bias=False)."""
    if layer.bias is not None:
        return layer.bias
    return layer.weight.new_zeros(layer.weight.shape[0])


def _fold_ln_into_linear(ln: nn.LayerNorm, linears: Sequence[nn.Linear]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The linears stacked, applied to g * x + b: (weight (sum of outs, C), bias)."""
    weight = torch.cat([lin.weight for lin in linears]) * ln.weight[None, :]
    bias = torch.cat([_bias(lin) for lin in linears]) + torch.cat([lin.weight for lin in linears]) @ ln.bias
    return weight, bias


def _fuse_attention(block: nn.Module) -> FusedAttention:
    attn, ln = block.attn, block.norm1
    scale = attn.scale
    if attn.sr_ratio > 1:
        q_weight, q_bias = _fold_ln_into_linear(ln, [attn.q])
        # LN affine into the unpadded stride-k depthwise conv, then its BatchNorm after it
        weight, taps = _fold_affine_in(attn.sr, ln.weight, ln.bias)
        bias = attn.sr.bias + taps.sum((1, 2))
        s, t = bn_scale_shift(attn.sr_norm)
        sr = _copy_conv(attn.sr, weight * s[:, None, None, None], bias * s + t)
        kv = _conv1x1(torch.cat([attn.k.weight, attn.v.weight]), torch.cat([_bias(attn.k), _bias(attn.v)]))
        q = _conv1x1(q_weight * scale, q_bias * scale)
    else:
        weight, bias = _fold_ln_into_linear(ln, [attn.q, attn.k, attn.v])
        dim = attn.q.out_features
        weight[:dim] *= scale
        bias[:dim] *= scale
        q, sr, kv = None, None, _conv1x1(weight, bias)
    proj = _conv1x1(attn.proj.weight, attn.proj.bias)
    return FusedAttention(q, kv, sr, proj, attn.num_heads, attn.fused_attn)


def _fuse_ffn(block: nn.Module) -> FusedIRFFN:
    mlp, ln = block.mlp, block.norm2
    fc1_weight = mlp.fc1.weight[:, :, 0, 0] * ln.weight[None, :]
    fc1_bias = mlp.fc1.bias + mlp.fc1.weight[:, :, 0, 0] @ ln.bias
    s1, t1 = bn_scale_shift(mlp.norm1)
    gelu2 = is_exact_gelu(mlp.act2)
    dwconv = EdgeCorrectedConv(mlp.dwconv, s1, t1, identity=True, gelu=gelu2)
    s2, t2 = bn_scale_shift(mlp.norm2)
    s3, t3 = bn_scale_shift(mlp.norm3)
    fc2 = mlp.fc2.weight[:, :, 0, 0]
    fc2_weight = s3[:, None] * fc2 * s2[None, :]
    fc2_bias = s3 * (mlp.fc2.bias + fc2 @ t2) + t3
    gelu1 = is_exact_gelu(mlp.act1)
    return FusedIRFFN(
        OneDNNConv(_conv1x1(fc1_weight, fc1_bias), gelu=gelu1), nn.Identity() if gelu1 else mlp.act1,
        dwconv, nn.Identity() if gelu2 else mlp.act2, OneDNNConv(_conv1x1(fc2_weight, fc2_bias)))


def fuse_block(block: nn.Module) -> FusedCMTBlock:
    """The folded inference copy of a `CMTBlock` (whose `fuse()` calls this); `block` is left untouched."""
    with torch.no_grad():
        lpu = block.lpu.conv
        weight = lpu.weight.clone()
        weight[:, 0, 1, 1] += 1.  # LPU(x) = DWConv(x) + x
        fused = FusedCMTBlock(
            _copy_conv(lpu, weight, lpu.bias),
            _fuse_attention(block),
            _fuse_ffn(block),
            block.norm1.eps,
            block.norm2.eps,
        )
    return fused


# bytes of the first stage's largest map (the IRFFN's hidden one) per micro-batch: well inside a server's or a
# laptop's last-level cache (16-32 MiB typically), so that the stem's and first stage's passes over their maps
# hit the cache instead of memory (docs/speed.md has the measured gain).
EARLY_MAP_BUDGET = 16 * 2 ** 20


class MicroBatched(InferenceOnly):
    """`module` run over a large CPU batch a few images at a time, for a fused model (the results are the
    same, image by image): the CPU execution policy of the stem and the first stage, installed by folding.

    A micro-batch holds as many images as keep a map of `map_chs` channels at 1 / `map_stride` of the
    module's input sides within `EARLY_MAP_BUDGET` bytes. The whole batch runs at once off the CPU, when it
    fits, and in scripted, traced or exported graphs, whose batch may vary. `torch.compile` for static shapes
    (its default, and `dynamic=False`) unrolls the micro-batches into its graph, which is built for one batch
    size anyway, and its fused kernels then keep their maps in cache as eager mode does (docs/speed.md);
    compiled with `dynamic=True`, the batch runs whole, in one graph for every batch size.
    """

    def __init__(self, module: nn.Module, map_chs: int, map_stride: int):
        super().__init__()
        self.module = module
        self.map_chs = map_chs
        self.map_stride = map_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            size = self.micro_batch(x)
            if size:
                return self._split(x, size)
        return self.module(x)

    @torch.jit.unused
    def micro_batch(self, x: torch.Tensor) -> int:
        """Images per micro-batch for the input `x`, or 0: the whole batch at once."""
        if isinstance(x, torch.fx.Proxy) or torch.jit.is_tracing() or torch.compiler.is_exporting():
            return 0
        if torch.compiler.is_compiling() and not torch._dynamo.config.assume_static_by_default:
            return 0  # compiled for dynamic shapes: a split would specialize the graph to this batch size
        if x.device.type != 'cpu' or x.dim() != 4:
            return 0
        per_image = (self.map_chs * max(1, x.shape[2] // self.map_stride) * max(1, x.shape[3] // self.map_stride)
                     * x.element_size())
        size = max(1, EARLY_MAP_BUDGET // per_image)
        return size if size < x.shape[0] else 0

    @torch.jit.unused
    def _split(self, x: torch.Tensor, size: int) -> torch.Tensor:
        return torch.cat([self.module(part) for part in x.split(size)])

    def extra_repr(self) -> str:
        return f'map_chs={self.map_chs}, map_stride={self.map_stride}'
