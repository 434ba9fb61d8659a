"""The CMT family's fixed facts: the released variants' architectures and the input-size rule.

Every CMT downsamples by 32 (a stride-2 stem and four stride-2 patch aggregations), so an input side must
be a positive multiple of 32; each released variant has a native input size that its position biases
were built for. Both rules are written here once, for the model and for every tool that picks a size; so
are the variants' published figures (`PUBLISHED`: the released code's params, MACs and top-1, the paper's).
"""
from dataclasses import dataclass
from typing import Any, Dict, Tuple, Union

from ..errors import InputError, did_you_mean

__all__ = ['NET_STRIDE', 'PUBLISHED', 'Published', 'VARIANT_ARGS', 'check_img_size', 'native_img_size',
           'nearest_img_sizes']

# total downsampling of the network: the stem (2) and four patch aggregations (2 each)
NET_STRIDE = 32

# per variant: the native input size and the architecture arguments of the released models
VARIANT_ARGS: Dict[str, Dict[str, Any]] = {
    'cmt_ti': dict(img_size=160, stem_chs=16, embed_dims=(46, 92, 184, 368), depths=(2, 2, 10, 2),
                   mlp_ratio=3.6, drop_rate=0.1),
    'cmt_xs': dict(img_size=192, stem_chs=16, embed_dims=(52, 104, 208, 416), depths=(3, 3, 12, 3),
                   mlp_ratio=3.77, drop_rate=0.1),
    'cmt_s': dict(img_size=224, stem_chs=32, embed_dims=(64, 128, 256, 512), depths=(3, 3, 16, 3),
                  mlp_ratio=4., drop_rate=0.1),
    'cmt_b': dict(img_size=256, stem_chs=38, embed_dims=(76, 152, 304, 608), depths=(4, 4, 20, 4),
                  mlp_ratio=4., drop_rate=0.3),
}


def native_img_size(variant: str) -> int:
    """The input side a released variant was built and trained for (160, 192, 224 or 256)."""
    if variant not in VARIANT_ARGS:
        raise InputError(f'unknown CMT variant {variant!r}; expected one of {", ".join(VARIANT_ARGS)}'
                         f'{did_you_mean(variant, VARIANT_ARGS)}')
    return VARIANT_ARGS[variant]['img_size']


def check_img_size(img_size: Union[int, Tuple[int, int]], name: str = 'img_size') -> Tuple[int, int]:
    """`img_size` as (height, width); an InputError (a ValueError) naming `name` if a side is not a positive
    multiple of 32."""
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(size) != 2 or any(int(s) != s or s <= 0 or s % NET_STRIDE for s in size):
        shown = img_size if isinstance(img_size, int) else tuple(img_size)
        near = ''
        if isinstance(img_size, int):
            near = f' (the nearest: {" or ".join(map(str, nearest_img_sizes(img_size)))})'
        raise InputError(f'{name} must be a positive multiple of {NET_STRIDE}, got {shown}{near}')
    return int(size[0]), int(size[1])


def nearest_img_sizes(side: int) -> Tuple[int, ...]:
    """The valid input sides around `side`: the multiples of 32 just below and above it (100: 96, 128), or
    32 alone for a side below it."""
    below = side // NET_STRIDE * NET_STRIDE
    return (below, below + NET_STRIDE) if below > 0 else (NET_STRIDE,)


@dataclass(frozen=True)
class Published:
    """A released variant's published figures, all at its native input size."""
    released_params: int  # the authors' released code, exact
    released_gmacs: float  # the authors' released code, counted by fvcore, 3 decimals
    released_top1: float  # ImageNet top-1 (%) of the released checkpoint
    paper_params_m: float  # the CMT paper, millions
    paper_gflops: float  # the CMT paper; its "FLOPs" are multiply-accumulates, as usual
    paper_top1: str  # the CMT paper, ImageNet top-1 (%): CMT-Ti's is given as 79.0-79.2


# the published figures of the released variants, written once for every tool that shows them
PUBLISHED: Dict[str, Published] = {
    'cmt_ti': Published(9_492_426, 0.652, 79.0, 9.5, 0.6, '79.0-79.2'),
    'cmt_xs': Published(15_247_208, 1.575, 81.8, 15.2, 1.5, '81.8'),
    'cmt_s': Published(26_256_160, 4.087, 83.5, 25.1, 4.0, '83.5'),
    'cmt_b': Published(45_715_076, 9.425, 84.5, 45.7, 9.3, '84.5'),
}
