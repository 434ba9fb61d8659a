"""Weight files without the training engine: a model from a checkpoint, a checkpoint's metadata, exported
weights, atomic writes and a safe `torch.load`.

`cmtnet eval`, `predict`, `export` and the detectors load models through this module, and the engine
writes its files through it, so that loading a model never imports the training code.

- `create_model(name, checkpoint)`: `timm.create_model` with weights from any accepted file: our
  `.safetensors` / `.pth`, or the authors' released checkpoint.
- `checkpoint_info(path)`: the classifier's number of classes and our metadata (model name, input size,
  class names, ...) of such a file, read without building a model.
- `export_weights(path, state_dict, meta)`: weights alone as `.safetensors`, in timm's key names, with the
  metadata in the header. timm loads them as any other checkpoint.
- `atomic_write(path, write)`: every file is written to a temporary file, fsync'ed, then renamed over the
  old one, so that a crash at any moment leaves the old file or the new one, never a torn one.
- `safe_torch_load(path)`: `torch.load(weights_only=True)` after checking that the file can be a checkpoint
  at all; it never unpickles arbitrary objects.
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

from .errors import InputError, did_you_mean_path
from .models.released import classifier_classes, not_a_checkpoint, unwrap_state_dict

__all__ = ['PathLike', 'atomic_write', 'checkpoint_info', 'create_model', 'export_weights', 'safe_torch_load',
           'task_checkpoint_meta']

PathLike = Union[str, Path]

# where our metadata sits in a .safetensors header, as one JSON string
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


def _check_checkpoint_file(path: Path) -> None:
    """Raise InputError, naming the problem, if `path` is missing or cannot be a checkpoint at all."""
    if not path.is_file():
        raise InputError(f'checkpoint {path} does not exist{did_you_mean_path(path)}')
    problem = not_a_checkpoint(path)
    if problem:
        raise InputError(f'cannot load {path}: {problem}')


def safe_torch_load(path: PathLike) -> Any:
    """The contents of a `torch.save` file, tensors and plain containers only, on the CPU; InputError for a
    missing file, a file that is no checkpoint, or one that holds other objects."""
    path = Path(path)
    _check_checkpoint_file(path)
    try:
        # training checkpoints (the authors', timm's) often hold their options as an argparse.Namespace,
        # a plain attribute bag that timm's loader allows too
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # unpickling errors come in several types, all mean the same to the user
        raise InputError(f'{path} is not a checkpoint that can be loaded safely (weights only): {e}') from e


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
        checkpoint = safe_torch_load(path)
        if not isinstance(checkpoint, dict):
            raise InputError(f'{path} holds a {type(checkpoint).__name__}, not a state_dict')
        meta = checkpoint.get('meta', {})
        shapes = {k: tuple(v.shape) for k, v in unwrap_state_dict(checkpoint).items() if isinstance(v, torch.Tensor)}
    return classifier_classes(shapes), meta


def task_checkpoint_meta(path: Optional[PathLike], task: str, command: str) -> Dict[str, Any]:
    """The metadata of a weight file that a `task` run (`command`, e.g. 'cmtnet detect train') exported
    (`model.safetensors`, `best.safetensors`, ...); InputError if none is given, or the file is not one such
    a run wrote."""
    if path is None:
        raise InputError(f'--checkpoint is required: a weight file written by `{command}`')
    path = Path(path)
    if path.suffix != '.safetensors':
        raise InputError(f'--checkpoint {path}: expected a .safetensors file a {task} run wrote '
                         f'(model.safetensors, best.safetensors, model_ema.safetensors)')
    _, meta = checkpoint_info(path)
    if meta.get('task') != task:
        raise InputError(f'--checkpoint {path} was not written by `{command}` (no {task} metadata)')
    return meta


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
