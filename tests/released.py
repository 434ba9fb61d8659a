"""Stand-in checkpoints in the authors' released format, for tests.

The released checkpoints cannot be downloaded in tests, so weights are generated from a seed by the rule
the parity fixture (data/cmt_ti_160.json) was made with (`make_state`, the package's `stand_in_state`), in
the released layout of any variant (`released_keys`).
"""
import json
import re
from pathlib import Path
from typing import List, Tuple

import torch

from cmtnet.models.released import convert_released_key, stand_in_state as make_state
from cmtnet.models.variants import VARIANT_ARGS

__all__ = ['load_fixture', 'make_input', 'make_state', 'released_keys']

DATA = Path(__file__).parent / 'data'


def load_fixture(name: str = 'cmt_ti_160.json') -> dict:
    return json.loads((DATA / name).read_text())


def make_input(shape: List[int], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def released_keys(variant: str, img_size: int = 0, num_classes: int = 1000) -> List[Tuple[str, List[int]]]:
    """The released state_dict layout ([name, shape] in order) of any variant and input size.

    The fixture's CMT-Ti key list is the template: its first block of each stage is repeated to the
    variant's depth, and shapes come from our model through the key conversion under test elsewhere.
    """
    import timm
    args = dict(VARIANT_ARGS[variant])
    if img_size:
        args['img_size'] = img_size
    model = timm.create_model(variant, num_classes=num_classes, **{k: v for k, v in args.items() if k == 'img_size'})
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    template = [name for name, _ in load_fixture()['keys']]
    names = []
    for name in template:
        m = re.fullmatch(r'blocks_([a-d])\.(\d+)\.(.+)', name)
        if not m:
            names.append(name)
        elif m[2] == '0' and not any(n.startswith(f'blocks_{m[1]}.') for n in names):
            first_block = [n[len(f'blocks_{m[1]}.0.'):] for n in template if n.startswith(f'blocks_{m[1]}.0.')]
            depth = args['depths']['abcd'.index(m[1])]
            names.extend(f'blocks_{m[1]}.{j}.{rest}' for j in range(depth) for rest in first_block)
    return [(n, shapes[convert_released_key(n)]) for n in names]
