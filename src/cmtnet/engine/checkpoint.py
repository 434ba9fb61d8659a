"""Checkpoint files: atomic writes, the training state behind --resume, exported weights, models from files.

Every task's run writes the same files through this module:

- `last.pth`: the whole training state (model, optimizer, schedule, EMA, loss scaler, counters, sampler
  position, the RNG states of every process, the metrics so far), from which `--resume` continues exactly.
- `*.safetensors`: weights alone, in timm's key names, with metadata (model name, input size, class names)
  for `cmtnet eval` and `cmtnet predict`. timm loads them as any other checkpoint.

Every file is written to a temporary file, fsync'ed, then renamed over the old one, so that a crash at any
moment leaves the old file or the new one, never a torn one. Reading never unpickles arbitrary objects
(`torch.load(weights_only=True)`): a state holds only tensors and plain containers of numbers and strings.
"""
import argparse
import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Optional, Tuple, Union

import safetensors
import safetensors.torch
import timm
import torch
import torch.nn as nn

from ..errors import InputError
from ..models.released import classifier_classes, not_a_checkpoint, unwrap_state_dict

__all__ = [
    'atomic_write', 'checkpoint_info', 'create_model', 'export_weights', 'load_state', 'save_state',
]

PathLike = Union[str, Path]

# where our metadata sits in a .safetensors header (and in a .pth state), as one JSON string
_META_KEY = 'cmtnet'


def atomic_write(path: PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Write a file through `write(file)` so that it appears whole or not at all."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    try:
        with open(tmp, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    # make the rename itself durable
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_state(path: PathLike, state: Dict[str, Any]) -> None:
    """Save a training state (tensors and plain containers only) atomically."""
    atomic_write(path, lambda f: torch.save(state, f))


def _check_checkpoint_file(path: Path) -> None:
    """Raise InputError, naming the problem, if `path` is missing or cannot be a checkpoint at all."""
    if not path.is_file():
        raise InputError(f'checkpoint {path} does not exist')
    problem = not_a_checkpoint(path)
    if problem:
        raise InputError(f'cannot load {path}: {problem}')


def _torch_load(path: PathLike) -> Any:
    path = Path(path)
    _check_checkpoint_file(path)
    try:
        # training checkpoints (the authors', timm's) often hold their options as an argparse.Namespace,
        # a plain attribute bag that timm's loader allows too
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # unpickling errors come in several types, all mean the same to the user
        raise InputError(f'{path} is not a checkpoint that can be loaded safely (weights only): {e}') from e


def load_state(path: PathLike) -> Dict[str, Any]:
    """Load a training state saved by `save_state`."""
    state = _torch_load(path)
    if not isinstance(state, dict) or 'optimizer' not in state:
        raise InputError(f'{path} is not a training state written by cmtnet train')
    return state


def export_weights(path: PathLike, state_dict: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> None:
    """Export weights as .safetensors, with `meta` (model, img_size, class_names, ...) in the header."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    data = safetensors.torch.save(tensors, metadata={'format': 'pt', _META_KEY: json.dumps(meta)})
    atomic_write(path, lambda f: f.write(data))


def checkpoint_info(path: PathLike) -> Tuple[int, Dict[str, Any]]:
    """(number of classes of the classifier, our metadata or {}) of a weight file of any accepted kind:
    our .safetensors / .pth, or a released checkpoint (a dict whose 'model' is the state_dict)."""
    path = Path(path)
    if path.suffix == '.safetensors':
        _check_checkpoint_file(path)
        try:
            with safetensors.safe_open(str(path), framework='pt') as f:
                meta = json.loads((f.metadata() or {}).get(_META_KEY, '{}'))
                shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
        except safetensors.SafetensorError as e:
            raise InputError(f'{path} is not a readable .safetensors file: {e}') from e
    else:
        checkpoint = _torch_load(path)
        if not isinstance(checkpoint, dict):
            raise InputError(f'{path} holds a {type(checkpoint).__name__}, not a state_dict')
        meta = checkpoint.get('meta', {})
        shapes = {k: tuple(v.shape) for k, v in unwrap_state_dict(checkpoint).items() if isinstance(v, torch.Tensor)}
    return classifier_classes(shapes), meta


def create_model(name: str, checkpoint: Optional[PathLike] = None, **kwargs: Any) -> nn.Module:
    """`timm.create_model(name, **kwargs)`, with weights from `checkpoint` if given.

    The checkpoint loads through timm (`pretrained_cfg_overlay=dict(file=...)`) and the model's
    checkpoint filter, which resizes the position biases to the model's img_size. Its classifier is kept
    when `num_classes` matches it (the default) and reset otherwise.
    """
    if checkpoint is None:
        return timm.create_model(name, **kwargs)
    checkpoint_classes, _ = checkpoint_info(checkpoint)
    if kwargs.get('num_classes') is None:
        kwargs['num_classes'] = checkpoint_classes
    try:
        return timm.create_model(
            name, pretrained=True,
            pretrained_cfg_overlay=dict(file=str(checkpoint), num_classes=checkpoint_classes), **kwargs)
    except ValueError as e:  # the checkpoint filter names what does not fit
        raise InputError(f'cannot load {checkpoint} into {name}: {e}') from e
