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

Each step is a row of `CMT` constructor arguments (`ABLATION_STEPS`), built through the same `_create_cmt`
as every CMT: the network, its feature extraction, input-size handling and folding are those of models/cmt.py.
"""
from typing import Any, Dict

from timm.models import generate_default_cfgs, register_model

from .cmt import CMT, _cfg, _create_cmt
from .variants import VARIANT_ARGS

__all__ = ['ABLATION_STEPS', 'ablation_model_name']

# step -> the CMT arguments that make it, on top of the base variant's; in the paper's order, then the two
# swaps on CMT-S
ABLATION_STEPS: Dict[str, Dict[str, Any]] = {
    '4stage': dict(stem_type='patch', use_lpu=False, ffn_type='mlp'),
    'stem': dict(use_lpu=False, ffn_type='mlp'),
    'lpu': dict(ffn_type='mlp'),
    'irffn': dict(),
    'all_bn': dict(norm_type='batchnorm'),
    'no_pos_bias': dict(use_pos_bias=False),
}


def ablation_model_name(base: str, step: str) -> str:
    """The timm name of an ablation step on a base variant, e.g. ('cmt_s', 'lpu') -> 'cmt_s_abl_lpu'."""
    return f'{base}_abl_{step}'


def _create_ablation(base: str, step: str, pretrained: bool = False, **kwargs) -> CMT:
    args = {**VARIANT_ARGS[base], **ABLATION_STEPS[step], **kwargs}
    return _create_cmt(ablation_model_name(base, step), pretrained=pretrained, **args)


default_cfgs = generate_default_cfgs({
    ablation_model_name(base, step): _cfg(
        url='', input_size=(3, VARIANT_ARGS[base]['img_size'], VARIANT_ARGS[base]['img_size']),
        first_conv='stem.proj' if ABLATION_STEPS[step].get('stem_type') == 'patch' else 'stem.conv1')
    for base in ('cmt_s', 'cmt_ti') for step in ABLATION_STEPS
})


@register_model
def cmt_s_abl_4stage(pretrained: bool = False, **kwargs) -> CMT:
    """Ablation step 0: a 4-stage DeiT-S-like Transformer of CMT-S's shape, patch embedding, plain FFN."""
    return _create_ablation('cmt_s', '4stage', pretrained, **kwargs)


@register_model
def cmt_s_abl_stem(pretrained: bool = False, **kwargs) -> CMT:
    """Ablation step 1: the 4-stage Transformer with the CMT stem."""
    return _create_ablation('cmt_s', 'stem', pretrained, **kwargs)


@register_model
def cmt_s_abl_lpu(pretrained: bool = False, **kwargs) -> CMT:
    """Ablation step 2: with the CMT stem and the LPU (a plain FFN still)."""
    return _create_ablation('cmt_s', 'lpu', pretrained, **kwargs)


@register_model
def cmt_s_abl_irffn(pretrained: bool = False, **kwargs) -> CMT:
    """Ablation step 3: with the CMT stem, the LPU and the IRFFN: CMT-S."""
    return _create_ablation('cmt_s', 'irffn', pretrained, **kwargs)


@register_model
def cmt_s_abl_all_bn(pretrained: bool = False, **kwargs) -> CMT:
    """CMT-S with every LayerNorm replaced by BatchNorm (the paper: training diverges)."""
    return _create_ablation('cmt_s', 'all_bn', pretrained, **kwargs)


@register_model
def cmt_s_abl_no_pos_bias(pretrained: bool = False, **kwargs) -> CMT:
    """CMT-S without the attention's learned position bias."""
    return _create_ablation('cmt_s', 'no_pos_bias', pretrained, **kwargs)


@register_model
def cmt_ti_abl_4stage(pretrained: bool = False, **kwargs) -> CMT:
    """Ablation step 0 on CMT-Ti: 4-stage Transformer, patch embedding, plain FFN."""
    return _create_ablation('cmt_ti', '4stage', pretrained, **kwargs)


@register_model
def cmt_ti_abl_stem(pretrained: bool = False, **kwargs) -> CMT:
    """Ablation step 1 on CMT-Ti: with the CMT stem."""
    return _create_ablation('cmt_ti', 'stem', pretrained, **kwargs)


@register_model
def cmt_ti_abl_lpu(pretrained: bool = False, **kwargs) -> CMT:
    """Ablation step 2 on CMT-Ti: with the CMT stem and the LPU."""
    return _create_ablation('cmt_ti', 'lpu', pretrained, **kwargs)


@register_model
def cmt_ti_abl_irffn(pretrained: bool = False, **kwargs) -> CMT:
    """Ablation step 3 on CMT-Ti: with the CMT stem, the LPU and the IRFFN: CMT-Ti."""
    return _create_ablation('cmt_ti', 'irffn', pretrained, **kwargs)


@register_model
def cmt_ti_abl_all_bn(pretrained: bool = False, **kwargs) -> CMT:
    """CMT-Ti with every LayerNorm replaced by BatchNorm."""
    return _create_ablation('cmt_ti', 'all_bn', pretrained, **kwargs)


@register_model
def cmt_ti_abl_no_pos_bias(pretrained: bool = False, **kwargs) -> CMT:
    """CMT-Ti without the attention's learned position bias."""
    return _create_ablation('cmt_ti', 'no_pos_bias', pretrained, **kwargs)
