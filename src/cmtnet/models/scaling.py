"""Compound scaling as the CMT paper defines it: a CMT of any size phi from a base model.

Following EfficientNet, the paper scales depth, width and input resolution together:

    depth x alpha^phi,   width x beta^phi,   resolution x gamma^phi,
    with alpha * beta^1.5 * gamma^2 ~= 2.5   (alpha = 1.2, beta = 1.3, gamma = 1.15),

so that the cost grows about 2.5x per step of phi; CMT-Ti, XS and B were made from CMT-S (phi = 0) this
way. The paper does not say how the scaled numbers are rounded; `scaled_args` uses these rules, which the
released variants' shapes suggest:

- depths: each stage's depth times alpha^phi, rounded half up, at least 1;
- widths: the first stage's width times beta^phi, rounded to a multiple of `WIDTH_MULTIPLE` (2: every
  released stage-1 width, 46, 52, 64 and 76, is even, but 46 and 52 are no multiples of 4), and doubled at
  each later stage, as in every variant. With the released heads (1, 2, 4, 8) every stage then divides
  evenly into heads of one size. The stem's width is scaled and rounded the same way;
- resolution: the base's times gamma^phi, rounded to the nearest multiple of 32 (the network's stride),
  at least 32;
- heads, reduction ratios and FFN ratio stay the base's.

The released variants keep these resolutions and, within one block per stage, these depths; their widths
differ more (see `cmtnet scaling`). `timm.create_model('cmt_scaled', phi=1)` builds the scaled model at
its scaled resolution, which its `pretrained_cfg['input_size']` records.
"""
import math
from typing import Any, Dict

from timm.models import generate_default_cfgs, register_model

from ..errors import InputError
from .cmt import CMT, _cfg, _create_cmt
from .variants import NET_STRIDE, VARIANT_ARGS

__all__ = [
    'ALPHA', 'BETA', 'GAMMA', 'COST_PER_STEP', 'WIDTH_MULTIPLE', 'check_scaling_coefficients',
    'cost_growth_per_step', 'scaled_args',
]

ALPHA, BETA, GAMMA = 1.2, 1.3, 1.15  # the paper's depth, width and resolution coefficients
COST_PER_STEP = 2.5  # the paper's target for alpha * beta^1.5 * gamma^2
COST_TOLERANCE = 0.1  # relative: the paper's own coefficients give 2.35, 6% under its "~= 2.5"
WIDTH_MULTIPLE = 2


def cost_growth_per_step(alpha: float, beta: float, gamma: float) -> float:
    """The paper's constraint quantity alpha * beta^1.5 * gamma^2: the cost growth per step of phi."""
    return alpha * beta ** 1.5 * gamma ** 2


def check_scaling_coefficients(
        alpha: float = ALPHA,
        beta: float = BETA,
        gamma: float = GAMMA,
        target: float = COST_PER_STEP,
        rtol: float = COST_TOLERANCE,
) -> float:
    """Check alpha, beta, gamma >= 1 and alpha * beta^1.5 * gamma^2 within `rtol` of `target`; return it."""
    for name, value in (('alpha', alpha), ('beta', beta), ('gamma', gamma)):
        if not value >= 1:
            raise InputError(f'{name} must be at least 1 (a scaling factor per step of phi), got {value}')
    growth = cost_growth_per_step(alpha, beta, gamma)
    if abs(growth / target - 1) > rtol:
        raise InputError(
            f'alpha * beta^1.5 * gamma^2 = {growth:.3f} for alpha={alpha}, beta={beta}, gamma={gamma}; '
            f'expected {target} within {rtol:.0%}')
    return growth


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def _round_to_multiple(x: float, multiple: int) -> int:
    return max(multiple, multiple * _round_half_up(x / multiple))


def scaled_args(
        phi: float,
        base: str = 'cmt_s',
        alpha: float = ALPHA,
        beta: float = BETA,
        gamma: float = GAMMA,
) -> Dict[str, Any]:
    """The `CMT` arguments (img_size included) of `base` scaled by phi, by the rules of the module docstring.

    The coefficients are checked against the paper's constraint; phi = 0 gives the base itself.
    """
    if base not in VARIANT_ARGS:
        raise InputError(f'unknown base variant {base!r}; expected one of {", ".join(VARIANT_ARGS)}')
    if not math.isfinite(phi):
        raise InputError(f'phi must be a finite number, got {phi}')
    check_scaling_coefficients(alpha, beta, gamma)
    args = dict(VARIANT_ARGS[base])
    depth_mult, width_mult = alpha ** phi, beta ** phi
    first_width = _round_to_multiple(args['embed_dims'][0] * width_mult, WIDTH_MULTIPLE)
    args['depths'] = tuple(max(1, _round_half_up(d * depth_mult)) for d in args['depths'])
    args['embed_dims'] = tuple(first_width * 2 ** i for i in range(len(args['embed_dims'])))
    args['stem_chs'] = _round_to_multiple(args['stem_chs'] * width_mult, WIDTH_MULTIPLE)
    args['img_size'] = _round_to_multiple(args['img_size'] * gamma ** phi, NET_STRIDE)
    return args


default_cfgs = generate_default_cfgs({'cmt_scaled': _cfg()})


@register_model
def cmt_scaled(
        pretrained: bool = False,
        phi: float = 0.,
        base: str = 'cmt_s',
        alpha: float = ALPHA,
        beta: float = BETA,
        gamma: float = GAMMA,
        **kwargs,
) -> CMT:
    """CMT-S (or `base`) compound-scaled by `phi`, built at its scaled resolution unless `img_size` is given."""
    args = scaled_args(phi, base=base, alpha=alpha, beta=beta, gamma=gamma)
    return _create_cmt('cmt_scaled', pretrained=pretrained, **dict(args, **kwargs))
