"""Model complexity: parameter and MAC counts, and the `cmtnet info` command.

MACs are counted with fvcore, the counter the CMT authors' figures were made with, under its conventions:
one unit per multiply-accumulate of a conv, linear or matmul; BatchNorm at inference 2 per element, LayerNorm
5 per element, average pooling 1 per element; activations, additions, scaling and softmax not at all.
fvcore has no handle for `scaled_dot_product_attention` (our attention's fused path), so one is added here
that counts its two matmuls, Q K^T and (attention) V, exactly as fvcore counts them in the explicit path.
Counted this way, our models match the released code's published MACs.

    import timm, cmtnet
    from cmtnet.complexity import count_macs, count_params
    model = timm.create_model('cmt_s', img_size=384)
    print(count_params(model), count_macs(model, 384))
"""
import argparse
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from math import prod
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn

from ..models.variants import VARIANT_ARGS, check_img_size, native_img_size

with warnings.catch_warnings():
    # importing fvcore.nn scripts its focal loss with the deprecated torch.jit.script: not our concern
    warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

__all__ = ['REFERENCE', 'Reference', 'count_macs', 'count_params', 'mac_analysis', 'add_parser']

# Ops fvcore leaves uncounted by convention (elementwise arithmetic, activations, reductions, pooling).
# The figures we compare with were made under the same convention, so these are silenced; any other
# unsupported op (a matmul-like op fvcore does not know, say) is reported as a warning.
_UNCOUNTED_BY_CONVENTION = frozenset(f'aten::{op}' for op in (
    'add', 'sub', 'rsub', 'mul', 'div', 'neg', 'abs', 'exp', 'log', 'sqrt', 'rsqrt', 'pow', 'reciprocal',
    'gelu', 'silu', 'relu', 'relu6', 'sigmoid', 'hardsigmoid', 'hardswish', 'tanh', 'elu', 'leaky_relu',
    'softmax', 'log_softmax', 'mean', 'sum', 'amax', 'max_pool2d', 'avg_pool2d', 'adaptive_max_pool2d',
    'dropout', 'feature_dropout', 'pad', 'rand', 'bernoulli', 'floor_divide',
))


def _sdpa_macs(inputs: List[Any], outputs: List[Any]) -> int:
    """fvcore handle for aten::scaled_dot_product_attention: Q K^T plus (attention) V.

    q is (..., Nq, d), k is (..., Nk, d), v is (..., Nk, dv): B*heads*Nq*Nk*d + B*heads*Nq*Nk*dv MACs.
    The mask addition, scaling and softmax are elementwise, which fvcore does not count elsewhere either.
    """
    q_shape, k_shape, v_shape = (get_shape(v) for v in inputs[:3])
    queries = prod(q_shape[:-1])  # batch x heads x Nq, taken from q so grouped-query attention counts right
    return queries * k_shape[-2] * (q_shape[-1] + v_shape[-1])


def mac_analysis(model: nn.Module, inputs: Union[torch.Tensor, Tuple[Any, ...]]) -> FlopCountAnalysis:
    """An fvcore analysis of `model(*inputs)` that counts attention and keeps conventional gaps quiet.

    Use it for breakdowns (`.by_operator()`, `.by_module()`); `count_macs` is the one-number shortcut.
    The analysis traces the model lazily, in whatever train/eval mode the model is in when it is asked.
    """
    analysis = FlopCountAnalysis(model, inputs)
    analysis.set_op_handle('aten::scaled_dot_product_attention', _sdpa_macs)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings('none')
    return analysis


def count_params(model: nn.Module) -> int:
    """Number of parameters of `model` (each shared tensor once), trainable or not."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: Union[int, Tuple[int, int]]) -> int:
    """Multiply-accumulates of one forward pass on one image of `input_size` (side or (height, width)).

    Counted at inference (eval mode: BatchNorm counts differently while training), with the model's own
    input channels, device and dtype. Warns if the model uses an op fvcore cannot count beyond the
    conventional elementwise ones, as then the total is too low.
    """
    height, width = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if height <= 0 or width <= 0:
        raise ValueError(f'input_size must be a positive side or (height, width), got {input_size}')
    ref = next(model.parameters(), None)
    x = torch.zeros(
        1, getattr(model, 'in_chans', 3), height, width,
        device=ref.device if ref is not None else None,
        dtype=ref.dtype if ref is not None else None,
    )
    was_training = model.training
    model.eval()
    try:
        analysis = mac_analysis(model, x)
        total = analysis.total()
        missed = {op: n for op, n in analysis.unsupported_ops().items()
                  if op.rstrip('_') not in _UNCOUNTED_BY_CONVENTION}
    finally:
        model.train(was_training)
    if missed:
        warnings.warn(f'fvcore could not count these ops, so the MACs are too low: {missed}', stacklevel=2)
    return int(total)


# --- reference figures ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Reference:
    """Published figures of a variant at its native input size."""
    released_params: int  # the authors' released code, exact
    released_gmacs: float  # the authors' released code, fvcore, 3 decimals
    paper_params_m: float  # the CMT paper, millions
    paper_gflops: float  # the CMT paper; "FLOPs" there are multiply-accumulates, as usual
    paper_top1: str  # the CMT paper, ImageNet top-1 (%)


REFERENCE: Dict[str, Reference] = {
    'cmt_ti': Reference(9_492_426, 0.652, 9.5, 0.6, '79.0-79.2'),
    'cmt_xs': Reference(15_247_208, 1.575, 15.2, 1.5, '81.8'),
    'cmt_s': Reference(26_256_160, 4.087, 25.1, 4.0, '83.5'),
    'cmt_b': Reference(45_715_076, 9.425, 45.7, 9.3, '84.5'),
}


# --- the `cmtnet info` command --------------------------------------------------------------------

# (header, right-aligned)
_COLUMNS: Tuple[Tuple[str, bool], ...] = (
    ('model', False), ('input', True), ('params', True), ('GMACs', True),
    ('released params', True), ('released GMACs', True), ('GMACs vs released', True),
    ('paper params', True), ('paper GFLOPs', True), ('paper top-1', True),
)


def _row(variant: str, img_size: Optional[int]) -> List[str]:
    native = native_img_size(variant)
    size = img_size or native
    model = timm.create_model(variant, img_size=size)
    params, macs = count_params(model), count_macs(model, size)
    row = [variant, f'{size}', f'{params:,}', f'{macs / 1e9:.3f}']
    if size != native:
        return row + ['-'] * (len(_COLUMNS) - len(row))  # the published figures are for the native size
    ref = REFERENCE[variant]
    return row + [
        f'{ref.released_params:,}', f'{ref.released_gmacs:.3f}', f'{macs / 1e9 / ref.released_gmacs - 1:+.2%}',
        f'{ref.paper_params_m}M', f'{ref.paper_gflops}', ref.paper_top1,
    ]


def _format_table(rows: Sequence[Sequence[str]], markdown: bool) -> str:
    headers = [h for h, _ in _COLUMNS]
    if markdown:
        lines = ['| ' + ' | '.join(headers) + ' |',
                 '|' + '|'.join('---:' if right else ':---' for _, right in _COLUMNS) + '|']
        lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
        return '\n'.join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return '  '.join(c.rjust(w) if right else c.ljust(w)
                         for c, w, (_, right) in zip(cells, widths, _COLUMNS)).rstrip()

    return '\n'.join([line(headers), line(['-' * w for w in widths])] + [line(r) for r in rows])


def _img_size(text: str) -> int:
    size = int(text)
    try:
        return check_img_size(size, 'image size')[0]
    except ValueError as e:  # argparse names the option and prints the message
        raise argparse.ArgumentTypeError(str(e)) from e


def _run_info(args: argparse.Namespace) -> int:
    """Print the complexity table of the chosen variants."""
    variants = args.variant or list(VARIANT_ARGS)
    rows = [_row(v, args.img_size) for v in variants]
    print(f'CMT complexity. params: counted on the model. GMACs: per image, counted by fvcore '
          f'{version("fvcore")} (attention matmuls included; norms and pooling as fvcore counts them; '
          f'activations and additions not counted).')
    print('Released: the authors\' code (MACs by fvcore too). Paper: arXiv:2107.06263. '
          'Both for the native input size only.')
    print()
    print(_format_table(rows, args.markdown))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `info` subcommand."""
    parser = subparsers.add_parser(
        'info', help='params and MACs of the CMT variants beside the published figures',
        description='Params and MACs (fvcore) of the CMT variants beside the released code and the paper.')
    parser.add_argument('--variant', action='append', choices=list(VARIANT_ARGS),
                        help='variant to show (repeatable; default: all)')
    parser.add_argument('--img-size', type=_img_size, default=None,
                        help='input side for every variant (default: each variant\'s native size); '
                             'published figures are shown only at the native size')
    parser.add_argument('--markdown', action='store_true', help='print a GitHub markdown table')
    parser.set_defaults(func=_run_info)
    return parser
