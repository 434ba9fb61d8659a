"""The warm-up rule: an automatic warm-up that fits the run, an explicit one checked, the recipes' kept."""
import math
from pathlib import Path

import pytest
import torch

from cmtnet.classification import TrainOptions
from cmtnet.classification.commands import parse_options
from cmtnet.detection import commands as detect_commands
from cmtnet.engine import RunOptions
from cmtnet.engine.optim import (check_optimisation, create_scheduler, learning_rate, learning_rate_warning,
                                 warmup_epochs)
from cmtnet.errors import InputError

CONFIGS = Path(__file__).resolve().parents[2] / 'configs'


@pytest.mark.parametrize('epochs, expected', [(1, 0.1), (2, 0.2), (8, 0.8), (10, 1.0), (30, 3.0), (50, 5.0),
                                              (300, 5.0)])
def test_automatic_warmup_is_timms_five_epochs_at_most_a_tenth_of_the_run(epochs, expected):
    o = RunOptions(epochs=epochs)
    assert o.warmup_epochs is None and o.cooldown_epochs == 0
    assert warmup_epochs(o) == pytest.approx(expected)
    check_optimisation(o)  # a short run with the defaults is accepted


def test_readme_example_options_are_accepted():
    # the README's typed example: it failed with "--warmup-epochs (20) must be below --epochs (8)"
    check_optimisation(TrainOptions(model='cmt_ti', img_size=32, epochs=8, output='runs/digits'))


def test_explicit_warmup_is_kept_and_checked():
    assert warmup_epochs(RunOptions(epochs=10, warmup_epochs=0)) == 0
    assert warmup_epochs(RunOptions(epochs=10, warmup_epochs=7)) == 7
    with pytest.raises(InputError, match=r'--warmup-epochs \(10\.0\) must be below --epochs \(10\)'):
        check_optimisation(RunOptions(epochs=10, warmup_epochs=10.))
    with pytest.raises(InputError, match='must be below'):
        check_optimisation(RunOptions(epochs=2, warmup_epochs=-1))


def _lrs(o: RunOptions, updates_per_epoch: int):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=o.lr)
    scheduler, total = create_scheduler(optimizer, o, updates_per_epoch)
    lrs = []
    for update in range(total * updates_per_epoch):
        scheduler.step_update(update)
        lrs.append(optimizer.param_groups[0]['lr'])
    return lrs, total


def test_schedule_warms_up_for_a_tenth_of_a_short_run():
    o = RunOptions(epochs=10, lr=0.1, warmup_lr=0.001, min_lr=0.)
    lrs, total = _lrs(o, updates_per_epoch=4)
    assert total == 10  # no cool-down by default
    assert lrs[0] == pytest.approx(0.001)
    # linear warm-up over the first epoch (4 updates), then the cosine from the peak down
    assert all(a < b for a, b in zip(lrs[:4], lrs[1:5]))
    assert lrs[4] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 4 / 40))) and max(lrs) == lrs[4]
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


def test_command_line_short_run_and_recipes():
    o = parse_options(['--epochs', '2'])
    assert o.warmup_epochs is None and o.cooldown_epochs == 0
    check_optimisation(o)
    assert warmup_epochs(o) == pytest.approx(0.2)
    with pytest.raises(InputError, match=r'--warmup-epochs \(3\.0\) must be below --epochs \(2\)'):
        check_optimisation(parse_options(['--epochs', '2', '--warmup-epochs', '3']))
    # the released recipe keeps its 20 warm-up and 10 cool-down epochs
    recipe = parse_options(['--recipe', 'cmt_s'])
    assert (recipe.warmup_epochs, recipe.cooldown_epochs) == (20, 10)


def test_demo_configs_keep_their_schedules():
    # `make demo` and `make detect-demo` set or inherit their own warm-up, not the engine's default
    demo = parse_options(['--config', str(CONFIGS / 'demo.yaml')])
    assert (demo.epochs, demo.warmup_epochs, demo.cooldown_epochs) == (8, 1, 0)
    detect = detect_commands.parse_options(['--config', str(CONFIGS / 'detect_demo.yaml')])
    assert (detect.warmup_epochs, detect.warmup_updates, detect.cooldown_epochs) == (0, 50, 0)
    default = detect_commands.parse_options([])
    assert (default.warmup_epochs, default.warmup_updates, default.cooldown_epochs) == (0, 500, 0)


def test_a_rate_scaled_below_min_lr_is_said_and_the_schedule_never_rises_above_it():
    # `cmtnet train --batch-size 4`: 5e-4 x 4 / 512 = 3.9e-6, below the default --min-lr 1e-5
    o = RunOptions(epochs=2, batch_size=4)
    lr = learning_rate(o, global_batch=4)
    assert lr == pytest.approx(3.90625e-6) and o.min_lr == 1e-5
    warning = learning_rate_warning(o, lr, global_batch=4)
    assert '3.91e-06 (--lr-base 0.0005 x global batch 4 / --lr-base-size 512)' in warning
    assert 'below --min-lr 1e-05' in warning and 'stays at 3.91e-06' in warning
    lrs, _ = _lrs(o.replace(lr=lr), updates_per_epoch=10)
    assert max(lrs) == pytest.approx(lr) and lrs[-1] == pytest.approx(lr)
    assert 'below --min-lr 1e-05' in learning_rate_warning(o.replace(lr=1e-6), 1e-6, 4)  # a given rate too
    # a rate above --min-lr: no warning, and the cosine ends at --min-lr
    assert learning_rate_warning(o, 1e-3, global_batch=1024) is None
    lrs, _ = _lrs(o.replace(lr=1e-3), updates_per_epoch=10)
    assert 0.9e-3 < max(lrs) <= 1e-3 and min(lrs) < 1e-4
