"""The training run every task shares: `fit(task, options)`.

The engine builds the model the task describes (seeded alike in every process), wraps it for the run
(channels-last, SyncBatchNorm, DistributedDataParallel, torch.compile), trains it with gradient
accumulation, clipping, autocast and loss scaling, keeps an EMA, evaluates after every epoch and writes the
run's files, all atomically and from the first process only:

| file | contents |
|---|---|
| `last.pth` | the whole training state, every epoch and every `checkpoint_interval` updates |
| `best.safetensors` | the weights with the best `task.best_metric` |
| `model_ema.safetensors` | the EMA weights, with every `last.pth` (so the run's end leaves the final ones) |
| `model.safetensors` | the final weights |
| `metrics.csv`, `curves.png` | a row per epoch, and its curves |
| `config.yaml` | the run's options, reusable with `--config` |

A run killed at any moment continues with `resume` and ends with the weights and metrics of an
uninterrupted one: the state (`Trainer.state_dict()`, PyTorch's protocol) holds the sampler position and
every process's RNG states. A NaN or infinite loss stops every process with `TrainingDiverged`, keeping
the last good checkpoint.
"""
import logging
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, List

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from timm.layers import convert_sync_batchnorm
from timm.utils import dispatch_clip_grad, distribute_bn

from ..checkpoints import atomic_write, export_weights
from ..errors import CommandError, InputError
from ..models.autocast_training import cpu_autocast_training
from ..runtime import Processes, amp_dtype, autocast, check_device, distributed, prepare_model, random_seed
from .state_files import load_state, save_state
from .optim import (check_optimisation, create_ema, create_optimizer, create_scaler, create_scheduler, learning_rate,
                    learning_rate_warning)
from .options import RunOptions, write_config
from .report import metrics_csv, plot_curves, progress_bar
from .state import RunState, capture_rng, restore_rng
from .task import Losses, Task

__all__ = ['Trainer', 'TrainingDiverged', 'check_run', 'fit']

_logger = logging.getLogger(__name__)


class TrainingDiverged(CommandError):
    """The loss became NaN or infinite."""


def check_run(o: RunOptions) -> None:
    """Refuse inconsistent run options before any work starts."""
    check_optimisation(o)
    device = check_device(o.device)
    if o.sync_bn and not (device.startswith('cuda') and int(os.environ.get('WORLD_SIZE', '1')) > 1):
        raise InputError('--sync-bn needs several CUDA processes (torchrun; torch has no SyncBatchNorm on CPU)')
    last = Path(o.output) / 'last.pth'
    if o.resume and not last.is_file():
        raise InputError(f'nothing to resume: {last} does not exist')
    if not o.resume and last.is_file():
        raise InputError(f'{o.output} already holds a run; pass --resume to continue it, or choose another --output')


def fit(task: Task, options: RunOptions) -> Dict[str, Any]:
    """Train `task` as `options` say, in this process or as one of torchrun's; the last epoch's metrics."""
    check_run(options)
    with distributed(options.device) as processes:
        return Trainer(task, options, processes).fit()


def _total(losses: Losses) -> torch.Tensor:
    return losses if isinstance(losses, torch.Tensor) else sum(losses.values())


class Trainer:
    """One training run of a task: the wrapped model, its optimisation, and the state a checkpoint saves."""

    def __init__(self, task: Task, options: RunOptions, processes: Processes):
        o = self.options = options
        self.task, self.processes, self.device = task, processes, processes.device
        self.output = Path(o.output)
        task.setup(processes)  # data first: a bad folder is reported before the model is built

        # the same initial weights in every process, then a different random stream per process
        random_seed(o.seed, 0)
        model = task.build_model()
        random_seed(o.seed, processes.rank)
        if o.sync_bn:
            model = convert_sync_batchnorm(model)
        self.amp = amp_dtype(o.amp, self.device)
        model = cpu_autocast_training(prepare_model(model, self.device, o.channels_last), self.device, self.amp)
        self.unwrapped = model  # saved and evaluated
        self.ema = create_ema(model, o)
        self.global_batch = o.batch_size * processes.world_size * o.accum_steps
        self.lr = learning_rate(o, self.global_batch)
        warning = learning_rate_warning(o, self.lr, self.global_batch)
        if warning and processes.is_main:
            _logger.warning(warning)
        self.optimizer = create_optimizer(model, o, self.lr, task.no_weight_decay(model))
        self.scaler = create_scaler(self.amp, self.device)
        if processes.distributed:
            model = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == 'cuda' else None)
        self.model = torch.compile(model) if o.compile else model

        self.updates_per_epoch = len(task.train_loader) // o.accum_steps
        if self.updates_per_epoch == 0:
            raise InputError(f'an epoch has {len(task.train_loader)} batches, fewer than --accum-steps {o.accum_steps}')
        self.scheduler, self.total_epochs = create_scheduler(self.optimizer, o, self.updates_per_epoch)
        self.state = RunState(self.device, o.batch_size * processes.world_size, o.accum_steps)
        if o.resume:
            self.load_state_dict(load_state(self.output / 'last.pth'))
            if processes.is_main:
                print(f'resuming {self.output} at epoch {self.state.epoch + 1}, batch {self.state.batch_in_epoch}')

    # --- the run ---------------------------------------------------------------------------------------

    def fit(self) -> Dict[str, Any]:
        o, p = self.options, self.processes
        if p.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            atomic_write(self.output / 'config.yaml', lambda f: f.write(write_config(o).encode()))
            print(f'{self.task.describe()}; {self.total_epochs} epochs of {self.updates_per_epoch} updates; global '
                  f'batch {self.global_batch} ({p.world_size} process(es) on {self.device.type}), lr {self.lr:.3g}; '
                  f'output {self.output}')
        while self.state.epoch < self.total_epochs:
            self.train_one_epoch()
        if p.is_main:
            self._export_final()
        return self.state.metrics[-1] if self.state.metrics else {}

    def train_one_epoch(self) -> None:
        """Train one epoch from where the state stands, evaluate, checkpoint and report."""
        o, s = self.options, self.state
        batches = self.updates_per_epoch * o.accum_steps  # a tail too short for a whole update is left out
        self.task.train_loader.sampler.set_epoch(s.epoch, s.batch_in_epoch * o.batch_size)
        self.model.train()
        started, start_batch = time.perf_counter(), s.batch_in_epoch
        bar = progress_bar(batches, start_batch, f'epoch {s.epoch + 1}/{self.total_epochs}',
                           self.processes.is_main and o.progress)
        for batch_index, batch in enumerate(self.task.train_loader, start_batch):
            if batch_index >= batches:
                break
            losses = self.train_step(batch_index, batch)
            s.add_batch(losses, self.task.batch_size(batch), self.task.skipped(batch))
            s.batch_in_epoch = batch_index + 1
            bar.update()
            if s.batch_in_epoch % o.log_interval == 0 or s.batch_in_epoch == batches:
                self.check_finite()
                images_done = (s.batch_in_epoch - start_batch) * o.batch_size * self.processes.world_size
                bar.set_postfix(loss=f'{_total(losses).item():.4f}', lr=f'{self.optimizer.param_groups[0]["lr"]:.3g}',
                                img_s=f'{images_done / (time.perf_counter() - started):.1f}', refresh=False)
            updated = s.batch_in_epoch % o.accum_steps == 0
            if updated and o.checkpoint_interval and s.num_updates % o.checkpoint_interval == 0 \
                    and s.batch_in_epoch < batches:
                self.check_finite()
                self.save_checkpoint()
        bar.close()
        elapsed = time.perf_counter() - started
        self._end_epoch(elapsed, (s.batch_in_epoch - start_batch) * o.batch_size * self.processes.world_size / elapsed)

    def train_step(self, batch_index: int, batch: Any) -> Losses:
        """Forward and backward the `batch_index`-th batch of the epoch; an optimizer update (with EMA and
        schedule steps) at the end of each accumulation group. Returns the loss(es)."""
        o = self.options
        update = (batch_index + 1) % o.accum_steps == 0
        # gradients are averaged over processes only on the last batch of an accumulation group
        no_sync = self.model.no_sync() if self.processes.distributed and not update else nullcontext()
        with no_sync:
            with autocast(self.device, self.amp):
                losses = self.task.training_step(self.model, batch)
            scaled = _total(losses) / o.accum_steps
            params = self.unwrapped.parameters()
            if self.scaler is not None:
                self.scaler(scaled, self.optimizer, clip_grad=o.clip_grad, clip_mode=o.clip_mode,
                            parameters=params, need_update=update)
            else:
                scaled.backward()
                if update:
                    if o.clip_grad is not None:
                        dispatch_clip_grad(params, o.clip_grad, mode=o.clip_mode)
                    self.optimizer.step()
        if update:
            self.optimizer.zero_grad(set_to_none=True)
            self.state.num_updates += 1
            if self.ema is not None:
                self.ema.update(self.unwrapped, step=self.state.num_updates)
            self.scheduler.step_update(num_updates=self.state.num_updates)
        return losses

    def check_finite(self) -> None:
        """Stop every process if any has seen a NaN or infinite loss (the running sum keeps it)."""
        bad = (~torch.isfinite(self.state.sums['loss'])).float()
        if self.processes.distributed:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item():
            last = self.output / 'last.pth'
            kept = (f'the last good checkpoint, {last}, is kept' if last.is_file()
                    else 'no checkpoint had been written yet')
            raise TrainingDiverged(
                f'the training loss became NaN or infinite in epoch {self.state.epoch + 1} (update '
                f'{self.state.num_updates}); {kept}. Lower the learning rate (--lr-base / --lr), add --clip-grad, '
                f'or check the data')

    def _end_epoch(self, epoch_time: float, img_per_s: float) -> None:
        self.check_finite()
        s, task = self.state, self.task
        train, skipped = s.epoch_means(self.processes.distributed)
        if self.processes.distributed:
            # each process's BatchNorm statistics saw its own batches: evaluate and save their average
            distribute_bn(self.unwrapped, self.processes.world_size, reduce=True)
        val = task.evaluate(self.unwrapped)
        self.scheduler.step(s.epoch + 1, val[task.best_metric])
        row = dict(epoch=s.epoch + 1, lr=self.optimizer.param_groups[0]['lr'], **train)
        row.update({task.val_prefix + k: v for k, v in val.items()})
        if self.ema is not None and task.ema_metrics:
            ema_val = task.evaluate(self.ema.module)
            row.update({f'ema_{k}': ema_val[k] for k in task.ema_metrics})
        row.update(skipped=skipped, epoch_time=epoch_time, img_per_s=img_per_s)
        improved = s.end_epoch(row, val[task.best_metric])
        if self.processes.is_main and improved:
            export_weights(self.output / 'best.safetensors', self.unwrapped.state_dict(),
                           dict(task.meta(), epoch=s.epoch, **{task.val_prefix + task.best_metric: val[task.best_metric]}))
        self.save_checkpoint()
        if self.processes.is_main:
            skips = f'  skipped {row["skipped"]} unreadable image(s)' if row['skipped'] else ''
            print(f'epoch {s.epoch}/{self.total_epochs}  {task.format_metrics(row)}  lr {row["lr"]:.3g}  '
                  f'{img_per_s:.1f} img/s  {epoch_time:.1f} s{skips}', flush=True)

    # --- last.pth -------------------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue exactly, as last.pth holds it: the state_dicts of the model,
        optimizer, schedule, EMA and loss scaler, the run's state, the RNG states of every process, and the
        task's metadata. Every process must call it: each gives its RNG states."""
        own = capture_rng()
        rng = [own]
        if self.processes.distributed:
            rng = [None] * self.processes.world_size
            dist.all_gather_object(rng, own)
        state = dict(
            model=self.unwrapped.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            **self.state.state_dict(),
            rng=rng,
            meta=self.task.meta(),
        )
        if self.ema is not None:
            state['model_ema'] = self.ema.module.state_dict()
        if self.scaler is not None:
            state['scaler'] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue from a state `state_dict` returned; this process takes its own RNG states back."""
        try:
            self.unwrapped.load_state_dict(state['model'])
            if self.ema is not None:
                # a run that turns EMA on when it resumes starts the average from the weights
                self.ema.module.load_state_dict(state.get('model_ema', state['model']))
        except RuntimeError as e:
            raise InputError(f'{self.output / "last.pth"} does not fit this model ({_describe(self.task.meta())}); '
                             f'resume with the options of the run: {e}') from e
        self.optimizer.load_state_dict(state['optimizer'])
        self.scheduler.load_state_dict(state['scheduler'])
        if self.scaler is not None and 'scaler' in state:  # a run that turns fp16 on starts a fresh scale
            self.scaler.load_state_dict(state['scaler'])
        self.state.load_state_dict(state)
        p = self.processes
        if len(state['rng']) == p.world_size:
            restore_rng(state['rng'][p.rank])
        else:
            _logger.warning('last.pth comes from %d process(es), this run has %d: random draws will not repeat '
                            'those of the interrupted run', len(state['rng']), p.world_size)

    # --- files ------------------------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Write last.pth, metrics.csv and model_ema.safetensors (all processes take part, the first writes)."""
        state = self.state_dict()
        if not self.processes.is_main:
            return
        self.output.mkdir(parents=True, exist_ok=True)
        save_state(self.output / 'last.pth', state)
        atomic_write(self.output / 'metrics.csv', lambda f: f.write(metrics_csv(self.state.metrics).encode()))
        if self.ema is not None:
            export_weights(self.output / 'model_ema.safetensors', self.ema.module.state_dict(), self.task.meta())

    def _export_final(self) -> None:
        """The final weights as .safetensors, the curves as a PNG, and a closing summary (the last epoch's
        checkpoint has written the final EMA weights)."""
        export_weights(self.output / 'model.safetensors', self.unwrapped.state_dict(), self.task.meta())
        rows: List[Dict[str, Any]] = self.state.metrics
        if rows:
            atomic_write(self.output / 'curves.png', lambda f: f.write(plot_curves(rows, self.task.curves)))
            summary = self.task.summary(rows[-1], self.state.best, self.state.best_epoch)
            print(f'done: {summary}; weights in {self.output}')


def _describe(meta: Dict[str, Any]) -> str:
    parts = [str(meta.get('model', '?'))]
    if 'img_size' in meta:
        parts.append(f'{meta["img_size"]}px')
    if 'num_classes' in meta:
        parts.append(f'{meta["num_classes"]} classes')
    return ', '.join(parts)
