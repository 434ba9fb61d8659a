""" CMT: Convolutional Neural Networks Meet Vision Transformers

Paper: `CMT: Convolutional Neural Networks Meet Vision Transformers` - https://arxiv.org/abs/2107.06263
(Guo, Han, Wu, Tang, Chen, Wang, Xu; CVPR 2022)

A hybrid backbone: a convolutional stem, then four stages of CMT blocks at strides 4/8/16/32. Each block
is a local perception unit (depthwise 3x3 conv, Eq. 1), lightweight multi-head self-attention (keys and
values shrunk by a stride-k depthwise conv, plus a learned position bias, Eq. 2-4) and an inverted
residual feed-forward network (Eq. 5). The head is a 1x1 conv to 1280 channels, global pooling and a
linear classifier.

This module matches the authors' released code (and so their released checkpoints), which differs from
the paper in a few places noted in the class docstrings. Unlike the released code it runs at any input
size: the position bias is resized over its query and key grids at load time (`img_size=...`) or on
the fly (`dynamic_img_size=True`).

Released checkpoints load through timm:
    timm.create_model('cmt_s', pretrained=True, pretrained_cfg_overlay=dict(file='cmt_small.pth'))
"""
from typing import Any, Dict, List, Optional, Tuple, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    ClassifierHead, ConvMlp, ConvNormAct, DropPath, LayerNorm2d, calculate_drop_path_rates, get_device_dtype,
    register_notrace_function, to_2tuple, trunc_normal_, use_fused_attn,
)
from timm.models import (
    build_model_with_cfg, checkpoint, generate_default_cfgs, register_model, resolve_pretrained_cfg,
)
from timm.models._features import feature_take_indices

from .fuse import FusedAttention, fuse_block
from .grid_cache import GridCache
from .pos_bias import cached_resize_rel_pos_bias, resize_rel_pos_bias
from .released import checkpoint_filter_fn, not_a_checkpoint
from .variants import NET_STRIDE, VARIANT_ARGS, check_img_size

__all__ = [
    'CMT', 'CMTBlock', 'CMTStage', 'CMTStages', 'CheckedStem', 'ConvStem', 'LightweightAttention', 'PatchEmbedStem',
    'TokenBatchNorm', 'VARIANT_ARGS', 'set_model_fused_attn',
]

STEM_TYPES = ('conv', 'patch')
FFN_TYPES = ('irffn', 'mlp')
NORM_TYPES = ('layernorm', 'batchnorm')


def _check_choice(name: str, value: str, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f'{name} must be one of {", ".join(map(repr, choices))}, got {value!r}')


@register_notrace_function
def check_input(
        x: torch.Tensor,
        in_chans: int,
        img_size: Tuple[int, int],
        dynamic_img_size: bool,
        dynamic_img_pad: bool,
        multiple: int,
) -> torch.Tensor:
    """Validate an input batch, padding its sides up to `multiple` when `dynamic_img_pad` is set."""
    if x.dim() != 4:
        raise ValueError(f'CMT expects an image batch of shape (B, C, H, W), got {x.dim()} dims')
    if x.shape[1] != in_chans:
        raise ValueError(f'CMT expects {in_chans} input channels, got {x.shape[1]}')
    height, width = x.shape[2], x.shape[3]
    if dynamic_img_pad:
        pad_h = (multiple - height % multiple) % multiple
        pad_w = (multiple - width % multiple) % multiple
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, (0, pad_w, 0, pad_h))
            height, width = height + pad_h, width + pad_w
    elif height % multiple != 0 or width % multiple != 0 or height == 0 or width == 0:
        raise ValueError(
            f'CMT takes input sides that are positive multiples of {multiple}, got {height}x{width}; '
            f'resize the input or create the model with dynamic_img_pad=True')
    if not dynamic_img_size and (height != img_size[0] or width != img_size[1]):
        raise ValueError(
            f'input size {height}x{width} does not match the model img_size {img_size[0]}x{img_size[1]}; '
            f'create the model with img_size=({height}, {width}) or dynamic_img_size=True')
    return x


class CheckedStem(nn.Module):
    """A stem that checks (and with `dynamic_img_pad`, pads) the network's input, so that feature extractors
    built from the module list do too: what every CMT stem (and the ablations' patch embedding) shares."""

    def __init__(
            self,
            in_chans: int,
            img_size: Tuple[int, int],
            dynamic_img_size: bool = False,
            dynamic_img_pad: bool = False,
    ):
        super().__init__()
        self.in_chans = in_chans
        self.img_size = img_size
        self.dynamic_img_size = dynamic_img_size
        self.dynamic_img_pad = dynamic_img_pad
        self.multiple = NET_STRIDE

    def check(self, x: torch.Tensor) -> torch.Tensor:
        return check_input(
            x, self.in_chans, self.img_size, self.dynamic_img_size, self.dynamic_img_pad, self.multiple)


class ConvStem(CheckedStem):
    """Three 3x3 convs (the first with stride 2), each followed by GELU then BatchNorm.

    The activation comes BEFORE the norm, as in the released code.
    """

    def __init__(
            self,
            in_chans: int,
            out_chs: int,
            img_size: Tuple[int, int],
            dynamic_img_size: bool = False,
            dynamic_img_pad: bool = False,
            act_layer: Type[nn.Module] = nn.GELU,
            device=None,
            dtype=None,
    ):
        super().__init__(in_chans, img_size, dynamic_img_size, dynamic_img_pad)
        dd = {'device': device, 'dtype': dtype}
        self.conv1 = nn.Conv2d(in_chans, out_chs, 3, stride=2, padding=1, **dd)
        self.act1 = act_layer()
        self.norm1 = nn.BatchNorm2d(out_chs, **dd)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, **dd)
        self.act2 = act_layer()
        self.norm2 = nn.BatchNorm2d(out_chs, **dd)
        self.conv3 = nn.Conv2d(out_chs, out_chs, 3, padding=1, **dd)
        self.act3 = act_layer()
        self.norm3 = nn.BatchNorm2d(out_chs, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.check(x)
        x = self.norm1(self.act1(self.conv1(x)))
        x = self.norm2(self.act2(self.conv2(x)))
        x = self.norm3(self.act3(self.conv3(x)))
        return x


class PatchEmbedStem(CheckedStem):
    """ViT/PVT patch embedding: a 4x4 conv with stride 4 and a norm (LayerNorm, eps 1e-5, or BatchNorm), in
    place of the stem and the first patch aggregation (same stride, 4, and same output width): the stem of
    the ablation study's 4-stage Transformer (models/ablation.py)."""

    def __init__(
            self,
            in_chans: int,
            out_chs: int,
            img_size: Tuple[int, int],
            dynamic_img_size: bool = False,
            dynamic_img_pad: bool = False,
            norm_type: str = 'layernorm',
            device=None,
            dtype=None,
    ):
        super().__init__(in_chans, img_size, dynamic_img_size, dynamic_img_pad)
        dd = {'device': device, 'dtype': dtype}
        self.proj = nn.Conv2d(in_chans, out_chs, 4, stride=4, **dd)
        self.norm = _map_norm(norm_type, out_chs, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(self.check(x)))


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channels of a token sequence (B, N, C): the all-BatchNorm ablation's LayerNorm.

    Written out over `F.batch_norm` (same statistics and running averages as `nn.BatchNorm1d`) rather than
    through the parent's forward, so that TorchScript compiles it and FX traces it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        momentum = 0. if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # a cumulative average
                momentum = 1. / float(self.num_batches_tracked)
        batch_stats = self.training or self.running_mean is None
        x = F.batch_norm(
            x.transpose(1, 2), self.running_mean, self.running_var, self.weight, self.bias,
            batch_stats, momentum, self.eps)
        return x.transpose(1, 2)


def _token_norm(norm_type: str, dim: int, **dd) -> nn.Module:
    """The norm of a block's tokens (B, N, C): LayerNorm (eps 1e-6, as released) or BatchNorm."""
    return nn.LayerNorm(dim, eps=1e-6, **dd) if norm_type == 'layernorm' else TokenBatchNorm(dim, **dd)


def _map_norm(norm_type: str, dim: int, **dd) -> nn.Module:
    """The norm of a patchifying conv's map (B, C, H, W): LayerNorm over channels (eps 1e-5) or BatchNorm."""
    return LayerNorm2d(dim, eps=1e-5, **dd) if norm_type == 'layernorm' else nn.BatchNorm2d(dim, **dd)


class PatchAggregation(nn.Module):
    """2x2 stride-2 conv then a norm over channels (LayerNorm, eps 1e-5, as released; or BatchNorm): the
    downsampling between stages."""

    def __init__(self, in_chs: int, out_chs: int, norm_type: str = 'layernorm', device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.conv = nn.Conv2d(in_chs, out_chs, 2, stride=2, **dd)
        self.norm = _map_norm(norm_type, out_chs, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class LocalPerceptionUnit(nn.Module):
    """LPU (Eq. 1): LPU(X) = DWConv(X) + X, a 3x3 depthwise conv with bias, no norm or activation."""

    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + x


class LightweightAttention(nn.Module):
    """Lightweight multi-head self-attention, LMHSA (Eq. 2-4).

    Queries come from every token; keys and values from the tokens shrunk by a k x k depthwise conv with
    stride k followed by BatchNorm (k = `sr_ratio`; no reduction when k = 1). A learned bias B of shape
    (heads, queries, keys) is added to the attention logits: softmax(Q K^T / sqrt(d) + B) V.

    Differences from the paper, kept from the released code: keys and values are separate linear
    projections of the reduced map, and B is a free tensor per (query, key) pair, owned by the stage and
    shared by all of its blocks (passed in at forward); None for the ablation without position bias.
    """
    fused_attn: torch.jit.Final[bool]

    def __init__(
            self,
            dim: int,
            num_heads: int,
            sr_ratio: int,
            qkv_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if dim % num_heads != 0:
            raise ValueError(f'dim {dim} is not divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.sr_ratio = sr_ratio
        self.fused_attn = use_fused_attn()

        self.q = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.k = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.v = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio, groups=dim, **dd)
            self.sr_norm = nn.BatchNorm2d(dim, **dd)
        else:
            self.sr = nn.Identity()
            self.sr_norm = nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
            self, x: torch.Tensor, height: int, width: int, rel_pos_bias: Optional[torch.Tensor],
    ) -> torch.Tensor:
        B, N, C = x.shape
        q = self.q(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        kv = x
        if self.sr_ratio > 1:
            # row-major tokens are a channels_last map: views both ways, no copies
            kv = x.reshape(B, height, width, C).permute(0, 3, 1, 2)
            kv = self.sr_norm(self.sr(kv)).permute(0, 2, 3, 1).reshape(B, -1, C)
        k = self.k(kv).reshape(B, -1, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v(kv).reshape(B, -1, self.num_heads, self.head_dim).transpose(1, 2)

        if self.fused_attn:
            x = F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=None if rel_pos_bias is None else rel_pos_bias.to(q.dtype),
                dropout_p=self.attn_drop.p if self.training else 0.,
            )
        else:
            attn = (q @ k.transpose(-2, -1)) * self.scale
            if rel_pos_bias is not None:
                attn = attn + rel_pos_bias
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ v

        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


def set_model_fused_attn(model: nn.Module, enable: bool) -> None:
    """Switch every LightweightAttention in `model` (and every attention of a fused model) to
    `scaled_dot_product_attention` (`enable`) or to the explicit matmul-softmax-matmul path (e.g. to compare
    them, or for counters and exporters that need plain ops)."""
    for m in model.modules():
        if isinstance(m, (LightweightAttention, FusedAttention)):
            m.fused_attn = enable


class InvertedResidualFFN(nn.Module):
    """IRFFN (Eq. 5): 1x1 expansion, a depthwise 3x3 conv with a shortcut around it, 1x1 projection.

    Released-code order: conv1x1 -> GELU -> BN -> (DWConv + identity) -> GELU -> BN -> conv1x1 -> BN.
    """

    def __init__(
            self,
            dim: int,
            hidden_dim: int,
            act_layer: Type[nn.Module] = nn.GELU,
            drop: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1, **dd)
        self.act1 = act_layer()
        self.norm1 = nn.BatchNorm2d(hidden_dim, **dd)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim, **dd)
        self.act2 = act_layer()
        self.norm2 = nn.BatchNorm2d(hidden_dim, **dd)
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1, **dd)
        self.norm3 = nn.BatchNorm2d(dim, **dd)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.norm1(self.act1(self.fc1(x))))
        x = self.dwconv(x) + x
        x = self.norm2(self.act2(x))
        x = self.norm3(self.fc2(x))
        return self.drop(x)


@register_notrace_function  # FX: a leaf, since it branches on the memory format
def tokens_to_map(x: torch.Tensor, height: int, width: int, channels_last: bool) -> torch.Tensor:
    """Tokens (B, N, C) as a (B, C, H, W) map: a view in channels_last memory, else a contiguous copy."""
    x = x.reshape(x.shape[0], height, width, x.shape[2]).permute(0, 3, 1, 2)
    return x if channels_last else x.contiguous()


class CMTBlock(nn.Module):
    """CMT block (Eq. 6): X = LPU(X); X = X + LMHSA(LN(X)); X = X + IRFFN(LN(X)).

    Takes and returns an NCHW map, in the input's memory format (in channels_last the tokens are views of
    the map). Drop path applies to the attention and FFN branches, not the LPU. What the block is made of
    is chosen here, for the paper's ablation steps: `use_lpu=False` drops the LPU, `ffn_type='mlp'` is a
    plain FFN (timm's ConvMlp: 1x1 conv, GELU, 1x1 conv) instead of the IRFFN, `norm_type='batchnorm'`
    puts BatchNorms where the LayerNorms are.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            sr_ratio: int,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            act_layer: Type[nn.Module] = nn.GELU,
            use_lpu: bool = True,
            ffn_type: str = 'irffn',
            norm_type: str = 'layernorm',
            device=None,
            dtype=None,
    ):
        super().__init__()
        _check_choice('ffn_type', ffn_type, FFN_TYPES)
        _check_choice('norm_type', norm_type, NORM_TYPES)
        dd = {'device': device, 'dtype': dtype}
        hidden = int(dim * mlp_ratio)
        self.lpu = LocalPerceptionUnit(dim, **dd) if use_lpu else nn.Identity()
        self.norm1 = _token_norm(norm_type, dim, **dd)
        self.attn = LightweightAttention(
            dim, num_heads, sr_ratio, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = _token_norm(norm_type, dim, **dd)
        if ffn_type == 'irffn':
            self.mlp = InvertedResidualFFN(dim, hidden, act_layer=act_layer, drop=proj_drop, **dd)
        else:
            self.mlp = ConvMlp(dim, hidden, act_layer=act_layer, drop=proj_drop, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor, rel_pos_bias: Optional[torch.Tensor]) -> torch.Tensor:
        B, C, H, W = x.shape
        channels_last = x.is_contiguous(memory_format=torch.channels_last)
        x = self.lpu(x)
        x = x.permute(0, 2, 3, 1).reshape(B, H * W, C)  # (B, N, C) tokens: a view of a channels_last map
        x = x + self.drop_path1(self.attn(self.norm1(x), H, W, rel_pos_bias))
        ffn_in = tokens_to_map(self.norm2(x), H, W, channels_last)
        return tokens_to_map(x, H, W, channels_last) + self.drop_path2(self.mlp(ffn_in))

    def foldable(self) -> bool:
        """Whether `fuse()` folds this block: exactly the parts the folds are written for (an LPU, LayerNorms,
        the lightweight attention and the IRFFN with its BatchNorms)."""
        mlp = self.mlp
        return (type(self.lpu) is LocalPerceptionUnit and type(self.attn) is LightweightAttention
                and type(self.norm1) is nn.LayerNorm and type(self.norm2) is nn.LayerNorm
                and type(mlp) is InvertedResidualFFN
                and all(type(n) is nn.BatchNorm2d for n in (mlp.norm1, mlp.norm2, mlp.norm3))
                and (self.attn.sr_ratio == 1 or type(self.attn.sr_norm) is nn.BatchNorm2d))

    def fuse(self) -> nn.Module:
        """A new block with its norms' affines, BatchNorms and shortcuts folded, for inference (models/fuse.py),
        made of standard layers; this block is left untouched. A block made of other parts (an ablation
        step's) is returned as it is, which stays exact."""
        return fuse_block(self) if self.foldable() else self


class CMTStage(nn.Module):
    """Patch aggregation, then `depth` CMT blocks sharing one position bias of shape (heads, N, N / k^2).

    `downsample=False` leaves out the patch aggregation (after a patch-embedding stem, which has done it);
    `use_pos_bias=False` leaves out the bias B (Eq. 4): the stage then has no such parameter at all.
    """

    def __init__(
            self,
            in_chs: int,
            dim: int,
            depth: int,
            num_heads: int,
            sr_ratio: int,
            grid_size: Tuple[int, int],
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: Union[float, List[float]] = 0.,
            dynamic_img_size: bool = False,
            act_layer: Type[nn.Module] = nn.GELU,
            downsample: bool = True,
            use_lpu: bool = True,
            ffn_type: str = 'irffn',
            norm_type: str = 'layernorm',
            use_pos_bias: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if not downsample and in_chs != dim:
            raise ValueError(f'a stage without patch aggregation keeps its width: in_chs {in_chs} != dim {dim}')
        self.sr_ratio = sr_ratio
        self.grid_size = grid_size
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False

        self.downsample = PatchAggregation(in_chs, dim, norm_type=norm_type, **dd) if downsample else nn.Identity()
        if use_pos_bias:
            num_keys = (grid_size[0] // sr_ratio) * (grid_size[1] // sr_ratio)
            self.rel_pos_bias = nn.Parameter(torch.empty(num_heads, grid_size[0] * grid_size[1], num_keys, **dd))
        else:
            self.register_parameter('rel_pos_bias', None)
        self.bias_cache = GridCache()  # the bias resized to recent grids, for eager inference
        drop_paths = list(drop_path) if isinstance(drop_path, (list, tuple)) else [drop_path] * depth
        self.blocks = nn.ModuleList([
            CMTBlock(
                dim, num_heads, sr_ratio,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                proj_drop=proj_drop,
                attn_drop=attn_drop,
                drop_path=drop_paths[i],
                act_layer=act_layer,
                use_lpu=use_lpu,
                ffn_type=ffn_type,
                norm_type=norm_type,
                **dd,
            )
            for i in range(depth)])

    def set_grid_size(self, grid_size: Tuple[int, int]) -> None:
        """Resize the position bias to a new token grid, in place (keeps requires_grad)."""
        if self.rel_pos_bias is not None:
            with torch.no_grad():
                bias = resize_rel_pos_bias(self.rel_pos_bias, self.grid_size, grid_size, self.sr_ratio)
            self.rel_pos_bias = nn.Parameter(bias, requires_grad=self.rel_pos_bias.requires_grad)
        self.grid_size = grid_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        rel_pos_bias = self.rel_pos_bias
        if rel_pos_bias is not None and self.dynamic_img_size:
            grid = (x.shape[2], x.shape[3])
            if torch.jit.is_scripting():
                rel_pos_bias = resize_rel_pos_bias(rel_pos_bias, self.grid_size, grid, self.sr_ratio)
            else:
                rel_pos_bias = cached_resize_rel_pos_bias(
                    self.bias_cache, rel_pos_bias, self.grid_size, grid, self.sr_ratio)
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, rel_pos_bias)
            else:
                x = blk(x, rel_pos_bias)
        return x


class CMTStages(nn.Sequential):
    """The stages in order (the CPU fast path, models/fast_path.py, runs the first a few images at a time)."""


class CMT(nn.Module):
    """CMT: stem -> 4 x (patch aggregation + CMT blocks) -> 1x1 conv (1280) + BN + Swish -> pool -> FC.

    The model is built for one input size (`img_size`), which fixes the grid of each stage's position
    bias. `dynamic_img_size=True` resizes the bias on the fly for any input whose sides are multiples of
    32; `dynamic_img_pad=True` pads other inputs up to such a size. The parts it is made of are arguments
    (`stem_type`, `use_lpu`, `ffn_type`, `norm_type`, `use_pos_bias`): each ablation step of the paper
    (models/ablation.py) is a CMT built with other parts, never one patched after construction.

    Args:
        img_size: Input size the position biases are built for (int or (H, W), multiples of 32).
        in_chans: Number of input image channels.
        num_classes: Number of classes of the classifier, 0 for none.
        global_pool: Global pooling type of the head ('avg', 'max', '' for none, ...).
        stem_chs: Channels of the convolutional stem.
        embed_dims: Channels of each stage.
        depths: Number of CMT blocks in each stage.
        num_heads: Attention heads in each stage.
        sr_ratios: Key/value reduction ratio k of each stage.
        mlp_ratio: IRFFN expansion ratio.
        qkv_bias: Bias in the query, key and value projections.
        head_hidden_size: Channels of the 1x1 conv before pooling.
        drop_rate: Dropout before the classifier.
        proj_drop_rate: Dropout after the attention projection and the FFN.
        attn_drop_rate: Dropout of the attention weights.
        drop_path_rate: Stochastic depth rate, linear over all blocks.
        dynamic_img_size: Accept any input size (multiples of 32), resizing the position biases.
        dynamic_img_pad: Pad inputs up to a multiple of 32.
        act_layer: Activation of the stem and FFNs.
        stem_type: 'conv', the CMT stem (three 3x3 convs), or 'patch', a 4x4 stride-4 patch embedding in
            place of the stem and the first patch aggregation.
        use_lpu: The local perception unit (Eq. 1) in every block.
        ffn_type: 'irffn', the inverted residual FFN (Eq. 5), or 'mlp', a plain FFN (1x1 conv, GELU,
            1x1 conv).
        norm_type: 'layernorm' or 'batchnorm', the norm of the blocks and of the patch aggregations.
        use_pos_bias: The learned position bias B of the attention (Eq. 4).
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            stem_chs: int = 32,
            embed_dims: Tuple[int, ...] = (64, 128, 256, 512),
            depths: Tuple[int, ...] = (3, 3, 16, 3),
            num_heads: Tuple[int, ...] = (1, 2, 4, 8),
            sr_ratios: Tuple[int, ...] = (8, 4, 2, 1),
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            head_hidden_size: int = 1280,
            drop_rate: float = 0.1,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            dynamic_img_size: bool = False,
            dynamic_img_pad: bool = False,
            act_layer: Type[nn.Module] = nn.GELU,
            stem_type: str = 'conv',
            use_lpu: bool = True,
            ffn_type: str = 'irffn',
            norm_type: str = 'layernorm',
            use_pos_bias: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        _check_choice('stem_type', stem_type, STEM_TYPES)
        dd = {'device': device, 'dtype': dtype}
        num_stages = len(depths)
        for name, seq in (('embed_dims', embed_dims), ('num_heads', num_heads), ('sr_ratios', sr_ratios)):
            if len(seq) != num_stages:
                raise ValueError(f'{name} has {len(seq)} entries, expected one per stage ({num_stages})')
        self.img_size: Tuple[int, int] = check_img_size(img_size)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.dynamic_img_size = dynamic_img_size

        checks = dict(dynamic_img_size=dynamic_img_size, dynamic_img_pad=dynamic_img_pad)
        if stem_type == 'conv':
            self.stem = ConvStem(in_chans, stem_chs, self.img_size, act_layer=act_layer, **checks, **dd)
        else:
            stem_chs = embed_dims[0]
            self.stem = PatchEmbedStem(in_chans, stem_chs, self.img_size, norm_type=norm_type, **checks, **dd)
        # per block, linear over all blocks (as released), split into one list per stage
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        stages = []
        self.feature_info = []
        in_chs = stem_chs
        for i in range(num_stages):
            stride = 4 * 2 ** i
            stages.append(CMTStage(
                in_chs, embed_dims[i], depths[i], num_heads[i], sr_ratios[i],
                grid_size=(self.img_size[0] // stride, self.img_size[1] // stride),
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[i],
                dynamic_img_size=dynamic_img_size,
                act_layer=act_layer,
                downsample=i > 0 or stem_type == 'conv',
                use_lpu=use_lpu,
                ffn_type=ffn_type,
                norm_type=norm_type,
                use_pos_bias=use_pos_bias,
                **dd,
            ))
            in_chs = embed_dims[i]
            self.feature_info.append(dict(num_chs=in_chs, reduction=stride, module=f'stages.{i}'))
        self.stages = CMTStages(*stages)

        self.num_features = self.head_hidden_size = head_hidden_size
        self.final_conv = ConvNormAct(in_chs, head_hidden_size, 1, bias=True, act_layer=nn.SiLU, **dd)
        self.head = ClassifierHead(head_hidden_size, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)

        self.init_weights()

    def init_weights(self) -> None:
        """The released init: trunc-normal linears, kaiming (fan-out) convs, standard-normal position bias."""
        for stage in self.stages:
            if stage.rel_pos_bias is not None:
                nn.init.normal_(stage.rel_pos_bias)
        self.apply(_init_weights)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {name for name, _ in self.named_parameters() if name.endswith('rel_pos_bias')}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.(?:downsample|rel_pos_bias)', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^final_conv', (99999,)),
            ]
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        dd = get_device_dtype(self)
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool, in_features=self.num_features, **dd)
        self.head_hidden_size = self.head.num_features
        if global_pool is not None:
            self.global_pool = global_pool

    @torch.jit.ignore
    def set_input_size(self, img_size: Optional[Union[int, Tuple[int, int]]] = None) -> None:
        """Rebuild for another input size: the position biases are resized to the new token grids."""
        if img_size is None:
            return
        self.img_size = check_img_size(img_size)
        self.stem.img_size = self.img_size
        for i, stage in enumerate(self.stages):
            stride = 4 * 2 ** i
            stage.set_grid_size((self.img_size[0] // stride, self.img_size[1] // stride))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features that returns intermediates (the output of each stage).

        Args:
            x: Input image tensor.
            indices: Take last n stages if int, all if None, select matching indices if sequence.
            norm: Unused, the stage outputs have no separate norm.
            stop_early: Stop iterating over stages when the last desired intermediate is hit.
            output_fmt: Shape of intermediate feature outputs, only 'NCHW'.
            intermediates_only: Only return intermediate features.
        """
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last_idx = len(self.stages) - 1

        x = self.stem(x)
        if torch.jit.is_scripting() or not stop_early:
            stages = self.stages
        else:
            stages = self.stages[:max_index + 1]
        feat_idx = 0
        for feat_idx, stage in enumerate(stages):
            x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(x)

        if intermediates_only:
            return intermediates
        if feat_idx == last_idx:
            x = self.final_conv(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Prune the layers not required for the given intermediates; returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        # the 1x1 head conv follows the last stage and never feeds an intermediate: it goes with the
        # norm or the head, as EfficientNet's conv_head does
        prune_end = prune_norm or prune_head or max_index < len(self.stages) - 1
        if prune_end:
            self.final_conv = nn.Identity()
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        self.stages = self.stages[:max_index + 1]
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.stages(x)
        return self.final_conv(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.forward_head(x)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode='fan_out')
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _create_cmt(variant: str, pretrained: bool = False, **kwargs) -> CMT:
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
    try:
        model = build_model_with_cfg(
            CMT,
            variant,
            pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
            **kwargs,
        )
    except Exception as e:
        # the readers' own errors on a file that is no checkpoint at all mislead ("non-allowlisted pickle
        # globals", "header too large", a bare EOFError): say what the file is not
        path = resolve_pretrained_cfg(
            variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay')).file if pretrained else None
        problem = not_a_checkpoint(path) if path else None
        if problem:
            raise ValueError(f'cannot load {path}: {problem}') from e
        raise
    # the model's cfg describes the model as built (after loading, which reads the checkpoint's cfg), so
    # that timm.data.resolve_data_config(model=model) gives the size a fixed-size model accepts
    img_size = to_2tuple(kwargs.get('img_size', 224))
    model.pretrained_cfg['input_size'] = (kwargs.get('in_chans', 3), *img_size)
    model.pretrained_cfg['pool_size'] = (img_size[0] // NET_STRIDE, img_size[1] // NET_STRIDE)
    return model


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': url,
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': (7, 7),
        'crop_pct': 0.875,
        'interpolation': 'bicubic',
        'fixed_input_size': True,
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.conv1',
        'classifier': 'head.fc',
        'license': 'apache-2.0',
        'paper_ids': 'arXiv:2107.06263',
        'paper_name': 'CMT: Convolutional Neural Networks Meet Vision Transformers',
        'origin_url': 'https://github.com/huawei-noah/Efficient-AI-Backbones/tree/master/cmt_pytorch',
        **kwargs,
    }


_RELEASE_URL = 'https://github.com/ggjy/CMT.pytorch/releases/download/release-v1/'

default_cfgs = generate_default_cfgs({
    'cmt_ti.in1k': _cfg(url=_RELEASE_URL + 'cmt_tiny.pth', input_size=(3, 160, 160), pool_size=(5, 5)),
    'cmt_xs.in1k': _cfg(url=_RELEASE_URL + 'cmt_xs.pth', input_size=(3, 192, 192), pool_size=(6, 6)),
    'cmt_s.in1k': _cfg(url=_RELEASE_URL + 'cmt_small.pth', input_size=(3, 224, 224), pool_size=(7, 7)),
    'cmt_b.in1k': _cfg(url=_RELEASE_URL + 'cmt_base.pth', input_size=(3, 256, 256), pool_size=(8, 8)),
})

@register_model
def cmt_ti(pretrained: bool = False, **kwargs) -> CMT:
    """CMT-Ti; its published figures (params, FLOPs, top-1) are `cmtnet.models.variants.PUBLISHED['cmt_ti']`."""
    return _create_cmt('cmt_ti', pretrained=pretrained, **dict(VARIANT_ARGS['cmt_ti'], **kwargs))


@register_model
def cmt_xs(pretrained: bool = False, **kwargs) -> CMT:
    """CMT-XS; its published figures (params, FLOPs, top-1) are `cmtnet.models.variants.PUBLISHED['cmt_xs']`."""
    return _create_cmt('cmt_xs', pretrained=pretrained, **dict(VARIANT_ARGS['cmt_xs'], **kwargs))


@register_model
def cmt_s(pretrained: bool = False, **kwargs) -> CMT:
    """CMT-S; its published figures (params, FLOPs, top-1) are `cmtnet.models.variants.PUBLISHED['cmt_s']`."""
    return _create_cmt('cmt_s', pretrained=pretrained, **dict(VARIANT_ARGS['cmt_s'], **kwargs))


@register_model
def cmt_b(pretrained: bool = False, **kwargs) -> CMT:
    """CMT-B; its published figures (params, FLOPs, top-1) are `cmtnet.models.variants.PUBLISHED['cmt_b']`."""
    return _create_cmt('cmt_b', pretrained=pretrained, **dict(VARIANT_ARGS['cmt_b'], **kwargs))
