"""How a CMT trains on a CPU under bfloat16 autocast: a pass over the network that the code turning that autocast
on applies (the trainer, `cmtnet bench`'s training paths), so that the network's forward has no branch on it.

Two parts of `LightweightAttention` then run otherwise than autocast would run them, each because the other
kernel is slower there (benchmarks/autocast_training.py measures both, with the pass and without):
- the key/value reduction, the stride-k depthwise conv, computes in float32: oneDNN's bfloat16 depthwise conv
  whose kernel equals its stride is slower than float32, forward and backward;
- the attention runs in its explicit form (q k^T + bias, softmax, times v, in bfloat16), not SDPA: with a float
  mask, SDPA takes its math path in float32 there.

The pass changes how the model runs, not what it holds: the parameters stay the same tensors under the same
names, so its optimizer, state_dict and checkpoints are those of the plain model.
"""
from typing import Optional, Union

import torch
import torch.nn as nn

from .cmt import LightweightAttention

__all__ = ['WeightDtypeConv2d', 'cpu_autocast_training']


class WeightDtypeConv2d(nn.Conv2d):
    """A conv that computes in its weight's dtype whatever autocast says (float32 for a float32 model)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.to(self.weight.dtype))


def _weight_dtype(conv: nn.Conv2d) -> WeightDtypeConv2d:
    """`conv` as a `WeightDtypeConv2d` holding the same parameters."""
    new = WeightDtypeConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                            padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                            bias=conv.bias is not None, padding_mode=conv.padding_mode, device='meta')
    new.weight, new.bias = conv.weight, conv.bias
    return new.train(conv.training)


def cpu_autocast_training(model: nn.Module, device: Union[str, torch.device],
                          amp: Optional[torch.dtype]) -> nn.Module:
    """`model`, changed in place as the module docstring says where it trains on a CPU (`device`) under
    bfloat16 autocast (`amp`, the autocast dtype or None), else left as it is."""
    if torch.device(device).type != 'cpu' or amp != torch.bfloat16:
        return model
    for m in model.modules():
        if isinstance(m, LightweightAttention):
            m.fused_attn = False
            if type(m.sr) is nn.Conv2d:
                m.sr = _weight_dtype(m.sr)
    return model
