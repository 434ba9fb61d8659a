"""The training engine every task shares: a task gives its data, loss and metrics (`Task`); `fit` does
the rest (processes, optimisation, EMA, checkpoints and exact resume, NaN stop, progress, metrics).

The trainer's names (`Trainer`, `TrainingDiverged`, `fit`) are imported on first use, so that the parts a
task's options, data or evaluation need (`options`, `sampling`, `task`, and `dense`, the skeleton detection
and segmentation share) come without the training loop.
"""
from typing import Any

from .options import RunOptions
from .task import Task

__all__ = ['RunOptions', 'Task', 'Trainer', 'TrainingDiverged', 'fit']

_TRAINER_NAMES = ('Trainer', 'TrainingDiverged', 'fit')


def __getattr__(name: str) -> Any:
    if name in _TRAINER_NAMES:
        from . import trainer
        return getattr(trainer, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
