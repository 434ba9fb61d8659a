"""Models with non-trivial norms, for the tests of inference folding and export.

A fresh model's norms are identities and its conv biases zeros, which would hide a wrong fold: these
helpers give them random statistics, affines and biases.
"""
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ['randomise_norms', 'rel_err']


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial norm statistics, affines and conv biases (fresh ones are identities and zeros, which
    would hide a wrong fold)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            # every BatchNorm (the token BatchNorm of the all-BatchNorm ablation is a BatchNorm1d); timm's
            # LayerNorm2d is a LayerNorm
            if isinstance(m, (_BatchNorm, nn.LayerNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
            if isinstance(m, _BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return ((a - b).abs().max() / b.abs().max()).item()
