"""The paper's complexity argument, checked: `cmtnet complexity`.

For every stage of every variant, one block's cost three ways: the paper's formula (analysis/formulas.py),
our derivation from the block, and fvcore's count of the block as built (analysis/macs.py: MACs,
attention included), beside a plain Transformer block (timm's ViT `Block`) of the same width, heads and
tokens. `--plot` draws the cost per block against the number of tokens n for a Transformer block and CMT
blocks at k = 1, 2, 4, 8: the paper's curves, with measured points on them.
"""
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
import torch
from timm.models.vision_transformer import Block

from ..engine.options import command_parser, option
from ..models.cmt import CMTBlock
from ..models.variants import VARIANT_ARGS, native_img_size
from .info import image_side
from .macs import mac_analysis
from .formulas import (
    cmt_block_terms, paper_cmt_block_macs, paper_transformer_block_macs, total_macs, transformer_block_terms,
)
from .tables import Column, dump_json, format_table, percent, print_report, rows_as_dicts
from .plots import new_figure, save_figure

__all__ = ['BlockCost', 'ComplexityOptions', 'block_costs', 'measure_cmt_block_macs', 'measure_transformer_block_macs',
           'plot_cost_vs_tokens', 'add_parser']

WHAT_THE_FORMULA_LEAVES_OUT = (
    'The paper\'s CMT formula is the sum of the block\'s projections, attention, LPU and FFN convs for an '
    'FFN ratio of 4; our derivation from the block gives exactly those terms, (2 + 2r) n d^2 + 2 n d^2/k^2 + '
    '2 n^2 d/k^2 + (9 + 9r) n d, which are the paper\'s 10 n d^2 (1 + 0.2/k^2) + 2 n^2 d/k^2 + 45 n d at '
    'r = 4 (CMT-Ti and XS use r = 3.6 and 3.77, so their blocks cost less than the formula says). The formula '
    'leaves out the stride-k depthwise conv that shrinks keys and values (n d when k > 1) and the norms '
    '(two LayerNorms and three BatchNorms, (12 + 4r) n d as fvcore counts them, and a fourth, 2 n d/k^2, when '
    'k > 1), which is why it undercounts most where d is small. The Transformer formula 12 n d^2 + 2 n^2 d '
    'leaves out only its two LayerNorms (10 n d). Biases, activations, softmax, the position bias and residual '
    'sums are counted by neither.'
)


@dataclass(frozen=True)
class BlockCost:
    """One block's MACs for a stage of a variant: the paper's formula, our derivation and fvcore."""
    variant: str
    stage: int
    img_size_px: int
    tokens: int
    channels: int
    heads: int
    reduction_ratio: int
    mlp_ratio: float
    cmt_paper_macs: float
    cmt_derived_macs: int
    cmt_measured_macs: int
    transformer_paper_macs: float
    transformer_derived_macs: int
    transformer_measured_macs: int

    @property
    def cmt_paper_diff_fraction(self) -> float:
        return self.cmt_paper_macs / self.cmt_measured_macs - 1

    @property
    def transformer_paper_diff_fraction(self) -> float:
        return self.transformer_paper_macs / self.transformer_measured_macs - 1

    @property
    def cmt_over_transformer_measured_ratio(self) -> float:
        return self.cmt_measured_macs / self.transformer_measured_macs

    def as_dict(self) -> Dict[str, Any]:
        return dict(rows_as_dicts([self])[0],
                    cmt_paper_diff_fraction=self.cmt_paper_diff_fraction,
                    transformer_paper_diff_fraction=self.transformer_paper_diff_fraction,
                    cmt_over_transformer_measured_ratio=self.cmt_over_transformer_measured_ratio)


def _count(module: torch.nn.Module, *inputs: torch.Tensor) -> int:
    with torch.no_grad():
        return int(mac_analysis(module.eval(), inputs).total())


def measure_cmt_block_macs(grid: Tuple[int, int], dim: int, heads: int, k: int, mlp_ratio: float = 4.) -> int:
    """fvcore's MACs of one `CMTBlock` (models/cmt.py) on a grid of tokens, at inference."""
    n, n_kv = grid[0] * grid[1], (grid[0] // k) * (grid[1] // k)
    return _count_cmt_block(CMTBlock(dim, heads, k, mlp_ratio=mlp_ratio), grid, torch.zeros(heads, n, n_kv))


def _count_cmt_block(block: CMTBlock, grid: Tuple[int, int], rel_pos_bias: torch.Tensor) -> int:
    return _count(block, torch.zeros(1, block.norm1.normalized_shape[0], *grid), rel_pos_bias.detach())


def measure_transformer_block_macs(n: int, dim: int, heads: int, mlp_ratio: float = 4.) -> int:
    """fvcore's MACs of one pre-norm Transformer block (timm's ViT `Block`, qkv bias) on n tokens."""
    return _count(Block(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=True), torch.zeros(1, n, dim))


def block_costs(variant: str, img_size: Optional[int] = None) -> List[BlockCost]:
    """One `BlockCost` per stage of `variant` at `img_size` (default: its native size), measured on the
    first block of each stage of the model itself, with its stage's position bias."""
    size = img_size or native_img_size(variant)
    model = timm.create_model(variant, img_size=size)
    r = VARIANT_ARGS[variant]['mlp_ratio']
    rows = []
    for i, stage in enumerate(model.stages):
        block = stage.blocks[0]
        dim, heads, k = block.norm1.normalized_shape[0], block.attn.num_heads, stage.sr_ratio
        n = stage.grid_size[0] * stage.grid_size[1]
        rows.append(BlockCost(
            variant=variant, stage=i + 1, img_size_px=size, tokens=n, channels=dim, heads=heads,
            reduction_ratio=k, mlp_ratio=r,
            cmt_paper_macs=paper_cmt_block_macs(n, dim, k),
            cmt_derived_macs=total_macs(cmt_block_terms(n, dim, k, r)),
            cmt_measured_macs=_count_cmt_block(block, stage.grid_size, stage.rel_pos_bias),
            transformer_paper_macs=paper_transformer_block_macs(n, dim),
            transformer_derived_macs=total_macs(transformer_block_terms(n, dim, 4.)),
            transformer_measured_macs=measure_transformer_block_macs(n, dim, heads, 4.),
        ))
    return rows


def _mmacs(field: str) -> Any:
    return lambda row: f'{row[field] / 1e6:,.3f}'


_COLUMNS = (  # MACs in millions; "ViT" is the plain Transformer block
    Column('variant', lambda r: r['variant'], right=False),
    Column('stage', lambda r: str(r['stage'])),
    Column('input', lambda r: str(r['img_size_px'])),
    Column('n', lambda r: str(r['tokens'])),
    Column('d', lambda r: str(r['channels'])),
    Column('k', lambda r: str(r['reduction_ratio'])),
    Column('r', lambda r: f'{r["mlp_ratio"]:g}'),
    Column('CMT paper', _mmacs('cmt_paper_macs')),
    Column('CMT derived', _mmacs('cmt_derived_macs')),
    Column('CMT fvcore', _mmacs('cmt_measured_macs')),
    Column('paper vs fvcore', lambda r: percent(r['cmt_paper_diff_fraction'])),
    Column('ViT paper', _mmacs('transformer_paper_macs')),
    Column('ViT fvcore', _mmacs('transformer_measured_macs')),
    Column('paper vs fvcore', lambda r: percent(r['transformer_paper_diff_fraction'])),
    Column('CMT/ViT', lambda r: f'{r["cmt_over_transformer_measured_ratio"]:.3f}'),
)


def plot_cost_vs_tokens(
        path: str,
        dim: int = 64,
        sides: Sequence[int] = (8, 16, 24, 32, 40, 48, 56),
        k_values: Sequence[int] = (1, 2, 4, 8),
) -> None:
    """Plot MACs per block against tokens n (square grids of `sides`) at width `dim`: the paper's formulas
    as curves, fvcore's counts of the blocks as points."""

    heads = max(1, dim // 64)
    fine = [s * s for s in range(min(sides), max(sides) + 1)]
    fig, ax = new_figure((7, 4.8))
    series = [('Transformer', None)] + [(f'CMT, k = {k}', k) for k in k_values]
    colors = ['black'] + [f'C{i}' for i in range(10)]
    for (label, k), color in zip(series, colors):
        if k is None:
            curve = [paper_transformer_block_macs(n, dim) for n in fine]
            points = [measure_transformer_block_macs(s * s, dim, heads) for s in sides]
        else:
            curve = [paper_cmt_block_macs(n, dim, k) if n % (k * k) == 0 else float('nan') for n in fine]
            points = [measure_cmt_block_macs((s, s), dim, heads, k) for s in sides]
        ns = [n for n, c in zip(fine, curve) if c == c]
        ax.plot(ns, [c / 1e6 for c in curve if c == c], '--' if k is None else '-', color=color,
                label=f'{label}: paper formula')
        ax.plot([s * s for s in sides], [p / 1e6 for p in points], 'o', color=color, markersize=4)
    ax.plot([], [], 'o', color='gray', label='measured (fvcore)')
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('tokens n')
    ax.set_ylabel('MMACs per block')
    ax.set_title(f'Cost of one block, d = {dim} channels (FFN ratio 4)')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


@dataclass
class ComplexityOptions:
    """What `cmtnet complexity` shows: which variants, at which input size, in which form, and the plot."""
    variant: List[str] = option(default_factory=lambda: list(VARIANT_ARGS), repeat=True, choices=list(VARIANT_ARGS),
                                help='variant to show (repeatable)')
    img_size: Optional[int] = option(None, type=image_side, help='input side for every variant',
                                     unset='each variant\'s native size')
    json: bool = option(False, flags=('--json',), help='print the table as JSON (unrounded numbers)')
    markdown: bool = option(False, flags=('--markdown',), help='print a GitHub markdown table')
    plot: Optional[str] = option(None, metavar='PATH', help='save a PNG of MACs per block against tokens n '
                                                            '(Transformer; CMT at k = 1, 2, 4, 8)')
    plot_dim: int = option(64, help='channels d of the plotted blocks')


def _run_complexity(options: ComplexityOptions) -> int:
    o = options
    rows = [row.as_dict() for v in o.variant for row in block_costs(v, o.img_size)]
    counter = f'fvcore {version("fvcore")}, multiply-accumulates (MACs), attention matmuls included'
    if o.plot:
        plot_cost_vs_tokens(o.plot, dim=o.plot_dim)
    if o.json:
        print(dump_json(dict(counter=counter, formula_leaves_out=WHAT_THE_FORMULA_LEAVES_OUT, rows=rows)))
        return 0
    print_report('MMACs of one block per stage: the paper\'s formula, our derivation from the block and fvcore\'s '
                 f'count ({counter}), beside a plain Transformer (ViT) block of the same width, heads and tokens.',
                 format_table(_COLUMNS, rows, markdown=o.markdown), WHAT_THE_FORMULA_LEAVES_OUT, plot=o.plot)
    return 0


add_parser = command_parser(
    'complexity', ComplexityOptions, _run_complexity,
    help='per-block cost: the paper\'s formulas beside measured MACs',
    description='For every stage of every CMT variant, the MACs of one block by the paper\'s formula, by '
                'our derivation and counted by fvcore, beside a Transformer block of the same width.')
