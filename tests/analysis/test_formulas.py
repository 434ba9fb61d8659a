"""The paper's per-block cost formulas, our derivation, fvcore's count, and `cmtnet complexity`."""
import json

import pytest
import torch
import torch.nn as nn
from PIL import Image
from timm.models.vision_transformer import Block

from cmtnet.analysis.formulas import (
    cmt_block_terms, paper_cmt_block_macs, paper_transformer_block_macs, total_macs, transformer_block_terms,
)
from cmtnet.analysis.complexity import (
    measure_cmt_block_macs, measure_transformer_block_macs, plot_cost_vs_tokens,
)
from cmtnet.cli import main
from cmtnet.errors import InputError
from cmtnet.models import CMTBlock, set_model_fused_attn


def test_paper_formulas_match_hand_computed_values():
    # n = 4, d = 2: 12*4*4 + 2*16*2 = 192 + 64
    assert paper_transformer_block_macs(4, 2) == 256
    # k = 1: 10*4*4*(1 + 0.2) + 2*16*2 + 45*4*2 = 192 + 64 + 360
    assert paper_cmt_block_macs(4, 2, 1) == pytest.approx(616)
    # CMT-S stage 3 at 224: n = 196, d = 256, k = 2
    assert paper_transformer_block_macs(196, 256) == 154_140_672 + 19_668_992
    assert paper_cmt_block_macs(196, 256, 2) == pytest.approx(134_873_088 + 4_917_248 + 2_257_920)


@pytest.mark.parametrize('n, d, k', [(64, 16, 1), (64, 16, 2), (3136, 64, 8), (196, 256, 2), (49, 512, 1)])
def test_derived_paper_terms_add_up_to_the_paper_formula_at_ratio_4(n, d, k):
    terms = cmt_block_terms(n, d, k, mlp_ratio=4.)
    assert total_macs(terms, paper_only=True) == pytest.approx(paper_cmt_block_macs(n, d, k), rel=1e-12)
    # what the paper leaves out: the reduction conv (n d when k > 1) and the norms, all positive
    left_out = total_macs(terms) - total_macs(terms, paper_only=True)
    assert left_out == (n * d if k > 1 else 0) + (12 + 4 * 4) * n * d + (2 * n * d // k ** 2 if k > 1 else 0)
    transformer = transformer_block_terms(n, d)
    assert total_macs(transformer, paper_only=True) == paper_transformer_block_macs(n, d)
    assert total_macs(transformer) - total_macs(transformer, paper_only=True) == 10 * n * d


def test_derivation_follows_the_ffn_ratio_where_the_paper_assumes_4():
    n, d, k, r = 64, 10, 2, 3.6  # hidden int(36.0) = 36
    paper_terms = total_macs(cmt_block_terms(n, d, k, r), paper_only=True)
    assert paper_terms == ((2 + 2 * r) * n * d * d + 2 * n * d * d / k ** 2 + 2 * n * n * d / k ** 2
                           + (9 + 9 * r) * n * d)
    assert paper_terms < paper_cmt_block_macs(n, d, k)


@pytest.mark.parametrize('n, d, k', [(10, 8, 2), (0, 8, 1), (16, 0, 1), (16, 8, 0)])
def test_bad_block_shapes_are_refused(n, d, k):
    with pytest.raises(InputError, match='must be'):
        paper_cmt_block_macs(n, d, k)


def _hook_count(module: nn.Module, run) -> int:
    """MACs of convs, linears and norms seen by forward hooks, under fvcore's conventions but without it:
    conv out * in/groups * kernel, linear out * in, LayerNorm 5 and (inference) BatchNorm 2 per element."""
    total = 0

    def hook(m, inputs, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total += out.numel() * m.in_features
        elif isinstance(m, nn.LayerNorm):
            total += 5 * out.numel()
        elif isinstance(m, nn.BatchNorm2d):
            total += 2 * out.numel()

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return total


@pytest.mark.parametrize('k', [1, 2, 4])
def test_measured_block_equals_an_independent_count_and_the_derivation(k):
    grid, dim, heads, ratio = 8, 16, 2, 4.
    n, n_kv = grid * grid, (grid // k) ** 2
    block = CMTBlock(dim, heads, k, mlp_ratio=ratio).eval()
    set_model_fused_attn(block, False)
    layers = _hook_count(block, lambda: block(torch.randn(1, dim, grid, grid), torch.zeros(heads, n, n_kv)))
    independent = layers + 2 * n * n_kv * dim  # Q K^T and (attention) V, which no module hook sees
    measured = measure_cmt_block_macs((grid, grid), dim, heads, k, ratio)
    assert measured == independent
    assert measured == total_macs(cmt_block_terms(n, dim, k, ratio))


def test_measured_transformer_block_equals_an_independent_count():
    n, dim, heads = 49, 32, 2
    block = Block(dim, heads, qkv_bias=True).eval()
    layers = _hook_count(block, lambda: block(torch.randn(1, n, dim)))
    measured = measure_transformer_block_macs(n, dim, heads)
    assert measured == layers + 2 * n * n * dim
    assert measured == total_macs(transformer_block_terms(n, dim))


def test_complexity_json_parses_with_one_row_per_stage(capsys):
    assert main(['complexity', '--variant', 'cmt_ti', '--img-size', '64', '--json']) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out['rows']
    assert [r['stage'] for r in rows] == [1, 2, 3, 4]
    assert [r['tokens'] for r in rows] == [16 * 16, 8 * 8, 4 * 4, 2 * 2]
    assert [r['reduction_ratio'] for r in rows] == [8, 4, 2, 1]
    for r in rows:
        assert r['cmt_derived_macs'] == r['cmt_measured_macs']  # the derivation accounts for every MAC
        assert r['cmt_paper_macs'] == paper_cmt_block_macs(r['tokens'], r['channels'], r['reduction_ratio'])
        assert r['cmt_paper_diff_fraction'] == pytest.approx(r['cmt_paper_macs'] / r['cmt_measured_macs'] - 1)
    assert 'fvcore' in out['counter'] and 'MACs' in out['counter']


def test_complexity_table_and_plot(tmp_path, capsys):
    assert main(['complexity', '--variant', 'cmt_ti', '--img-size', '32']) == 0
    text = capsys.readouterr().out
    assert text.count('cmt_ti') == 4 and 'leaves out' in text
    path = tmp_path / 'cost.png'
    plot_cost_vs_tokens(str(path), dim=16, sides=(8, 16))
    with Image.open(path) as image:
        assert image.format == 'PNG' and image.width > 300
