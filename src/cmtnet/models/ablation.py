"""The CMT paper's ablation steps as named models, so that each can be built, counted and trained.

The paper walks from a 4-stage DeiT-S-like Transformer to CMT-S one component at a time, each step adding
accuracy, and reports that replacing every LayerNorm by BatchNorm makes training diverge:

    step        model                   what changes
    4stage      cmt_s_abl_4stage        patch embedding (4x4 conv, stride 4) and a plain FFN; no LPU
    stem        cmt_s_abl_stem          + the CMT stem (three 3x3 convs) and 2x2 patch aggregation
    lpu         cmt_s_abl_lpu           + the local perception unit in every block
    irffn       cmt_s_abl_irffn         + the inverted residual FFN: CMT-S itself
    all_bn      cmt_s_abl_all_bn        CMT-S with every LayerNorm (blocks, patch aggregation) a BatchNorm
    no_pos_bias cmt_s_abl_no_pos_bias   CMT-S without the attention's position bias

Every step keeps CMT-S's widths, depths, heads, lightweight attention (with its position bias, except in
the last one) and head, so that a step differs from the one before in what it names and nothing else.
The same steps on CMT-Ti (`cmt_ti_abl_*`) are small enough to compare on a CPU.

The models are `CMT`s whose layers are swapped after construction (`CMTAblation`): the network, its
feature extraction and its input-size handling stay those of models/cmt.py.
"""
from typing import Any, Dict, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import ConvMlp, LayerNorm2d, to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .cmt import CMT, CMTStage, CheckedStem, PatchAggregation, _cfg
from .variants import NET_STRIDE, VARIANT_ARGS

__all__ = ['ABLATION_STEPS', 'CMTAblation', 'PatchEmbedStem', 'TokenBatchNorm', 'ablation_model_name']

# step -> the CMTAblation switches that make it; in the paper's order, then the two swaps on CMT-S
ABLATION_STEPS: Dict[str, Dict[str, Any]] = {
    '4stage': dict(patch_embed=True, lpu=False, irffn=False),
    'stem': dict(lpu=False, irffn=False),
    'lpu': dict(irffn=False),
    'irffn': dict(),
    'all_bn': dict(batch_norm=True),
    'no_pos_bias': dict(pos_bias=False),
}


def ablation_model_name(base: str, step: str) -> str:
    """The timm name of an ablation step on a base variant, e.g. ('cmt_s', 'lpu') -> 'cmt_s_abl_lpu'."""
    return f'{base}_abl_{step}'


class PatchEmbedStem(CheckedStem):
    """ViT/PVT patch embedding: a 4x4 conv with stride 4 and a LayerNorm, in place of the stem and the
    first patch aggregation (same stride, 4, and same output width)."""

    def __init__(
            self,
            in_chans: int,
            out_chs: int,
            img_size: Tuple[int, int],
            dynamic_img_size: bool = False,
            dynamic_img_pad: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__(in_chans, img_size, dynamic_img_size, dynamic_img_pad)
        dd = {'device': device, 'dtype': dtype}
        self.proj = nn.Conv2d(in_chans, out_chs, 4, stride=4, **dd)
        self.norm = LayerNorm2d(out_chs, eps=1e-5, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(self.check(x)))


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channels of a token sequence (B, N, C): the all-BatchNorm ablation's LayerNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def _drop_pos_bias(stage: CMTStage) -> None:
    """Replace a stage's learned position bias B by zeros that are not learned (a buffer of B's shape, so
    that the attention and the bias resizing run unchanged)."""
    like = stage.rel_pos_bias
    del stage.rel_pos_bias
    stage.register_buffer('rel_pos_bias', torch.zeros_like(like, requires_grad=False), persistent=False)


class CMTAblation(CMT):
    """A CMT with components taken out or swapped, for the paper's ablation study.

    Args (besides those of `CMT`):
        patch_embed: A 4x4 stride-4 patch embedding instead of the conv stem and first patch aggregation.
        lpu: Keep the local perception unit (Eq. 1) of every block.
        irffn: Keep the inverted residual FFN (Eq. 5); else a plain FFN (1x1 conv, GELU, 1x1 conv).
        batch_norm: Every LayerNorm (before attention and FFN, in patch aggregation) a BatchNorm.
        pos_bias: Keep the learned position bias B of the attention (Eq. 4).
    """

    def __init__(
            self,
            patch_embed: bool = False,
            lpu: bool = True,
            irffn: bool = True,
            batch_norm: bool = False,
            pos_bias: bool = True,
            **kwargs,
    ):
        super().__init__(**kwargs)
        dd = {'device': kwargs.get('device'), 'dtype': kwargs.get('dtype')}
        mlp_ratio, drop = kwargs.get('mlp_ratio', 4.), kwargs.get('proj_drop_rate', 0.)
        if patch_embed:
            self.stem = PatchEmbedStem(
                self.in_chans, self.stages[0].downsample.conv.out_channels, self.img_size,
                dynamic_img_size=self.stem.dynamic_img_size, dynamic_img_pad=self.stem.dynamic_img_pad, **dd)
            self.stages[0].downsample = nn.Identity()
        if batch_norm:
            for patchify in [m for m in self.modules() if isinstance(m, (PatchEmbedStem, PatchAggregation))]:
                patchify.norm = nn.BatchNorm2d(patchify.norm.normalized_shape[0], **dd)
        for stage in self.stages:
            if not pos_bias:
                _drop_pos_bias(stage)
            for block in stage.blocks:
                dim = block.norm1.normalized_shape[0]
                if not lpu:
                    block.lpu = nn.Identity()
                if not irffn:
                    block.mlp = ConvMlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop, **dd)
                if batch_norm:
                    block.norm1, block.norm2 = TokenBatchNorm(dim, **dd), TokenBatchNorm(dim, **dd)
        self.init_weights()

    def init_weights(self) -> None:
        """CMT's init for every layer, the swapped ones included; position biases that are off stay zero."""
        super().init_weights()
        for stage in self.stages:
            if not isinstance(stage.rel_pos_bias, nn.Parameter):
                stage.rel_pos_bias.zero_()

    @torch.jit.ignore
    def set_input_size(self, img_size: Union[int, Tuple[int, int], None] = None) -> None:
        pos_bias_off = [not isinstance(s.rel_pos_bias, nn.Parameter) for s in self.stages]
        super().set_input_size(img_size)
        for stage, off in zip(self.stages, pos_bias_off):
            if off:
                _drop_pos_bias(stage)


def _create_ablation(base: str, step: str, pretrained: bool = False, **kwargs) -> CMTAblation:
    name = ablation_model_name(base, step)
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
    model = build_model_with_cfg(
        CMTAblation,
        name,
        pretrained,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **{**VARIANT_ARGS[base], **ABLATION_STEPS[step], **kwargs},
    )
    # as for every CMT: the cfg records the size the model was built for
    img_size = to_2tuple(kwargs.get('img_size', VARIANT_ARGS[base]['img_size']))
    model.pretrained_cfg['input_size'] = (kwargs.get('in_chans', 3), *img_size)
    model.pretrained_cfg['pool_size'] = (img_size[0] // NET_STRIDE, img_size[1] // NET_STRIDE)
    return model


default_cfgs = generate_default_cfgs({
    ablation_model_name(base, step): _cfg(
        url='', input_size=(3, VARIANT_ARGS[base]['img_size'], VARIANT_ARGS[base]['img_size']),
        first_conv='stem.proj' if ABLATION_STEPS[step].get('patch_embed') else 'stem.conv1')
    for base in ('cmt_s', 'cmt_ti') for step in ABLATION_STEPS
})


@register_model
def cmt_s_abl_4stage(pretrained: bool = False, **kwargs) -> CMTAblation:
    """Ablation step 0: a 4-stage DeiT-S-like Transformer of CMT-S's shape, patch embedding, plain FFN."""
    return _create_ablation('cmt_s', '4stage', pretrained, **kwargs)


@register_model
def cmt_s_abl_stem(pretrained: bool = False, **kwargs) -> CMTAblation:
    """Ablation step 1: the 4-stage Transformer with the CMT stem."""
    return _create_ablation('cmt_s', 'stem', pretrained, **kwargs)


@register_model
def cmt_s_abl_lpu(pretrained: bool = False, **kwargs) -> CMTAblation:
    """Ablation step 2: with the CMT stem and the LPU (a plain FFN still)."""
    return _create_ablation('cmt_s', 'lpu', pretrained, **kwargs)


@register_model
def cmt_s_abl_irffn(pretrained: bool = False, **kwargs) -> CMTAblation:
    """Ablation step 3: with the CMT stem, the LPU and the IRFFN: CMT-S."""
    return _create_ablation('cmt_s', 'irffn', pretrained, **kwargs)


@register_model
def cmt_s_abl_all_bn(pretrained: bool = False, **kwargs) -> CMTAblation:
    """CMT-S with every LayerNorm replaced by BatchNorm (the paper: training diverges)."""
    return _create_ablation('cmt_s', 'all_bn', pretrained, **kwargs)


@register_model
def cmt_s_abl_no_pos_bias(pretrained: bool = False, **kwargs) -> CMTAblation:
    """CMT-S without the attention's learned position bias."""
    return _create_ablation('cmt_s', 'no_pos_bias', pretrained, **kwargs)


@register_model
def cmt_ti_abl_4stage(pretrained: bool = False, **kwargs) -> CMTAblation:
    """Ablation step 0 on CMT-Ti: 4-stage Transformer, patch embedding, plain FFN."""
    return _create_ablation('cmt_ti', '4stage', pretrained, **kwargs)


@register_model
def cmt_ti_abl_stem(pretrained: bool = False, **kwargs) -> CMTAblation:
    """Ablation step 1 on CMT-Ti: with the CMT stem."""
    return _create_ablation('cmt_ti', 'stem', pretrained, **kwargs)


@register_model
def cmt_ti_abl_lpu(pretrained: bool = False, **kwargs) -> CMTAblation:
    """Ablation step 2 on CMT-Ti: with the CMT stem and the LPU."""
    return _create_ablation('cmt_ti', 'lpu', pretrained, **kwargs)


@register_model
def cmt_ti_abl_irffn(pretrained: bool = False, **kwargs) -> CMTAblation:
    """Ablation step 3 on CMT-Ti: with the CMT stem, the LPU and the IRFFN: CMT-Ti."""
    return _create_ablation('cmt_ti', 'irffn', pretrained, **kwargs)


@register_model
def cmt_ti_abl_all_bn(pretrained: bool = False, **kwargs) -> CMTAblation:
    """CMT-Ti with every LayerNorm replaced by BatchNorm."""
    return _create_ablation('cmt_ti', 'all_bn', pretrained, **kwargs)


@register_model
def cmt_ti_abl_no_pos_bias(pretrained: bool = False, **kwargs) -> CMTAblation:
    """CMT-Ti without the attention's learned position bias."""
    return _create_ablation('cmt_ti', 'no_pos_bias', pretrained, **kwargs)
