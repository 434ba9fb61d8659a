"""What one block costs, on paper: the CMT paper's per-block formulas and our derivation from the blocks.

The paper compares a Transformer block of n tokens and d channels (FFN ratio 4),

    FLOPs(Transformer) = 12 n d^2 + 2 n^2 d,

with a CMT block whose keys and values are shrunk by a reduction ratio k,

    FLOPs(CMT) = 10 n d^2 (1 + 0.2 / k^2) + 2 n^2 d / k^2 + 45 n d,

to argue that CMT is cheaper, and more so at high resolution (large n). The paper's "FLOPs" are
multiply-accumulates (MACs), as in most vision papers.

`cmt_block_terms` derives the cost again, one term per layer of the block as it is built in
models/cmt.py (any FFN ratio r, hidden width int(r d)), and says for each term whether the paper's formula
has it. The paper's terms add up to its formula exactly when r = 4: the projections (Q and output n d^2
each, K and V n d^2 / k^2 each), the FFN's two 1x1 convs (2 r n d^2), attention (2 n^2 d / k^2), the LPU
(9 n d) and the FFN's depthwise conv (9 r n d = 36 n d). The formula leaves out the stride-k depthwise
conv that shrinks the keys and values (n d MACs when k > 1) and the norms (two LayerNorms, four
BatchNorms), which we count as fvcore does (analysis/macs.py): 5 per element for a LayerNorm and
2 for a BatchNorm at inference. Biases, activations, softmax, the position bias and the residual sums
are elementwise and counted by neither.
"""
from dataclasses import dataclass
from typing import List

from ..errors import InputError

__all__ = [
    'CostTerm', 'cmt_block_terms', 'paper_cmt_block_macs', 'paper_transformer_block_macs', 'total_macs',
    'transformer_block_terms',
]

# fvcore's per-element counts of norms (at inference), the convention our measured MACs follow
LAYER_NORM_MACS_PER_ELEMENT = 5
BATCH_NORM_MACS_PER_ELEMENT = 2


@dataclass(frozen=True)
class CostTerm:
    """One layer's multiply-accumulates in a block, and whether the paper's formula counts it."""
    name: str
    macs: int
    in_paper: bool


def _check_shape(n: int, d: int, k: int = 1, mlp_ratio: float = 4.) -> None:
    for name, value in (('n (tokens)', n), ('d (channels)', d), ('k (reduction ratio)', k)):
        if int(value) != value or value < 1:
            raise InputError(f'{name} must be a positive integer, got {value}')
    if n % (k * k):
        raise InputError(f'n (tokens) must be a multiple of k^2 = {k * k} for reduction ratio {k}, got {n}')
    if mlp_ratio <= 0:
        raise InputError(f'mlp_ratio must be positive, got {mlp_ratio}')


def paper_transformer_block_macs(n: int, d: int) -> float:
    """The paper's cost of a Transformer block: 12 n d^2 + 2 n^2 d (FFN ratio 4)."""
    _check_shape(n, d)
    return 12 * n * d ** 2 + 2 * n ** 2 * d


def paper_cmt_block_macs(n: int, d: int, k: int) -> float:
    """The paper's cost of a CMT block: 10 n d^2 (1 + 0.2 / k^2) + 2 n^2 d / k^2 + 45 n d (FFN ratio 4).

    Returned exactly as the formula gives it (a float: 0.2 / k^2 is one).
    """
    _check_shape(n, d, k)
    return 10 * n * d ** 2 * (1 + 0.2 / k ** 2) + 2 * n ** 2 * d / k ** 2 + 45 * n * d


def cmt_block_terms(n: int, d: int, k: int, mlp_ratio: float = 4.) -> List[CostTerm]:
    """The MACs of a CMT block (models/cmt.py, `CMTBlock`) layer by layer, for n tokens of d channels.

    Keys and values come from n / k^2 tokens; the FFN's hidden width is int(mlp_ratio * d).
    """
    _check_shape(n, d, k, mlp_ratio)
    n_kv = n // (k * k)
    hidden = int(d * mlp_ratio)
    reduced = k > 1
    return [
        CostTerm('LPU depthwise 3x3', 9 * n * d, True),
        CostTerm('LayerNorm before attention', LAYER_NORM_MACS_PER_ELEMENT * n * d, False),
        CostTerm('Q projection', n * d * d, True),
        CostTerm('K/V reduction depthwise kxk', n_kv * d * k * k if reduced else 0, False),
        CostTerm('K/V reduction BatchNorm', BATCH_NORM_MACS_PER_ELEMENT * n_kv * d if reduced else 0, False),
        CostTerm('K and V projections', 2 * n_kv * d * d, True),
        CostTerm('attention Q K^T and (attention) V', 2 * n * n_kv * d, True),
        CostTerm('output projection', n * d * d, True),
        CostTerm('LayerNorm before FFN', LAYER_NORM_MACS_PER_ELEMENT * n * d, False),
        CostTerm('FFN 1x1 expansion', n * d * hidden, True),
        CostTerm('FFN depthwise 3x3', 9 * n * hidden, True),
        CostTerm('FFN BatchNorms (hidden, two)', 2 * BATCH_NORM_MACS_PER_ELEMENT * n * hidden, False),
        CostTerm('FFN 1x1 projection', n * hidden * d, True),
        CostTerm('FFN BatchNorm (output)', BATCH_NORM_MACS_PER_ELEMENT * n * d, False),
    ]


def transformer_block_terms(n: int, d: int, mlp_ratio: float = 4.) -> List[CostTerm]:
    """The MACs of a pre-norm Transformer block (timm's ViT `Block`) layer by layer: n tokens, d channels."""
    _check_shape(n, d, 1, mlp_ratio)
    hidden = int(d * mlp_ratio)
    return [
        CostTerm('LayerNorm before attention', LAYER_NORM_MACS_PER_ELEMENT * n * d, False),
        CostTerm('QKV projection', 3 * n * d * d, True),
        CostTerm('attention Q K^T and (attention) V', 2 * n * n * d, True),
        CostTerm('output projection', n * d * d, True),
        CostTerm('LayerNorm before FFN', LAYER_NORM_MACS_PER_ELEMENT * n * d, False),
        CostTerm('FFN linear expansion', n * d * hidden, True),
        CostTerm('FFN linear projection', n * hidden * d, True),
    ]


def total_macs(terms: List[CostTerm], paper_only: bool = False) -> int:
    """The sum of `terms`, or of those the paper's formula counts."""
    return sum(t.macs for t in terms if t.in_paper or not paper_only)
