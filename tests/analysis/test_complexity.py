"""Parameter and MAC counts (cmtnet.complexity) and the `cmtnet info` command."""
import contextlib
import io
import re
import warnings

import pytest
import timm
import torch
import torch.nn as nn

from cmtnet import VARIANT_ARGS
from cmtnet.cli import main
from cmtnet.models import LightweightAttention, set_fused_attn
from cmtnet.analysis.complexity import REFERENCE, count_macs, count_params, mac_analysis

VARIANTS = list(VARIANT_ARGS)


def _table(text: str) -> list:
    """The cells of the markdown table lines of `text`."""
    return [[c.strip() for c in line.strip()[1:-1].split('|')] for line in text.splitlines() if line.startswith('|')]


@pytest.mark.parametrize('variant', VARIANTS)
def test_params_equal_released_code(variant):
    assert count_params(timm.create_model(variant)) == REFERENCE[variant].released_params


def test_fused_and_explicit_attention_count_the_same():
    model = timm.create_model('cmt_ti', img_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # nothing a CMT uses may go uncounted
        fused = count_macs(model, 64)
        set_fused_attn(model, False)
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
    set_fused_attn(module, fused)
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
    assert macs > REFERENCE['cmt_ti'].released_gmacs * 1e9 * (224 / 160) ** 2


@pytest.fixture(scope='module')
def markdown_info() -> str:
    # the full table takes a while, so it is made once for the tests that read it (capsys is per test)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(['info', '--markdown']) == 0
    return out.getvalue()


def test_info_markdown_is_a_valid_table_with_a_row_per_variant(markdown_info):
    rows = _table(markdown_info)
    assert len(rows) == 2 + len(VARIANTS)
    assert all(len(r) == len(rows[0]) for r in rows)
    assert all(re.fullmatch(r':?-{3,}:?', c) for c in rows[1])
    assert [r[0] for r in rows[2:]] == VARIANTS


def test_info_matches_released_code(markdown_info):
    rows = _table(markdown_info)
    col = {h: i for i, h in enumerate(rows[0])}
    for row in rows[2:]:
        ref = REFERENCE[row[col['model']]]
        assert int(row[col['params']].replace(',', '')) == ref.released_params
        assert float(row[col['GMACs']]) == pytest.approx(ref.released_gmacs, rel=0.005)
    assert 'fvcore' in markdown_info  # the header says which library counted


def test_info_plain_at_another_size(capsys):
    assert main(['info', '--variant', 'cmt_ti', '--img-size', '192']) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith('model'))
    assert set(lines[header + 1].replace(' ', '')) == {'-'}
    (row,) = lines[header + 2:]
    cells = row.split()
    assert cells[:2] == ['cmt_ti', '192']
    assert int(cells[2].replace(',', '')) > REFERENCE['cmt_ti'].released_params  # larger position biases
    assert cells[4:] == ['-'] * 6  # published figures are for the native size only


def test_info_rejects_bad_img_size(capsys):
    with pytest.raises(SystemExit):
        main(['info', '--img-size', '100'])
    assert 'multiple of 32' in capsys.readouterr().err
