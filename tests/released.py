"""Stand-in checkpoints in the authors' released format, for tests.

The released checkpoints cannot be downloaded in tests, so weights are generated from a seed by the rule
the parity fixture (data/cmt_ti_160.json) was made with: one torch.Generator, the state_dict entries in
the released order, each drawn from a standard normal and then scaled by the kind of entry.
"""
import json
import math
import re
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from cmtnet.cmt import VARIANT_ARGS, _convert_released_key

DATA = Path(__file__).parent / 'data'


def load_fixture(name: str = 'cmt_ti_160.json') -> dict:
    return json.loads((DATA / name).read_text())


def make_state(keys: List[Tuple[str, List[int]]], seed: int) -> Dict[str, torch.Tensor]:
    """Fill each [name, shape] entry, in order, from one generator seeded with `seed`."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in keys:
        if name.endswith('num_batches_tracked'):
            state[name] = torch.tensor(0, dtype=torch.long)
            continue
        t = torch.randn(shape, generator=g, dtype=torch.float32)
        if name.endswith('running_var'):
            t = t.abs() * 0.5 + 0.5
        elif name.endswith('running_mean') or name.endswith('.bias'):
            t = t * 0.1
        elif name.endswith('.weight') and len(shape) == 1:
            t = 1.0 + 0.1 * t
        elif name.endswith('.weight'):
            t = t / math.sqrt(math.prod(shape[1:]))
        state[name] = t
    return state


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
    return [(n, shapes[_convert_released_key(n)]) for n in names]
