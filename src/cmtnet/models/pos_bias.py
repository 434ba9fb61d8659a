"""The attention position bias B on token grids of any size.

B has shape (heads, queries, keys): one free value per pair of a query on the stage's H x W token grid
and a key on that grid shrunk by the key/value reduction ratio k. A model built for one input size runs at
another once B is resized over both grids; a checkpoint's B tells its grid only through its counts of
queries and keys, from which `checkpoint_grid` infers it. A model that resizes at forward time
(`dynamic_img_size`) goes through `cached_resize_rel_pos_bias`, which in eager inference reuses the resize
for a grid seen recently (see grid_cache.py).
"""
import math
from typing import Tuple

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function

from .grid_cache import GridCache

__all__ = ['cached_resize_rel_pos_bias', 'checkpoint_grid', 'resize_rel_pos_bias']


@register_notrace_function
def resize_rel_pos_bias(
        bias: torch.Tensor,
        old_grid: Tuple[int, int],
        new_grid: Tuple[int, int],
        sr_ratio: int,
) -> torch.Tensor:
    """Resize a position bias of shape (heads, queries, keys) from one token grid to another.

    The query axis lives on the `old_grid` token grid and the key axis on that grid shrunk by `sr_ratio`;
    both are interpolated (bicubic) to the grids of `new_grid`.
    """
    if old_grid[0] == new_grid[0] and old_grid[1] == new_grid[1]:
        return bias
    num_heads = bias.shape[0]
    old_kv = (old_grid[0] // sr_ratio, old_grid[1] // sr_ratio)
    new_kv = (new_grid[0] // sr_ratio, new_grid[1] // sr_ratio)
    orig_dtype = bias.dtype
    b = bias.float().reshape(num_heads, old_grid[0] * old_grid[1], old_kv[0], old_kv[1])
    b = F.interpolate(b, size=new_kv, mode='bicubic', align_corners=False)  # key grid
    b = b.reshape(num_heads, old_grid[0], old_grid[1], new_kv[0] * new_kv[1]).permute(0, 3, 1, 2)
    b = F.interpolate(b, size=new_grid, mode='bicubic', align_corners=False)  # query grid
    return b.flatten(2).transpose(1, 2).contiguous().to(orig_dtype)


@register_notrace_function
@torch.jit.unused
def cached_resize_rel_pos_bias(
        cache: GridCache,
        bias: torch.Tensor,
        old_grid: Tuple[int, int],
        new_grid: Tuple[int, int],
        sr_ratio: int,
) -> torch.Tensor:
    """`resize_rel_pos_bias` through `cache`: in eager inference a grid seen recently is not resized again
    (the cache steps aside where the resize must stay in the graph: training, scripting, tracing, export)."""
    if old_grid[0] == new_grid[0] and old_grid[1] == new_grid[1]:
        return bias
    return cache.get((tuple(old_grid), tuple(new_grid), sr_ratio), (bias,),
                     lambda: resize_rel_pos_bias(bias, old_grid, new_grid, sr_ratio))


def checkpoint_grid(num_queries: int, num_keys: int, sr_ratio: int, like: Tuple[int, int]) -> Tuple[int, int]:
    """The token grid a checkpoint's position bias was built for, from its query and key counts.

    Among the grids that fit both counts, take the one closest in aspect ratio to `like`.
    """
    candidates = [
        (h, num_queries // h) for h in range(1, num_queries + 1)
        if num_queries % h == 0 and (h // sr_ratio) * (num_queries // h // sr_ratio) == num_keys
    ]
    if not candidates:
        raise ValueError(
            f'position bias with {num_queries} queries and {num_keys} keys fits no token grid '
            f'with key/value reduction {sr_ratio}')
    aspect = math.log(like[0] / like[1])
    return min(candidates, key=lambda g: abs(math.log(g[0] / g[1]) - aspect))
