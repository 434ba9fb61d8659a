"""Parameter and MAC counts of a model, by fvcore under the conventions of the published figures.

MACs are counted with fvcore, the counter the CMT authors' figures were made with, under its conventions:
one unit per multiply-accumulate of a conv, linear or matmul; BatchNorm at inference 2 per element, LayerNorm
5 per element, average pooling 1 per element; activations, additions, scaling and softmax not at all.
fvcore has no handle for `scaled_dot_product_attention` (our attention's fused path), so one is added here
that counts its two matmuls, Q K^T and (attention) V, exactly as fvcore counts them in the explicit path.
Counted this way, our models match the released code's published MACs.

    import timm, cmtnet
    from cmtnet.analysis.macs import count_macs, count_params
    model = timm.create_model('cmt_s', img_size=384)
    print(count_params(model), count_macs(model, 384))
"""
import warnings
from math import prod
from typing import Any, List, Tuple, Union

import torch
import torch.nn as nn

with warnings.catch_warnings():
    # importing fvcore.nn scripts its focal loss with the deprecated torch.jit.script: not our concern
    warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

__all__ = ['count_macs', 'count_params', 'mac_analysis']

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
