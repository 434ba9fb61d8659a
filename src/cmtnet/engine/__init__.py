"""The training engine every task shares: a task gives its data, loss and metrics (`Task`); `fit` does
the rest (processes, optimisation, EMA, checkpoints and exact resume, NaN stop, progress, metrics)."""
from .options import RunOptions
from .task import Task
from .trainer import Trainer, TrainingDiverged, fit

__all__ = ['RunOptions', 'Task', 'Trainer', 'TrainingDiverged', 'fit']
