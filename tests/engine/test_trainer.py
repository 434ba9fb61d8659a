"""The engine with a task other than classification: a tiny regression with two loss terms.

What the engine promises every task: the loss terms summed to train and each recorded, the task's
metrics in metrics.csv under its prefix, best.safetensors by the task's metric, any timm schedule (here
the detection-style multistep with a warm-up counted in updates), and an interrupted run that resumes to
the very weights and metrics of an uninterrupted one, through the trainer's `state_dict()` /
`load_state_dict()`.
"""
import csv
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import safetensors.torch
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cmtnet.engine import RunOptions, Task, Trainer, fit
from cmtnet.engine.state_files import load_state, save_state
from cmtnet.engine.report import TIMING_COLUMNS
from cmtnet.engine.sampling import ResumableSampler
from cmtnet.engine.state import RunState, restore_rng
from cmtnet.errors import InputError
from cmtnet.runtime import Processes

WEIGHTS = torch.tensor([1., -2., 3., 0.5])


class _Pairs(Dataset):
    """(x, y) pairs of y = x . WEIGHTS, indexed as the resumable sampler yields them: (index, seed)."""

    def __init__(self, n: int):
        self.x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
        self.y = self.x @ WEIGHTS

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, key):
        index, _ = key
        return self.x[index], self.y[index]


class Stop(Exception):
    """Stands for a crash in the middle of a run."""


class Regression(Task):
    best_metric = 'neg_mse'

    def __init__(self, stop_at_update: Optional[int] = None):
        self.stop_at_update = stop_at_update
        self.steps = 0

    def setup(self, processes):
        data = _Pairs(64)
        sampler = ResumableSampler(DistributedSampler(data, 1, 0, shuffle=True, seed=0), 0, 1, seed=0)
        # its own generator: starting an epoch must not draw from the global RNG that last.pth saves
        self.train_loader = DataLoader(data, batch_size=8, sampler=sampler, drop_last=True, generator=torch.Generator())
        self.val = _Pairs(16)

    def build_model(self) -> nn.Module:
        return nn.Linear(4, 1)

    def training_step(self, model, batch) -> Dict[str, torch.Tensor]:
        self.steps += 1
        if self.steps == self.stop_at_update:
            raise Stop
        x, y = batch
        pred = model(x).squeeze(1) + 0.01 * torch.randn(len(y))  # a random draw the resume must repeat
        return {'mse': F.mse_loss(pred, y), 'l1': 0.1 * F.l1_loss(pred, y)}

    def evaluate(self, model) -> Dict[str, float]:
        with torch.no_grad():
            mse = F.mse_loss(model(self.val.x).squeeze(1), self.val.y).item()
        return {'neg_mse': -mse, 'mse': mse}


def _options(output: Path, **changes: Any) -> RunOptions:
    base = RunOptions(epochs=3, batch_size=8, lr=0.05, opt='sgd', weight_decay=0., warmup_epochs=0,
                      cooldown_epochs=0, min_lr=0., workers=0, progress=False, output=str(output))
    return base.replace(**changes)


def _rows(run: Path) -> List[Dict[str, str]]:
    with open(run / 'metrics.csv') as f:
        return list(csv.DictReader(f))


def test_loss_terms_metrics_and_files(tmp_path):
    last = fit(Regression(), _options(tmp_path / 'run'))
    rows = _rows(tmp_path / 'run')
    assert [r['epoch'] for r in rows] == ['1', '2', '3']
    for row in rows:  # the terms are recorded, and their sum is the training loss
        assert float(row['train_loss']) == pytest.approx(float(row['train_mse']) + float(row['train_l1']), rel=1e-4)
    assert float(rows[-1]['val_mse']) < 0.5 * float(rows[0]['val_mse'])  # it learned
    assert last['val_mse'] == pytest.approx(float(rows[-1]['val_mse']), rel=1e-5)
    best = max(range(3), key=lambda i: float(rows[i]['val_neg_mse']))
    with safetensors.safe_open(str(tmp_path / 'run' / 'best.safetensors'), 'pt') as f:
        assert f'"epoch": {best + 1}' in f.metadata()['cmtnet']
    assert {'last.pth', 'model.safetensors', 'curves.png', 'config.yaml'} <= {p.name for p in (tmp_path / 'run').iterdir()}


def test_a_rate_below_min_lr_is_warned_of_and_kept(tmp_path, caplog):
    fit(Regression(), _options(tmp_path / 'run', lr=1e-6, min_lr=1e-5, warmup_lr=1e-7, warmup_epochs=1))
    assert 'the learning rate 1e-06 (--lr) is below --min-lr 1e-05' in caplog.text
    assert max(float(r['lr']) for r in _rows(tmp_path / 'run')) == pytest.approx(1e-6)


def test_multistep_schedule_with_warmup_in_updates(tmp_path):
    fit(Regression(), _options(tmp_path / 'run', sched='multistep', decay_milestones=[2], decay_rate=0.1,
                               warmup_updates=4, warmup_lr=1e-4))
    lrs = [float(r['lr']) for r in _rows(tmp_path / 'run')]  # 8 updates an epoch
    assert lrs == pytest.approx([0.05, 0.005, 0.005])


def test_min_updates_stretches_a_short_schedule_by_a_whole_factor(tmp_path):
    # 3 epochs of 8 updates = 24 < 40: stretched 2x, to 6 epochs with the milestone at 4, not 2 (the lr row of
    # an epoch is the lr its last update set: [0.05, 0.005, 0.005] unstretched, as in the test above)
    fit(Regression(), _options(tmp_path / 'run', sched='multistep', decay_milestones=[2], decay_rate=0.1,
                               min_updates=40))
    lrs = [float(r['lr']) for r in _rows(tmp_path / 'run')]
    assert lrs == pytest.approx([0.05] * 3 + [0.005] * 3)
    # a schedule already long enough is left as it is
    fit(Regression(), _options(tmp_path / 'long', sched='multistep', decay_milestones=[2], min_updates=24))
    assert len(_rows(tmp_path / 'long')) == 3


def test_interrupted_run_resumes_to_the_same_weights_and_metrics(tmp_path):
    whole, broken = tmp_path / 'whole', tmp_path / 'broken'
    fit(Regression(), _options(whole, checkpoint_interval=1))
    with pytest.raises(Stop):  # a crash in the 13th update, in the middle of epoch 2
        fit(Regression(stop_at_update=13), _options(broken, checkpoint_interval=1))
    assert not (broken / 'model.safetensors').exists()
    fit(Regression(), _options(broken, checkpoint_interval=1, resume=True))
    a, b = (safetensors.torch.load_file(run / 'model.safetensors') for run in (whole, broken))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    drop = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]
    assert drop(_rows(broken)) == drop(_rows(whole))


def test_the_ema_weights_are_one_file_written_with_every_checkpoint(tmp_path):
    run, ema = tmp_path / 'run', dict(model_ema=True, model_ema_decay=0.9)
    with pytest.raises(Stop):  # a crash in the 13th update, in the middle of epoch 2
        fit(Regression(stop_at_update=13), _options(run, **ema))
    during = safetensors.torch.load_file(run / 'model_ema.safetensors')  # written during the run
    assert _same(during, load_state(run / 'last.pth')['model_ema'])
    fit(Regression(), _options(run, resume=True, **ema))
    final = safetensors.torch.load_file(run / 'model_ema.safetensors')
    assert _same(final, load_state(run / 'last.pth')['model_ema']) and not _same(final, during)
    assert [p.name for p in run.iterdir() if 'ema' in p.name] == ['model_ema.safetensors']


def _same(a: Any, b: Any) -> bool:
    """Deep equality of states: tensors bit for bit (NaN equal to NaN), containers item by item."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a.nan_to_num(), b.nan_to_num())
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _trainer(options: RunOptions) -> Trainer:
    """A run driven epoch by epoch, as `fit` drives it (which also makes the output folder)."""
    Path(options.output).mkdir(parents=True)
    return Trainer(Regression(), options, Processes(torch.device('cpu')))


def test_the_trainer_state_follows_the_state_dict_protocol(tmp_path):
    # with EMA: every part last.pth holds (model, optimizer, schedule, EMA, run state, RNG) goes through it
    trained = _trainer(_options(tmp_path / 'a', model_ema=True, model_ema_decay=0.9))
    trained.train_one_epoch()
    state = trained.state_dict()
    assert {'model', 'model_ema', 'optimizer', 'scheduler', 'epoch', 'num_updates', 'samples_in_epoch', 'epoch_sums',
            'metrics', 'best', 'best_epoch', 'rng', 'meta'} == state.keys()
    assert state['epoch'] == 1 and state['num_updates'] == 8 and len(state['metrics']) == 1

    save_state(tmp_path / 'last.pth', state)  # as last.pth holds it: no tensor shared with the trained run
    fresh = _trainer(_options(tmp_path / 'b', model_ema=True, model_ema_decay=0.9))
    assert not _same(fresh.state_dict()['model'], state['model'])
    fresh.load_state_dict(load_state(tmp_path / 'last.pth'))
    assert _same(fresh.state_dict(), state)  # the very state back, the RNG states included

    # and both go on alike: the same random draws, the same weights after another epoch
    fresh.train_one_epoch()
    restore_rng(state['rng'][0])
    trained.train_one_epoch()
    assert _same(fresh.state_dict()['model'], trained.state_dict()['model'])
    assert _same(fresh.state_dict()['model_ema'], trained.state_dict()['model_ema'])


def test_run_state_round_trip_and_a_partial_update_refused():
    state = RunState(torch.device('cpu'), images_per_batch=8, accum_steps=1)
    state.add_batch({'mse': torch.tensor(2.), 'l1': torch.tensor(0.5)}, images=8, skipped=1)
    state.batch_in_epoch, state.num_updates = 3, 11
    assert state.end_epoch({'epoch': 1, 'val_neg_mse': -5.}, -5.)  # the first epoch is the best so far
    state.batch_in_epoch = 3
    saved = state.state_dict()
    assert saved['samples_in_epoch'] == 24  # the sampler position, in images of the epoch's global order

    back = RunState(torch.device('cpu'), images_per_batch=8, accum_steps=1)
    back.load_state_dict(saved)
    assert _same(back.state_dict(), saved)
    assert (back.epoch, back.batch_in_epoch, back.num_updates, back.best_epoch) == (1, 3, 11, 1)

    # 3 batches of 8 images are not a whole number of updates of 2 batches
    with pytest.raises(InputError, match='not a whole number of updates of 16 images'):
        RunState(torch.device('cpu'), images_per_batch=8, accum_steps=2).load_state_dict(saved)


class FarBelowZero(Regression):
    """A best metric that is never above -1 (a negated error, offset)."""

    def evaluate(self, model) -> Dict[str, float]:
        metrics = super().evaluate(model)
        return dict(metrics, neg_mse=metrics['neg_mse'] - 100)


def test_best_weights_whatever_the_range_of_the_metric(tmp_path):
    fit(FarBelowZero(), _options(tmp_path / 'run'))
    rows = _rows(tmp_path / 'run')
    best = max(range(3), key=lambda i: float(rows[i]['val_neg_mse']))
    with safetensors.safe_open(str(tmp_path / 'run' / 'best.safetensors'), 'pt') as f:
        assert f'"epoch": {best + 1}' in f.metadata()['cmtnet']
