"""The task interface: what a training task gives the engine, and nothing more.

A task knows its data, its model, its loss and its metrics. The engine (`Trainer`) owns everything else,
the same for every task: processes and devices, seeding, the optimizer and schedule from timm, gradient
accumulation and clipping, autocast and loss scaling, EMA, the progress bar, atomic checkpoints and exact
resume, the NaN stop, metrics.csv, curves.png and the exported weights.

    class MyTask(Task):
        best_metric = 'top1'                          # picks best.safetensors; higher is better
        def setup(self, processes): ...               # read and check the data, build self.train_loader
        def build_model(self): ...                    # the model, built under the run's seed
        def training_step(self, model, batch): ...    # a loss, or a dict of losses (summed to train)
        def evaluate(self, model): ...                # a dict of metrics, e.g. {'top1': 91.2, 'loss': 0.3}

The train loader's sampler must offer `set_epoch(epoch, start)` (`engine.sampling.ResumableSampler`
does): the engine starts an epoch at a batch other than the first when it resumes in the middle of one.
The loader must leave the global RNGs alone (give the DataLoader its own `generator`): their states are
saved in last.pth (`Trainer.state_dict()`), and a draw at the start of an epoch would not repeat on
resuming. `evaluate` runs in every process, each on its shard, and returns the metrics summed over them.
"""
from abc import ABC, abstractmethod
from typing import Any, Dict, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..runtime import Processes

__all__ = ['Losses', 'Task']

Losses = Union[torch.Tensor, Dict[str, torch.Tensor]]


class Task(ABC):
    """A training task for the engine; see the module docstring."""
    #: the metric of `evaluate` that picks best.safetensors (higher is better)
    best_metric: str
    #: the metrics of `evaluate` that are also measured and reported for the EMA weights
    ema_metrics: Tuple[str, ...] = ()
    #: metrics.csv names the metrics of `evaluate` with this prefix (`val_top1`)
    val_prefix: str = 'val_'
    #: curves.png: one panel per entry, title -> [(metrics.csv column, label), ...]
    curves: Dict[str, Sequence[Tuple[str, str]]] = {'loss': [('train_loss', 'train')]}
    #: set by `setup`
    train_loader: DataLoader

    @abstractmethod
    def setup(self, processes: Processes) -> None:
        """Read and check the data (errors before any model is built), and build `train_loader`."""

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The model to train, on the CPU; the engine moves, wraps and seeds around it."""

    @abstractmethod
    def training_step(self, model: nn.Module, batch: Any) -> Losses:
        """The loss of one batch (under the engine's autocast); a dict of losses is summed to train."""

    @abstractmethod
    def evaluate(self, model: nn.Module) -> Dict[str, float]:
        """Metrics of `model` on the validation data, summed over the processes."""

    def batch_size(self, batch: Any) -> int:
        """Images in a batch (for the loss average and images per second)."""
        return len(batch[0])

    def skipped(self, batch: Any) -> int:
        """Unreadable images a batch stood in for (counted and reported per epoch)."""
        return 0

    def no_weight_decay(self, model: nn.Module) -> Set[str]:
        """Parameter names exempt from weight decay besides norms and biases (which never decay)."""
        return set()

    def meta(self) -> Dict[str, Any]:
        """What evaluation and prediction need to know about the weights, stored with every export."""
        return {}

    def describe(self) -> str:
        """The run's first line: what is trained on what."""
        return type(self).__name__

    def format_metrics(self, row: Dict[str, Any]) -> str:
        """An epoch's figures for its report line (the engine adds lr, speed and time)."""
        return '  '.join(f'{k} {v:.4g}' for k, v in row.items() if k.startswith(('train_', 'val_', 'ema_')))

    def summary(self, last: Dict[str, Any], best: float, best_epoch: int) -> str:
        """The closing line's result, from the last epoch's row and the best `best_metric`."""
        value = last[self.val_prefix + self.best_metric]
        return f'{self.best_metric} {value:.4g} (best {best:.4g} at epoch {best_epoch})'
