"""Parameter and MAC counts (analysis/macs.py)."""
import warnings

import pytest
import timm
import torch
import torch.nn as nn

from cmtnet import VARIANT_ARGS
from cmtnet.models import LightweightAttention, set_model_fused_attn
from cmtnet.analysis.macs import count_macs, count_params, mac_analysis
from cmtnet.models.variants import PUBLISHED

VARIANTS = list(VARIANT_ARGS)


@pytest.mark.parametrize('variant', VARIANTS)
def test_params_equal_released_code(variant):
    assert count_params(timm.create_model(variant)) == PUBLISHED[variant].released_params


def test_fused_and_explicit_attention_count_the_same():
    model = timm.create_model('cmt_ti', img_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # nothing a CMT uses may go uncounted
        fused = count_macs(model, 64)
        set_model_fused_attn(model, False)
        explicit = count_macs(model, 64)
    assert fused == explicit


def test_attention_counted_at_its_analytic_cost_in_the_whole_model():
    size = 64
    model = timm.create_model('cmt_ti', img_size=size).eval()
    by_op = mac_analysis(model, torch.zeros(1, 3, size, size)).by_operator()
    # per block: Q K^T and (attention) V, each heads * N * Nk * head_dim = N * Nk * C
    expected = 0
    for i, stage in enumerate(model.stages):
        tokens = (size // (4 * 2 ** i)) ** 2
        keys = tokens // stage.sr_ratio ** 2
        expected += len(stage.blocks) * 2 * tokens * keys * VARIANT_ARGS['cmt_ti']['embed_dims'][i]
    assert by_op['scaled_dot_product_attention'] == expected


class _TokenAttention(nn.Module):
    """One LightweightAttention on an image-shaped input, so that `count_macs` can drive it."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, grid: int):
        super().__init__()
        self.in_chans = dim
        self.grid = grid
        self.attn = LightweightAttention(dim, heads, sr_ratio)
        self.bias = nn.Parameter(torch.zeros(heads, grid * grid, (grid // sr_ratio) ** 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x.flatten(2).transpose(1, 2), self.grid, self.grid, self.bias)


@pytest.mark.parametrize('fused', [True, False])
@pytest.mark.parametrize('sr_ratio', [1, 2])
def test_attention_block_macs_are_analytic(sr_ratio, fused):
    dim, heads, grid = 16, 2, 8
    module = _TokenAttention(dim, heads, sr_ratio, grid)
    set_model_fused_attn(module, fused)
    n, nk = grid * grid, (grid // sr_ratio) ** 2
    linears = n * dim * dim * 2 + nk * dim * dim * 2  # q and output projection on n tokens, k and v on nk
    reduction = nk * dim * sr_ratio ** 2 + 2 * nk * dim if sr_ratio > 1 else 0  # depthwise conv + BatchNorm
    attention = 2 * n * nk * dim
    assert count_macs(module, grid) == linears + reduction + attention


def test_uncounted_matmul_is_reported():
    class Baddbmm(nn.Module):
        in_chans = 1

        def forward(self, x):
            t = x.flatten(2)
            return torch.baddbmm(t.transpose(1, 2), t.transpose(1, 2), t)

    with pytest.warns(UserWarning, match='baddbmm'):
        count_macs(Baddbmm(), 4)


def test_count_macs_at_another_resolution_keeps_training_mode():
    model = timm.create_model('cmt_ti', img_size=224).train()
    macs = count_macs(model, 224)
    assert model.training
    # the stem, FFNs and projections scale with the pixels, attention faster: more than (224/160)^2 x
    assert macs > PUBLISHED['cmt_ti'].released_gmacs * 1e9 * (224 / 160) ** 2
