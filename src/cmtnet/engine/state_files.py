"""The training state behind `--resume`: `last.pth`, written atomically and read back safely.

`last.pth` holds the whole training state that `Trainer.state_dict()` assembles (model, optimizer,
schedule, EMA, loss scaler, counters, sampler position, the RNG states of every process, the metrics so
far), from which `--resume` continues exactly. It is written through `cmtnet.checkpoints.atomic_write`
(a crash leaves the old file or the new one) and read with `weights_only=True`: a state holds only tensors
and plain containers of numbers and strings. The exported weights (`*.safetensors`) and models from
checkpoint files are `cmtnet.checkpoints`' business, which needs no part of the engine.
"""
from typing import Any, Dict

import torch

from ..checkpoints import PathLike, atomic_write, safe_torch_load
from ..errors import InputError

__all__ = ['load_state', 'save_state']


def save_state(path: PathLike, state: Dict[str, Any]) -> None:
    """Save a training state (tensors and plain containers only) atomically."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_state(path: PathLike) -> Dict[str, Any]:
    """Load a training state saved by `save_state`."""
    state = safe_torch_load(path)
    if not isinstance(state, dict) or 'optimizer' not in state:
        raise InputError(f'{path} is not a training state written by cmtnet train')
    return state
