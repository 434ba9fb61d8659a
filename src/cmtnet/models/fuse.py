"""Exact inference folding of CMT, reached through `timm.utils.reparameterize_model`: arithmetic only.

CMT puts its activations before its BatchNorms and its BatchNorms before zero-padded depthwise convs, so the
generic tools (TorchScript freezing, inductor) fold none of them. `CMTBlock.fuse()` folds them where the
result is a standard layer, exactly (the folded logits equal the unfolded ones up to float rounding), in eval
mode, and returns a `FusedCMTBlock`:

- LPU: the shortcut becomes +1 on the depthwise conv's centre tap (one add pass less);
- LMHSA: the LayerNorm's affine folds into the query projection and into the stride-k depthwise key/value
  reduction (it has no padding, so every output sees every tap), the BatchNorm after that reduction into the
  reduction conv, keys and values become one projection (all three when k = 1), the attention scale d^-1/2
  folds into the queries; q, k/v and the output projection are 1x1 convs over the channels_last map, whose
  tokens are then views, never copies;
- IRFFN: the LayerNorm's affine folds into the first 1x1 conv, the inner shortcut into the depthwise conv's
  centre tap, and the two BatchNorms around the output projection into that 1x1 conv. The BatchNorm before
  the zero-padded depthwise conv stays: folded into the conv, it would shift the border positions
  differently from the others, which no plain conv computes (the CPU fast path, models/fast_path.py, folds
  it with a border correction).

The folded block is made of `nn.Conv2d`s with bias, LayerNorm without affine, a BatchNorm, plain GELUs and
the attention's own matmuls: what ONNX, `torch.compile`, a GPU and torchao's int8 flow take, on any device.

Folding checks what it folds: a block made of other parts than these (an ablation step's plain FFN, no LPU,
BatchNorms for LayerNorms) is left unfolded, and so stays exact; a block without position bias folds. The
stem, the patch aggregations and the head keep their layers (their BatchNorms sit before zero-padded convs,
or the fold would cross a stage boundary).

A folded block is for inference only: it refuses `train()` with an error. The unfolded model keeps its
parameter names and shapes; only the folded copy re-lays its weights.
"""
import copy
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    'FusedAttention', 'FusedCMTBlock', 'FusedIRFFN', 'InferenceOnly', 'attend', 'bn_scale_shift',
    'channel_norm', 'copy_conv', 'fold_affine_in', 'fuse_block', 'heads', 'is_exact_gelu',
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


def copy_conv(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
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


def fold_affine_in(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """conv(scale * x + shift) as (weight, taps): conv's weight scaled per input channel, and the shift's
    contribution of each tap, (out, kh, kw), which a position gets from the taps that land inside the image."""
    index = _input_index(conv)
    weight = conv.weight * scale[index][..., None, None]
    taps = (conv.weight * shift[index][..., None, None]).sum(1)
    return weight, taps


def is_exact_gelu(act: nn.Module) -> bool:
    """Whether `act` is the erf GELU (the one a conv can take as its post-op, models/onednn.py)."""
    return type(act) is nn.GELU and act.approximate == 'none'


def heads(x: torch.Tensor, parts: int, num_heads: int) -> List[torch.Tensor]:
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


def channel_norm(x: torch.Tensor, dim: int, eps: float) -> torch.Tensor:
    """LayerNorm over the channels of a channels_last map, without affine (folded into what follows)."""
    return F.layer_norm(x.permute(0, 2, 3, 1), (dim,), eps=eps).permute(0, 3, 1, 2)


class FusedAttention(InferenceOnly):
    """LMHSA (Eq. 2-4) with the LayerNorm affine, the key/value BatchNorm and the scale folded in.

    Takes the normalised map (B, C, H, W) and returns the projected attention output as a map. `fused_attn`
    selects `scaled_dot_product_attention` (`set_model_fused_attn`), as in the unfolded model.
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
        self.q = q  # None when k = 1: kv then computes q, k and v at once
        self.sr = sr
        self.kv = kv
        self.proj = proj

    def attention(self, x: torch.Tensor, rel_pos_bias: Optional[torch.Tensor], sdpa: bool) -> torch.Tensor:
        """The attention's output before the output projection, as a (B, C, H, W) map."""
        B, C, H, W = x.shape
        if self.q is None:
            q, k, v = heads(self.kv(x), 3, self.num_heads)
        else:
            q = heads(self.q(x), 1, self.num_heads)[0]
            k, v = heads(self.kv(x if self.sr is None else self.sr(x)), 2, self.num_heads)
        bias = None if rel_pos_bias is None else rel_pos_bias.to(q.dtype)
        x = attend(q, k, v, bias, sdpa)
        return x.transpose(1, 2).reshape(B, H, W, C).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor, rel_pos_bias: Optional[torch.Tensor]) -> torch.Tensor:
        return self.proj(self.attention(x, rel_pos_bias, self.fused_attn))


class FusedIRFFN(InferenceOnly):
    """IRFFN (Eq. 5) with its inner shortcut, its last two BatchNorms and the LayerNorm affine before it
    folded: 1x1 conv -> GELU -> BatchNorm -> depthwise 3x3 -> GELU -> 1x1 conv."""

    def __init__(self, fc1: nn.Conv2d, act1: nn.Module, norm: nn.BatchNorm2d, dwconv: nn.Conv2d, act2: nn.Module,
                 fc2: nn.Conv2d):
        super().__init__()
        self.fc1 = fc1
        self.act1 = act1
        self.norm = norm
        self.dwconv = dwconv
        self.act2 = act2
        self.fc2 = fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act2(self.dwconv(self.norm(self.act1(self.fc1(x))))))


class FusedCMTBlock(InferenceOnly):
    """CMT block (Eq. 6) folded for inference; takes and returns an NCHW map, computed in channels_last (where
    the token sequence is a view of the map: no layout copies between the parts)."""

    def __init__(self, lpu: nn.Conv2d, attn: FusedAttention, mlp: FusedIRFFN, eps1: float, eps2: float):
        super().__init__()
        self.lpu = lpu
        self.attn = attn
        self.mlp = mlp
        self.dim = lpu.out_channels  # an int, not x.shape[1]: a traced shape would not do as a norm's shape
        self.eps1 = eps1
        self.eps2 = eps2

    def forward(self, x: torch.Tensor, rel_pos_bias: Optional[torch.Tensor]) -> torch.Tensor:
        x = self.lpu(x.contiguous(memory_format=torch.channels_last))
        x = x + self.attn(channel_norm(x, self.dim, self.eps1), rel_pos_bias)
        return x + self.mlp(channel_norm(x, self.dim, self.eps2))


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


def _fuse_attention(attn: nn.Module, ln: nn.LayerNorm) -> FusedAttention:
    scale = attn.scale
    if attn.sr_ratio > 1:
        q_weight, q_bias = _fold_ln_into_linear(ln, [attn.q])
        # LN affine into the unpadded stride-k depthwise conv, then its BatchNorm after it
        weight, taps = fold_affine_in(attn.sr, ln.weight, ln.bias)
        bias = attn.sr.bias + taps.sum((1, 2))
        s, t = bn_scale_shift(attn.sr_norm)
        sr = copy_conv(attn.sr, weight * s[:, None, None, None], bias * s + t)
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


def _fuse_ffn(mlp: nn.Module, ln: nn.LayerNorm) -> FusedIRFFN:
    fc1_weight = mlp.fc1.weight[:, :, 0, 0] * ln.weight[None, :]
    fc1_bias = mlp.fc1.bias + mlp.fc1.weight[:, :, 0, 0] @ ln.bias
    dw_weight = mlp.dwconv.weight.clone()
    dw_weight[:, 0, 1, 1] += 1.  # DWConv(y) + y: the centre tap reads y itself
    s2, t2 = bn_scale_shift(mlp.norm2)
    s3, t3 = bn_scale_shift(mlp.norm3)
    fc2 = mlp.fc2.weight[:, :, 0, 0]
    fc2_weight = s3[:, None] * fc2 * s2[None, :]
    fc2_bias = s3 * (mlp.fc2.bias + fc2 @ t2) + t3
    # the folded block shares no module with `mlp`, which folding leaves untouched
    return FusedIRFFN(
        _conv1x1(fc1_weight, fc1_bias), copy.deepcopy(mlp.act1), copy.deepcopy(mlp.norm1).eval(),
        copy_conv(mlp.dwconv, dw_weight, _bias(mlp.dwconv)), copy.deepcopy(mlp.act2), _conv1x1(fc2_weight, fc2_bias))


def fuse_block(block: nn.Module) -> FusedCMTBlock:
    """The folded inference copy of a `CMTBlock` (whose `fuse()` calls this); `block` is left untouched."""
    with torch.no_grad():
        lpu = block.lpu.conv
        weight = lpu.weight.clone()
        weight[:, 0, 1, 1] += 1.  # LPU(x) = DWConv(x) + x
        return FusedCMTBlock(
            copy_conv(lpu, weight, lpu.bias),
            _fuse_attention(block.attn, block.norm1),
            _fuse_ffn(block.mlp, block.norm2),
            block.norm1.eps,
            block.norm2.eps,
        )
