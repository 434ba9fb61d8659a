"""The progress of a training run, and the whole training state that last.pth holds.

`RunState` counts what a run has done (epochs, batches of the current epoch, updates), sums the epoch's
losses, keeps the metrics rows and the best metric. `capture` and `restore` turn a run into last.pth and
back: the model, optimizer, schedule, EMA and loss scaler, those counters, the sampler position, and the
RNG states of every process, so that a resumed run repeats the interrupted one's random draws exactly.
"""
import logging
import random
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from ..errors import InputError
from .task import Losses

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ['RunState', 'capture_rng', 'restore_rng']

_logger = logging.getLogger(__name__)

# sums kept over an epoch besides the losses: images seen and unreadable images passed over
_COUNTS = ('images', 'skipped')


class RunState:
    """Where a run stands: counters, the current epoch's sums, the metrics so far and the best metric."""

    def __init__(self, device: torch.device):
        self.device = device
        self.epoch = 0  # epochs completed
        self.batch_in_epoch = 0  # batches of the current epoch completed (resume mid-epoch)
        self.num_updates = 0
        self.sums = self._zero_sums(['loss'])  # loss x images (per loss term too), images, skipped
        self.metrics: List[Dict[str, Any]] = []
        self.best, self.best_epoch = -1., 0

    def _zero_sums(self, names: List[str]) -> Dict[str, torch.Tensor]:
        # float64 on the device: no sync per batch, and no rounding over a long epoch
        return {n: torch.zeros((), dtype=torch.float64, device=self.device) for n in [*names, *_COUNTS]}

    def add_batch(self, losses: Losses, images: int, skipped: Any) -> None:
        terms = {'loss': losses} if isinstance(losses, torch.Tensor) else dict(losses, loss=sum(losses.values()))
        for name, value in terms.items():
            if name not in self.sums:
                self.sums[name] = torch.zeros((), dtype=torch.float64, device=self.device)
            self.sums[name] += value.detach().double() * images
        self.sums['images'] += images
        self.sums['skipped'] += torch.as_tensor(skipped).sum().to(self.device, torch.float64)

    def epoch_means(self, distributed: bool) -> Tuple[Dict[str, float], int]:
        """({'train_loss': mean, 'train_<term>': mean, ...}, unreadable images skipped), over all processes."""
        names = sorted(self.sums)
        values = torch.stack([self.sums[n] for n in names])
        if distributed:
            dist.all_reduce(values)
        sums = dict(zip(names, values.tolist()))
        images = max(sums.pop('images'), 1.)
        skipped = int(sums.pop('skipped'))
        means = {'train_loss': sums.pop('loss') / images}
        means.update({f'train_{n}': v / images for n, v in sums.items()})
        return means, skipped

    def end_epoch(self, row: Dict[str, Any], value: float) -> bool:
        """Record the epoch's row and its value of the best metric; True if it is the best so far."""
        self.metrics.append(row)
        improved = value > self.best
        if improved:
            self.best, self.best_epoch = value, row['epoch']
        self.epoch += 1
        self.batch_in_epoch = 0
        self.sums = self._zero_sums([n for n in self.sums if n not in _COUNTS])
        return improved

    # --- last.pth -------------------------------------------------------------------------------------

    def capture(self, trainer: 'Trainer') -> Optional[Dict[str, Any]]:
        """Everything needed to continue exactly (all processes take part: each gives its RNG states)."""
        rng = capture_rng()
        states = [rng]
        if trainer.processes.distributed:
            states = [None] * trainer.processes.world_size
            dist.all_gather_object(states, rng)
        state = dict(
            model=trainer.unwrapped.state_dict(),
            optimizer=trainer.optimizer.state_dict(),
            scheduler=trainer.scheduler.state_dict(),
            epoch=self.epoch,
            num_updates=self.num_updates,
            # the sampler position, in images of the epoch's global order
            samples_in_epoch=self.batch_in_epoch * trainer.options.batch_size * trainer.processes.world_size,
            epoch_sums={n: v.cpu() for n, v in self.sums.items()},
            metrics=self.metrics,
            best=self.best,
            best_epoch=self.best_epoch,
            rng=states,
            meta=trainer.task.meta(),
        )
        if trainer.ema is not None:
            state['model_ema'] = trainer.ema.module.state_dict()
        if trainer.scaler is not None:
            state['scaler'] = trainer.scaler.state_dict()
        return state

    def restore(self, trainer: 'Trainer', state: Dict[str, Any]) -> None:
        """Continue from a state `capture` made (also from a last.pth of an earlier cmtnet release)."""
        path = trainer.output / 'last.pth'
        try:
            trainer.unwrapped.load_state_dict(state['model'])
            if trainer.ema is not None:
                trainer.ema.module.load_state_dict(state.get('model_ema', state['model']))
        except RuntimeError as e:
            raise InputError(f'{path} does not fit this model ({_describe(trainer.task.meta())}); resume with the '
                             f'options of the run: {e}') from e
        trainer.optimizer.load_state_dict(state['optimizer'])
        trainer.scheduler.load_state_dict(state['scheduler'])
        if trainer.scaler is not None and 'scaler' in state:
            trainer.scaler.load_state_dict(state['scaler'])
        self.epoch, self.num_updates, self.metrics = state['epoch'], state['num_updates'], state['metrics']
        self.best, self.best_epoch = state.get('best', state.get('best_top1')), state['best_epoch']
        sums = state['epoch_sums']
        if isinstance(sums, torch.Tensor):  # earlier releases: loss x images, images, skipped
            sums = dict(zip(('loss', *_COUNTS), sums))
        self.sums = {n: v.to(self.device) for n, v in sums.items()}
        o, world = trainer.options, trainer.processes.world_size
        per_batch = o.batch_size * world
        if state['samples_in_epoch'] % (per_batch * o.accum_steps):
            raise InputError(
                f'last.pth stopped {state["samples_in_epoch"]} images into epoch {self.epoch + 1}, which is not a '
                f'whole number of updates of {per_batch * o.accum_steps} images; resume with the batch size, '
                f'number of processes and --accum-steps of the run')
        self.batch_in_epoch = state['samples_in_epoch'] // per_batch
        if len(state['rng']) == world:
            restore_rng(state['rng'][trainer.processes.rank])
        else:
            _logger.warning('last.pth comes from %d process(es), this run has %d: random draws will not repeat '
                            'those of the interrupted run', len(state['rng']), world)
        if trainer.processes.is_main:
            print(f'resuming {trainer.output} at epoch {self.epoch + 1}, batch {self.batch_in_epoch}')


def _describe(meta: Dict[str, Any]) -> str:
    parts = [str(meta.get('model', '?'))]
    if 'img_size' in meta:
        parts.append(f'{meta["img_size"]}px')
    if 'num_classes' in meta:
        parts.append(f'{meta["num_classes"]} classes')
    return ', '.join(parts)


def capture_rng() -> Dict[str, torch.Tensor]:
    """The states of the python, numpy, torch (and CUDA) RNGs of this process, as tensors."""
    _, python_mt, python_gauss = random.getstate()
    _, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state()
    state = {
        'python': torch.tensor(python_mt, dtype=torch.int64),
        'python_gauss': torch.tensor(float('nan') if python_gauss is None else python_gauss, dtype=torch.float64),
        'numpy': torch.from_numpy(numpy_keys.astype(np.int64)),
        'numpy_pos': torch.tensor([numpy_pos, numpy_has_gauss], dtype=torch.int64),
        'numpy_gauss': torch.tensor(numpy_gauss, dtype=torch.float64),
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: Dict[str, torch.Tensor]) -> None:
    """Restore the RNG states captured by `capture_rng`."""
    python_gauss = state['python_gauss'].item()
    random.setstate((3, tuple(state['python'].tolist()), None if np.isnan(python_gauss) else python_gauss))
    pos, has_gauss = state['numpy_pos'].tolist()
    np.random.set_state(('MT19937', state['numpy'].numpy().astype(np.uint32), pos, has_gauss,
                         state['numpy_gauss'].item()))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])
