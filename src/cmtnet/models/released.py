"""The authors' released checkpoints, and checkpoint files in general, as the model meets them.

The released files (`cmt_tiny.pth`, `cmt_xs.pth`, `cmt_small.pth`, `cmt_base.pth`) were saved by the
authors' train.py: a dict whose `model` entry is the state_dict in their key names (`relative_pos_a`,
`stem_conv1`, `blocks_a.0.attn.sr.0`, `_fc`, `head`, ...). This module maps those names to ours, infers the
token grid a checkpoint's position biases were built for and resizes them to the model's, tells a file
that is no checkpoint at all from its first bytes, and refuses a checkpoint that does not fit the model.
`checkpoint_filter_fn` is what timm's loader calls (`pretrained=True`).
"""
import math
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .pos_bias import checkpoint_grid, resize_rel_pos_bias
from .variants import VARIANT_ARGS

__all__ = ['checkpoint_filter_fn', 'classifier_classes', 'convert_released_key', 'not_a_checkpoint',
           'stand_in_state', 'unwrap_state_dict']

# released (authors') name -> our name, for the parts below a block prefix
_RELEASED_BLOCK_KEYS = (
    ('proj.', 'lpu.conv.'),
    ('attn.sr.0.', 'attn.sr.'),
    ('attn.sr.1.', 'attn.sr_norm.'),
    ('mlp.conv1.0.', 'mlp.fc1.'),
    ('mlp.conv1.2.', 'mlp.norm1.'),
    ('mlp.proj.', 'mlp.dwconv.'),
    ('mlp.proj_bn.', 'mlp.norm2.'),
    ('mlp.conv2.0.', 'mlp.fc2.'),
    ('mlp.conv2.1.', 'mlp.norm3.'),
)
# the head: the released 1x1 conv, its BatchNorm and the classifier, and ours
_RELEASED_HEAD_KEYS = (('_fc.', 'final_conv.conv.'), ('_bn.', 'final_conv.bn.'), ('head.', 'head.fc.'))
_CLASSIFIER_WEIGHT = 'head.fc.weight'
_RELEASED_STAGE_LETTERS = 'abcd'
_VARIANT_ARCHS = {n: (a['stem_chs'], a['embed_dims'], a['depths']) for n, a in VARIANT_ARGS.items()}


def convert_released_key(key: str) -> str:
    """Map one key of the authors' released state_dict to the model's naming."""
    m = re.fullmatch(r'relative_pos_([a-d])', key)
    if m:
        return f'stages.{_RELEASED_STAGE_LETTERS.index(m[1])}.rel_pos_bias'
    m = re.fullmatch(r'stem_(conv|norm)(\d)\.(.+)', key)
    if m:
        return f'stem.{m[1]}{m[2]}.{m[3]}'
    m = re.fullmatch(r'patch_embed_([a-d])\.(proj|norm)\.(.+)', key)
    if m:
        return f'stages.{_RELEASED_STAGE_LETTERS.index(m[1])}.downsample.{"conv" if m[2] == "proj" else "norm"}.{m[3]}'
    m = re.fullmatch(r'blocks_([a-d])\.(\d+)\.(.+)', key)
    if m:
        rest = m[3]
        for old, new in _RELEASED_BLOCK_KEYS:
            if rest.startswith(old):
                rest = new + rest[len(old):]
                break
        return f'stages.{_RELEASED_STAGE_LETTERS.index(m[1])}.blocks.{m[2]}.{rest}'
    for old, new in _RELEASED_HEAD_KEYS:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def classifier_classes(shapes: Dict[str, Sequence[int]]) -> int:
    """The number of classes of the classifier in a state_dict's entry shapes (ours or released, with or
    without a `module.` prefix); 0 when it has none."""
    for key in (_CLASSIFIER_WEIGHT, 'module.' + _CLASSIFIER_WEIGHT, _RELEASED_HEAD_KEYS[-1][0] + 'weight'):
        if key in shapes:
            return int(shapes[key][0])
    return 0


def _architecture(state_dict: Dict[str, torch.Tensor]) -> Tuple[int, Tuple[int, ...], Tuple[int, ...]]:
    """(stem channels, stage widths, stage depths) of a state_dict in the model's naming."""
    stem = state_dict['stem.conv1.weight'].shape[0] if 'stem.conv1.weight' in state_dict else 0
    widths, depths = [], []
    while f'stages.{len(widths)}.downsample.conv.weight' in state_dict:
        i = len(widths)
        widths.append(state_dict[f'stages.{i}.downsample.conv.weight'].shape[0])
        blocks = {int(m[1]) for k in state_dict for m in [re.match(rf'stages\.{i}\.blocks\.(\d+)\.', k)] if m}
        depths.append(max(blocks) + 1 if blocks else 0)
    return stem, tuple(widths), tuple(depths)


def _describe(arch: Tuple[int, Tuple[int, ...], Tuple[int, ...]]) -> str:
    name = next((n for n, a in _VARIANT_ARCHS.items() if a == arch), 'a custom CMT')
    return f'{name} (stem {arch[0]}, widths {arch[1]}, depths {arch[2]})'


def unwrap_state_dict(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    """The state_dict inside a training checkpoint (EMA weights first, as timm's loader picks them)."""
    for key in ('state_dict_ema', 'model_ema', 'state_dict', 'model'):
        if isinstance(checkpoint.get(key, None), dict):
            return checkpoint[key]
    return checkpoint


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Convert a checkpoint to a CMT model: the authors' released format or our own (timm-style keys).

    Accepts a bare state_dict or a training checkpoint dict (`model`, `model_ema`, `state_dict`), renames
    released keys, resizes the position biases to the model's grids, and refuses, with a ValueError that
    names the problem, a checkpoint of another variant, with missing or unknown entries, or with
    mismatched shapes. The classifier and the first conv are left to timm to adapt (num_classes,
    in_chans).
    """
    state_dict = unwrap_state_dict(state_dict)
    non_tensors = sorted(k for k, v in state_dict.items() if not isinstance(v, torch.Tensor))
    if non_tensors:
        raise ValueError(f'checkpoint entries are not tensors: {non_tensors[:5]}')
    state_dict = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state_dict.items()}
    if 'stem_conv1.weight' in state_dict:
        state_dict = {convert_released_key(k): v for k, v in state_dict.items()}

    model_sd = model.state_dict()
    ckpt_arch, model_arch = _architecture(state_dict), _architecture(model_sd)
    if ckpt_arch != model_arch:
        raise ValueError(
            f'checkpoint holds {_describe(ckpt_arch)}, but the model is {_describe(model_arch)}; '
            f'create the model that matches the checkpoint')

    out, unexpected, mismatched = {}, [], []
    for k, v in state_dict.items():
        if k.startswith('head.fc.'):
            out[k] = v  # timm drops or keeps the classifier by num_classes
            continue
        if k not in model_sd:
            unexpected.append(k)
            continue
        target = model_sd[k]
        if k.endswith('rel_pos_bias') and v.shape != target.shape and v.shape[0] == target.shape[0]:
            stage = model.stages[int(k.split('.')[1])]
            old_grid = checkpoint_grid(v.shape[1], v.shape[2], stage.sr_ratio, stage.grid_size)
            v = resize_rel_pos_bias(v, old_grid, stage.grid_size, stage.sr_ratio)
        elif k == 'stem.conv1.weight' and v.shape[0] == target.shape[0] and v.shape[2:] == target.shape[2:]:
            pass  # timm adapts the input channels (in_chans)
        elif v.shape != target.shape:
            mismatched.append(f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(target.shape)}')
        out[k] = v
    missing = [k for k in model_sd if k not in out and not k.startswith('head.fc.')]
    problems = []
    if missing:
        problems.append(f'{len(missing)} missing entries (e.g. {missing[:3]})')
    if unexpected:
        problems.append(f'{len(unexpected)} unknown entries (e.g. {unexpected[:3]})')
    if mismatched:
        problems.append(f'{len(mismatched)} shape mismatches (e.g. {mismatched[:3]})')
    if problems:
        raise ValueError(f'checkpoint does not fit {_describe(model_arch)}: ' + '; '.join(problems))
    return out


def not_a_checkpoint(path: str) -> Optional[str]:
    """Why the file at `path` cannot be a checkpoint, from its first bytes; None if it may be one."""
    try:
        with open(path, 'rb') as f:
            head = f.read(9)
            size = f.seek(0, 2)
    except OSError:
        return None  # the loader's own error (e.g. no such file) says it best
    if not head:
        return 'the file is empty'
    if head.startswith(b'PK\x03\x04') or head[0] == 0x80:  # torch.save: a zip archive, or a legacy pickle
        return None
    if len(head) == 9 and head[8:] == b'{' and int.from_bytes(head[:8], 'little') <= size - 8:  # safetensors
        return None
    return 'it is not a checkpoint (neither a torch.save file nor a .safetensors file)'


def stand_in_state(keys: List[Tuple[str, Sequence[int]]], seed: int) -> Dict[str, torch.Tensor]:
    """A deterministic state_dict with the entries `keys` ([name, shape] in order), for tests and checks
    where the released files cannot be had.

    The rule the parity fixture (tests/data/cmt_ti_160.json) was made with: one torch.Generator seeded with
    `seed`; for each entry in order, `num_batches_tracked` is 0 (no draw), everything else a standard-normal
    draw, scaled by the kind of entry so that the network's activations stay in a realistic range.
    """
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in keys:
        if name.endswith('num_batches_tracked'):
            state[name] = torch.tensor(0, dtype=torch.long)
            continue
        t = torch.randn(list(shape), generator=g, dtype=torch.float32)
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
