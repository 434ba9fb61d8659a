"""Training, evaluation and prediction end to end, on tiny generated image folders and the digits.

The runs use CMT-Ti at 32x32 on a few dozen images. Runs that must be killed or spread over processes go
through `python -m cmtnet` / torchrun in subprocesses, one thread each, bounded by timeouts; the runs they are
compared with run in the test's process, on one thread too.
"""
import csv
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import safetensors.torch
import timm
import torch
from timm.data import ImageNetInfo
from timm.utils import random_seed

from cmtnet.checkpoints import export_weights
from cmtnet.classification import ClassificationTask, TrainOptions
from cmtnet.classification.commands import parse_options
from cmtnet.cli import main
from cmtnet.engine import Trainer
from cmtnet.engine.state_files import load_state
from cmtnet.engine.report import TIMING_COLUMNS
from cmtnet.models import resize_rel_pos_bias
from cmtnet.runtime import Processes
from image_folders import corrupt, make_image_folder
from killed_runs import ENV, TIMEOUT, kill_after_first_checkpoint, run_here
from released import make_state, released_keys

# a small, fast run; what each test varies comes after these options and overrides them
TINY_OPTIONS = TrainOptions(
    model='cmt_ti', img_size=32, batch_size=4, workers=0, epochs=2, warmup_epochs=0, cooldown_epochs=0, lr=1e-3,
    aa='none', color_jitter=0, reprob=0, mixup=0, cutmix=0, aug_repeats=0, progress=False)
# the same on the command line
TINY = ['--model', 'cmt_ti', '--img-size', '32', '--batch-size', '4', '--workers', '0', '--epochs', '2',
        '--warmup-epochs', '0', '--cooldown-epochs', '0', '--lr', '1e-3', '--aa', 'none', '--color-jitter', '0',
        '--reprob', '0', '--mixup', '0', '--cutmix', '0', '--aug-repeats', '0', '--no-progress']


def _trainer(options: TrainOptions) -> Trainer:
    """The engine's run of classification on one CPU process, as `cmtnet train` builds it."""
    return Trainer(ClassificationTask(options), options, Processes(torch.device('cpu')))


def _metrics(run: Path) -> List[Dict[str, str]]:
    with open(run / 'metrics.csv') as f:
        return list(csv.DictReader(f))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('images'), per_class=8)


@pytest.fixture(scope='module')
def trained(folder, tmp_path_factory):
    """A finished two-epoch run on the tiny folder, made through the command line."""
    run = tmp_path_factory.mktemp('runs') / 'tiny'
    assert main(['train', '--data', str(folder), '--output', str(run), *TINY]) == 0
    return run


def test_loss_decreases_on_the_digits():
    """A few updates on one batch of the embedded digits bring its loss well down."""
    trainer = _trainer(TINY_OPTIONS.replace(batch_size=16, lr=2e-3, smoothing=0, drop_path=0, output='unused'))
    trainer.task.train_loader.sampler.set_epoch(0)
    batch = next(iter(trainer.task.train_loader))
    trainer.model.train()
    losses = [trainer.train_step(0, batch).item() for _ in range(8)]
    assert losses[-1] < 0.5 * losses[0], losses
    assert trainer.state.num_updates == 8


def test_optimizer_groups_schedule_and_lr_scaling(folder):
    o = parse_options(['--recipe', 'cmt_xs', '--data', str(folder), '--img-size', '32', '--batch-size', '4',
                  '--workers', '0', '--output', 'unused'])
    trainer = _trainer(o)
    assert trainer.lr == pytest.approx(7e-4 * 4 / 512)  # base lr x global batch / 512
    assert trainer.ema is not None and trainer.ema.decay == 0.9998
    assert trainer.total_epochs == 400 + 10  # cosine epochs, then the cool-down
    rates = [getattr(b.drop_path2, 'drop_prob', 0.) for s in trainer.unwrapped.stages for b in s.blocks]
    assert rates[0] == 0 and max(rates) == pytest.approx(0.08)  # the recipe's drop path reaches the model
    names = {id(p): n for n, p in trainer.unwrapped.named_parameters()}
    decay = {names[id(p)] for g in trainer.optimizer.param_groups if g['weight_decay'] > 0 for p in g['params']}
    assert 'stages.0.blocks.0.attn.q.weight' in decay
    assert not any(n.endswith('.bias') or 'norm' in n for n in decay)
    assert 'stages.2.rel_pos_bias' in decay  # the released runs decayed the position biases
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    # outside the recipe, the switch is off by default: the position biases go without weight decay
    plain = _trainer(TINY_OPTIONS.replace(data=str(folder), output='unused'))
    names = {id(p): n for n, p in plain.unwrapped.named_parameters()}
    decay = {names[id(p)] for g in plain.optimizer.param_groups if g['weight_decay'] > 0 for p in g['params']}
    assert 'stages.0.blocks.0.attn.q.weight' in decay and 'stages.2.rel_pos_bias' not in decay


def test_run_outputs(trained, folder):
    assert {'last.pth', 'best.safetensors', 'model.safetensors', 'metrics.csv', 'curves.png', 'config.yaml'} <= \
        {p.name for p in trained.iterdir()}
    rows = _metrics(trained)
    assert [r['epoch'] for r in rows] == ['1', '2']
    assert {'lr', 'train_loss', 'val_loss', 'val_top1', 'img_per_s'} <= set(rows[0])
    assert 'val_top5' not in rows[0]  # 2 classes: every image is in its top 5
    assert (trained / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert not [p for p in trained.iterdir() if p.name.endswith('.tmp')]
    state = load_state(trained / 'last.pth')  # weights_only: tensors and plain containers
    assert state['epoch'] == 2 and state['samples_in_epoch'] == 0 and len(state['rng']) == 1
    # the saved config reproduces the run's options
    reread = parse_options(['--config', str(trained / 'config.yaml')])
    assert reread.data == str(folder) and reread.img_size == 32 and reread.lr == 1e-3


def test_exported_weights_load_through_timm(trained, folder):
    trainer = _trainer(TINY_OPTIONS.replace(data=str(folder), output=str(trained), resume=True))
    x = torch.randn(2, 3, 32, 32)
    expected = trainer.unwrapped.eval()(x)
    path = str(trained / 'model.safetensors')
    # with the checkpoint's classes, the whole model, classifier included
    model = timm.create_model('cmt_ti', pretrained=True, img_size=32, num_classes=2,
                              pretrained_cfg_overlay=dict(file=path, num_classes=2)).eval()
    torch.testing.assert_close(model(x), expected)
    # as a backbone for other classes: timm resets the classifier, the rest loads
    backbone = timm.create_model('cmt_ti', pretrained=True, img_size=32, num_classes=5,
                                 pretrained_cfg_overlay=dict(file=path)).eval()
    torch.testing.assert_close(backbone.forward_head(backbone.forward_features(x), pre_logits=True),
                               model.forward_head(model.forward_features(x), pre_logits=True))


def test_eval_prints_accuracy_and_confusion(trained, folder, tmp_path, capsys):
    assert main(['eval', '--checkpoint', str(trained / 'model.safetensors'), '--data', str(folder),
                 '--workers', '0']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith('val accuracy (top-1): ') and lines[-1].endswith('/16 images)')
    assert not [line for line in lines if line.startswith('top-')]  # no top-5 of 2 classes
    assert lines[0].startswith(f'cmt_ti at 32px in fp32 unfolded ({trained / "model.safetensors"}) on ')
    # the header says the precision and path it ran in
    assert main(['eval', '--checkpoint', str(trained / 'model.safetensors'), '--data', str(folder),
                 '--workers', '0', '--precision', 'bf16']) == 0
    assert 'cmt_ti at 32px in bf16 folded on the CPU fast path (' in capsys.readouterr().out.splitlines()[0]
    header = lines.index('confusion matrix (rows: true class, columns: predicted class)')
    assert lines[header + 1].split() == ['blue', 'red']
    matrix = [line.split() for line in lines[header + 2:header + 4]]
    assert [row[0] for row in matrix] == ['blue', 'red']
    assert len(matrix) == 2 and sum(int(v) for row in matrix for v in row[1:]) == 16
    # the same figure as the run's last validation
    assert float(lines[-1].split()[3].rstrip('%')) == pytest.approx(float(_metrics(trained)[-1]['val_top1']), abs=0.01)
    # the same options from a config file
    config = tmp_path / 'eval.yaml'
    config.write_text(f'checkpoint: {trained / "model.safetensors"}\ndata: {folder}\nworkers: 0\n')
    assert main(['eval', '--config', str(config)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == lines[-1]


def test_predict_prints_top_k_labels(trained, folder, tmp_path, capsys, caplog):
    bad = tmp_path / 'broken.png'
    bad.write_bytes(b'not an image')
    assert main(['predict', '--checkpoint', str(trained / 'model.safetensors'), '--top-k', '2',
                 str(folder / 'val' / 'red'), str(bad)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 8 * 3  # a path line and two label lines per readable image
    for i in range(0, len(lines), 3):
        assert lines[i].endswith('.png') and 'red' in lines[i]
        top = [line.split() for line in lines[i + 1:i + 3]]
        assert {label for _, label in top} == {'blue', 'red'}
        probs = [float(p.rstrip('%')) for p, _ in top]
        assert probs[0] >= probs[1] and sum(probs) == pytest.approx(100, abs=0.02)
    assert f'skipping unreadable image {bad}' in caplog.text


def test_predict_uses_imagenet_names_for_1000_classes(tmp_path, folder, capsys):
    model = timm.create_model('cmt_ti', img_size=32)
    path = tmp_path / 'imagenet.safetensors'
    export_weights(path, model.state_dict(), dict(model='cmt_ti', img_size=32))
    assert main(['predict', '--checkpoint', str(path), '--top-k', '3', str(folder / 'val' / 'blue' / '0.png')]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    info = ImageNetInfo()
    names = {info.index_to_description(i) for i in range(1000)}
    assert len(lines) == 4 and all(line.split('%  ', 1)[1] in names for line in lines[1:])


def test_fine_tune_from_a_released_checkpoint(folder, tmp_path):
    """Another number of classes and another resolution: the head is reset, the position biases resized."""
    released = make_state(released_keys('cmt_ti'), seed=5)  # 1000 classes at 160x160
    path = tmp_path / 'cmt_tiny.pth'
    torch.save({'model': released}, path)
    run = tmp_path / 'finetune'
    # lr 0: the weights stay those loaded, so they can be compared with the released ones
    assert main(['train', '--data', str(folder), '--output', str(run), '--pretrained', str(path), *TINY,
                 '--epochs', '1', '--lr', '0', '--min-lr', '0', '--weight-decay', '0']) == 0
    weights = safetensors.torch.load_file(run / 'model.safetensors')
    assert weights['head.fc.weight'].shape == (2, 1280)
    torch.testing.assert_close(weights['stem.conv1.weight'], released['stem_conv1.weight'])
    for i, (letter, sr, grid) in enumerate(zip('abcd', (8, 4, 2, 1), (40, 20, 10, 5))):
        assert weights[f'stages.{i}.rel_pos_bias'].shape[1] == (8 // 2 ** i) ** 2
        torch.testing.assert_close(
            weights[f'stages.{i}.rel_pos_bias'],
            resize_rel_pos_bias(released[f'relative_pos_{letter}'], (grid, grid), (8 // 2 ** i,) * 2, sr))


def test_corrupt_image_is_skipped_and_counted(tmp_path, capsys, caplog):
    root = make_image_folder(tmp_path / 'data', per_class=8)
    bad = corrupt(root / 'train' / 'red' / '3.png')
    assert main(['train', '--data', str(root), '--output', str(tmp_path / 'run'), *TINY, '--epochs', '1']) == 0
    assert str(bad) in caplog.text
    assert 'skipped 1 unreadable image(s)' in capsys.readouterr().out
    assert _metrics(tmp_path / 'run')[0]['skipped'] == '1'
    # --strict: an error naming the file
    assert main(['train', '--data', str(root), '--output', str(tmp_path / 'strict'), *TINY, '--strict']) == 2
    assert str(bad) in capsys.readouterr().err
    # evaluation leaves an unreadable image out of the counts
    bad_val = corrupt(root / 'val' / 'blue' / '0.png')
    assert main(['eval', '--checkpoint', str(tmp_path / 'run' / 'model.safetensors'), '--data', str(root),
                 '--workers', '0']) == 0
    out = capsys.readouterr().out
    assert 'skipped 1 unreadable image(s)' in out and out.strip().endswith('/15 images)')
    assert str(bad_val) in caplog.text


def test_nan_loss_stops_the_run(folder, tmp_path, capsys):
    run = tmp_path / 'diverged'
    assert main(['train', '--data', str(folder), '--output', str(run), *TINY, '--lr', '1e30']) == 1
    err = capsys.readouterr().err
    assert 'NaN or infinite' in err and 'no checkpoint had been written yet' in err
    assert not (run / 'last.pth').exists()


def test_resume_after_sigkill_matches_an_uninterrupted_run(folder, tmp_path):
    """Killed mid-epoch (SIGKILL) and resumed, a run ends with the weights and metrics of an uninterrupted one.

    Every source of randomness is on: augmentation in a loader worker, mixup / cutmix, drop path, dropout,
    and EMA, with a checkpoint after every update.
    """
    args = ['--data', str(folder), *TINY, '--epochs', '3', '--workers', '1', '--aa', 'rand-m9-mstd0.5-inc1',
            '--reprob', '0.25', '--mixup', '0.8', '--cutmix', '1.0', '--drop-path', '0.1', '--model-ema',
            '--model-ema-decay', '0.9', '--checkpoint-interval', '1']
    whole, broken = tmp_path / 'whole', tmp_path / 'broken'
    assert run_here(['train', *args, '--output', str(whole)])[0] == 0

    state = kill_after_first_checkpoint(['train', *args], broken)

    status, out = run_here(['train', *args, '--output', str(broken), '--resume'])
    assert status == 0
    assert f'resuming {broken} at epoch {state["epoch"] + 1}' in out
    for name in ('model.safetensors', 'model_ema.safetensors', 'best.safetensors'):
        a, b = (safetensors.torch.load_file(run / name) for run in (whole, broken))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f'{name}: {key}'
    drop = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]
    assert drop(_metrics(broken)) == drop(_metrics(whole))


def test_two_gloo_processes_match_one_process(tmp_path):
    """DDP on 2 CPU processes (gloo) with batch 8 each ends with the weights of 1 process with batch 16.

    Repeated augmentation x2 hands each process the same images (the two copies of each go to different
    processes), so per-process BatchNorm statistics equal those of the global batch; augmentation, dropout,
    drop path and mixup are off, as their random draws differ per process. SGD, not AdamW: the first AdamW
    steps move every weight by about +-lr whatever the size of its gradient, which turns float noise in
    gradients that are zero in exact arithmetic (biases ahead of a BatchNorm) into differences of 2 lr.
    """
    folder = make_image_folder(tmp_path / 'data', per_class=16)  # 8 distinct images per process and batch
    args = ['--data', str(folder), *TINY, '--aug-repeats', '2', '--scale', '1', '1', '--ratio', '1', '1',
            '--hflip', '0', '--drop', '0', '--drop-path', '0', '--epochs', '2', '--opt', 'sgd', '--lr', '0.01']
    assert run_here(['train', *args, '--batch-size', '16', '--output', str(tmp_path / 'one')])[0] == 0
    double = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_addr', '127.0.0.1',
         '--master_port', str(_free_port()), '-m', 'cmtnet', 'train', *args, '--batch-size', '8',
         '--output', str(tmp_path / 'two')],
        env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert double.returncode == 0, double.stderr
    assert 'global batch 16 (2 process(es) on cpu)' in double.stdout
    assert sum(line.startswith('epoch ') for line in double.stdout.splitlines()) == 2  # the first process reports
    assert [load_state(tmp_path / run / 'last.pth')['num_updates'] for run in ('one', 'two')] == [4, 4]

    one, two = (safetensors.torch.load_file(tmp_path / run / 'model.safetensors') for run in ('one', 'two'))
    random_seed(0, 0)  # the common start
    start = dict(timm.create_model('cmt_ti', img_size=32, num_classes=2, drop_rate=0.).named_parameters())
    # each weight tensor made the same moves, to 1% of its largest move (float sums in other orders)
    for name, p in start.items():
        moved = (one[name] - p.detach()).abs().max().item()
        assert (two[name] - one[name]).abs().max().item() <= 0.01 * moved + 1e-6, name
    moved_one = torch.cat([(one[n] - p.detach()).flatten() for n, p in start.items()])
    moved_two = torch.cat([(two[n] - p.detach()).flatten() for n, p in start.items()])
    assert moved_one.norm() > 0.1  # the weights did move, and the same way
    assert (moved_two - moved_one).norm() < 0.01 * moved_one.norm()
