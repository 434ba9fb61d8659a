"""Optimisation from timm's components: the learning rate rule, optimizer, schedule, EMA and loss scaler.

The learning rate is `lr`, or else `lr_base` x global batch / `lr_base_size` (the global batch is the
per-process batch x processes x accumulation steps). The schedule never rises above that base rate: where
`min_lr` (or `warmup_lr`) is higher, as the scaled rate of a small batch can be, the schedule takes the base
rate instead, and the run says so (`learning_rate_warning`). Weight decay never applies to norms and biases, nor
to the parameters the task exempts. Any timm optimizer and schedule can be named; the schedule steps per
update unless `step_on_epochs`.

The warm-up fits the run unless it is given: `warmup_epochs=None` (the default) is timm's train.py default
of 5 epochs, but at most a tenth of `epochs`, so that it fits a short run on one's own data (`--epochs 10`
warms up for 1 epoch). The released recipe (`--recipe`) sets its own 20 warm-up and 10 cool-down epochs.
"""
import math
from typing import Iterable, Optional, Tuple

import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2, list_optimizers, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler
from timm.utils import ModelEmaV3, NativeScaler

from ..errors import InputError
from .options import RunOptions

__all__ = ['AUTO_WARMUP_EPOCHS', 'check_optimisation', 'create_ema', 'create_optimizer', 'create_scaler',
           'create_scheduler', 'learning_rate', 'learning_rate_warning', 'schedule_stretch', 'warmup_epochs']

# the automatic warm-up: timm's train.py default, capped at this fraction of a short run
AUTO_WARMUP_EPOCHS = 5
AUTO_WARMUP_FRACTION = 0.1


def warmup_epochs(o: RunOptions) -> float:
    """The run's warm-up in epochs: `warmup_epochs` as given, or else (None) the automatic one,
    min(5, epochs / 10)."""
    if o.warmup_epochs is not None:
        return o.warmup_epochs
    return min(AUTO_WARMUP_EPOCHS, AUTO_WARMUP_FRACTION * o.epochs)


def check_optimisation(o: RunOptions) -> None:
    """Refuse inconsistent optimisation options before any work starts."""
    for name in ('epochs', 'batch_size', 'accum_steps', 'lr_base_size', 'log_interval'):
        if getattr(o, name) < 1:
            raise InputError(f'--{name.replace("_", "-")} must be at least 1, got {getattr(o, name)}')
    if o.min_updates < 0:
        raise InputError(f'--min-updates must not be negative, got {o.min_updates}')
    if o.warmup_epochs is not None and not 0 <= o.warmup_epochs < o.epochs:
        raise InputError(f'--warmup-epochs ({o.warmup_epochs}) must be below --epochs ({o.epochs}); '
                         f'leave it out for an automatic warm-up that fits the run')
    if o.opt.lower() not in list_optimizers():
        raise InputError(f'unknown optimizer {o.opt!r}; timm knows {", ".join(list_optimizers())}')


def learning_rate(o: RunOptions, global_batch: int) -> float:
    return o.lr if o.lr is not None else o.lr_base * global_batch / o.lr_base_size


def learning_rate_warning(o: RunOptions, lr: float, global_batch: int) -> Optional[str]:
    """What a run whose base rate `lr` is below `--min-lr` says: both values, the rule that gave the rate, and
    that the schedule then stays at the base rate; None for a rate at or above `--min-lr`."""
    if lr >= o.min_lr:
        return None
    rule = ('--lr' if o.lr is not None else
            f'--lr-base {o.lr_base:g} x global batch {global_batch} / --lr-base-size {o.lr_base_size}')
    return (f'the learning rate {lr:.3g} ({rule}) is below --min-lr {o.min_lr:g}: the schedule stays at '
            f'{lr:.3g} instead of rising to {o.min_lr:g}. Pass --lr, or an --lr-base-size near the global batch, '
            f'for a larger rate')


def create_optimizer(model: nn.Module, o: RunOptions, lr: float, no_weight_decay: Iterable[str]) -> torch.optim.Optimizer:
    groups = param_groups_weight_decay(model, o.weight_decay, no_weight_decay_list=tuple(no_weight_decay))
    return create_optimizer_v2(groups, opt=o.opt, lr=lr, weight_decay=o.weight_decay)


def schedule_stretch(o: RunOptions, updates_per_epoch: int) -> int:
    """The whole factor the schedule's epochs are stretched by so that it lasts `min_updates` (1: none)."""
    if not o.min_updates:
        return 1
    return max(1, math.ceil(o.min_updates / (o.epochs * updates_per_epoch)))


def create_scheduler(optimizer: torch.optim.Optimizer, o: RunOptions, updates_per_epoch: int) -> Tuple[Scheduler, int]:
    """The schedule and the total number of epochs (cool-down included). A warm-up given in updates
    (`warmup_updates`, as detection schedules count it) takes the place of `warmup_epochs`. With
    `min_updates`, a schedule that would be shorter is stretched (`schedule_stretch`). `min_lr` and `warmup_lr`
    are capped at the optimizer's base rate, so that the schedule never rises above it."""
    base = max(group['lr'] for group in optimizer.param_groups)
    stretch = schedule_stretch(o, updates_per_epoch)
    warmup = o.warmup_updates / updates_per_epoch if o.warmup_updates else warmup_epochs(o) * stretch
    return create_scheduler_v2(
        optimizer, o.sched, num_epochs=o.epochs * stretch, decay_milestones=[m * stretch for m in o.decay_milestones],
        decay_rate=o.decay_rate, warmup_epochs=warmup, warmup_lr=min(o.warmup_lr, base), min_lr=min(o.min_lr, base),
        cooldown_epochs=o.cooldown_epochs * stretch, step_on_epochs=o.step_on_epochs,
        updates_per_epoch=updates_per_epoch)


def create_ema(model: nn.Module, o: RunOptions) -> Optional[ModelEmaV3]:
    return ModelEmaV3(model, decay=o.model_ema_decay) if o.model_ema else None


def create_scaler(amp: Optional[torch.dtype], device: torch.device) -> Optional[NativeScaler]:
    """A loss scaler only for float16: bfloat16 has float32's range."""
    return NativeScaler(device=device.type) if amp == torch.float16 else None
