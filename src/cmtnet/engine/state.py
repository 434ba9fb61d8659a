"""The progress of a training run, and the random states a resumed run repeats.

`RunState` counts what a run has done (epochs, batches of the current epoch, updates), sums the epoch's
losses, keeps the metrics rows and the best metric; `state_dict()` / `load_state_dict()` carry them
through last.pth. `capture_rng` / `restore_rng` do the same for the python, numpy, torch and CUDA RNGs of a
process, so that a resumed run repeats the interrupted one's random draws exactly. The trainer assembles
last.pth from these and the state_dicts of its model, optimizer, schedule, EMA and loss scaler.
"""
import random
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
import torch.distributed as dist

from ..errors import InputError
from .task import Losses

__all__ = ['RunState', 'capture_rng', 'restore_rng']

# sums kept over an epoch besides the losses: images seen and unreadable images passed over
_COUNTS = ('images', 'skipped')


class RunState:
    """Where a run stands: counters, the current epoch's sums, the metrics so far and the best metric."""

    def __init__(self, device: torch.device, images_per_batch: int, accum_steps: int = 1):
        self.device = device
        # images of one batch over all processes, and batches per update: the sampler position in last.pth
        self.images_per_batch, self.accum_steps = images_per_batch, accum_steps
        self.epoch = 0  # epochs completed
        self.batch_in_epoch = 0  # batches of the current epoch completed (resume mid-epoch)
        self.num_updates = 0
        self.sums = self._zero_sums(['loss'])  # loss x images (per loss term too), images, skipped
        self.metrics: List[Dict[str, Any]] = []
        self.best, self.best_epoch = float('-inf'), 0  # any value of the first epoch is the best so far

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

    # --- last.pth ---------------------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """The counters, the epoch's sums (on the CPU), the metrics so far and the best metric; the batch
        position as the sampler's, in images of the epoch's global order."""
        return dict(
            epoch=self.epoch,
            num_updates=self.num_updates,
            samples_in_epoch=self.batch_in_epoch * self.images_per_batch,
            epoch_sums={n: v.cpu() for n, v in self.sums.items()},
            metrics=list(self.metrics),
            best=self.best,
            best_epoch=self.best_epoch,
        )

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue from what `state_dict` returned; InputError if it stopped within an update of this run."""
        per_update = self.images_per_batch * self.accum_steps
        samples = state['samples_in_epoch']
        if samples % per_update:
            raise InputError(
                f'last.pth stopped {samples} images into epoch {state["epoch"] + 1}, which is not a whole number '
                f'of updates of {per_update} images; resume with the batch size, number of processes and '
                f'--accum-steps of the run')
        self.epoch, self.num_updates = state['epoch'], state['num_updates']
        self.batch_in_epoch = samples // self.images_per_batch
        self.sums = {n: v.to(self.device) for n, v in state['epoch_sums'].items()}
        self.metrics = list(state['metrics'])
        self.best, self.best_epoch = state['best'], state['best_epoch']


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
