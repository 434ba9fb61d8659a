"""Segmentation end to end on the engine: a tiny run trains, a killed run resumes exactly, eval reproduces
the mIoU the run logged from the checkpoint alone, predict writes an overlay and a label mask per image,
and bad input is one line. Semantic FPN-CMT-Ti on 64x64 crops of a few generated images."""
import csv
import logging
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from cmtnet.cli import main
from cmtnet.engine.optim import create_scheduler
from cmtnet.engine.report import TIMING_COLUMNS
from cmtnet.segmentation.models import SEGMENTATION
from cmtnet.segmentation.commands import parse_options
from cmtnet.segmentation.task import SegmentationTask
from cmtnet.runtime import distributed
from killed_runs import kill_after_first_checkpoint, run_here

CLASSES = ['background', 'red', 'blue']
TINY = ['--model', 'cmt_ti', '--crop-size', '64', '--scale', '128', '64', '--batch-size', '2', '--workers', '0',
        '--lr', '1e-3', '--no-progress']


def _write_pair(images: Path, masks: Path, name: str, seed: int, size: int = 64) -> None:
    """A noisy grey image with a red and a blue square, and its mask (0 background, 1 red, 2 blue)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(90, 160, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), dtype=np.uint8)
    for label, colour in ((1, (220, 30, 30)), (2, (30, 30, 220))):
        side = int(rng.integers(size // 4, size // 2))
        top, left = (int(v) for v in rng.integers(0, size - side, 2))
        pixels[top:top + side, left:left + side] = colour
        mask[top:top + side, left:left + side] = label
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(images / f'{name}.png')
    Image.fromarray(mask).save(masks / f'{name}.png')


def _mask_set(root: Path, train: int = 4, val: int = 2) -> List[str]:
    for split, count in (('train', train), ('val', val)):
        for i in range(count):
            _write_pair(root / split / 'images', root / split / 'masks', f'{split}{i}', seed=i + 100 * (split == 'val'))
    (root / 'classes.txt').write_text('\n'.join(CLASSES) + '\n')
    return ['--train-images', str(root / 'train' / 'images'), '--train-masks', str(root / 'train' / 'masks'),
            '--val-images', str(root / 'val' / 'images'), '--val-masks', str(root / 'val' / 'masks'),
            '--classes', str(root / 'classes.txt')]


def _metrics(run: Path) -> List[Dict[str, str]]:
    with open(run / 'metrics.csv') as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> List[str]:
    return _mask_set(tmp_path_factory.mktemp('masks'))


@pytest.fixture(scope='module')
def whole(tmp_path_factory, data) -> Path:
    """An uninterrupted run of 2 epochs of 2 updates, a checkpoint after every update."""
    run = tmp_path_factory.mktemp('runs') / 'whole'
    status, out = run_here(['segment', 'train', *data, *TINY, '--epochs', '2', '--checkpoint-interval', '1',
                            '--output', str(run)])
    assert status == 0
    assert out.strip().splitlines()[-1].startswith('done: mIoU ')
    return run


def test_the_run_logs_miou_macc_aacc_and_its_weights_carry_what_eval_needs(whole):
    rows = _metrics(whole)
    assert [r['epoch'] for r in rows] == ['1', '2']
    for row in rows:
        assert all(0 <= float(row[k]) <= 100 for k in ('mIoU', 'mAcc', 'aAcc')) and float(row['train_loss']) > 0
    meta = SEGMENTATION.meta(whole / 'model.safetensors')
    assert meta == dict(task='segmentation', head='fpn', model='cmt_ti', num_classes=3, class_names=CLASSES,
                        crop_size=64, scale=[128, 64], slide=False)
    assert SEGMENTATION.meta(whole / 'best.safetensors')['class_names'] == CLASSES


def test_resume_after_sigkill_matches_an_uninterrupted_run(whole, data, tmp_path):
    args = [*data, *TINY, '--epochs', '2', '--checkpoint-interval', '1']
    broken = tmp_path / 'broken'
    kill_after_first_checkpoint(['segment', 'train', *args], broken)
    assert run_here(['segment', 'train', *args, '--output', str(broken), '--resume'])[0] == 0
    a, b = (safetensors.torch.load_file(run / 'model.safetensors') for run in (whole, broken))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    drop = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]  # noqa: E731
    assert drop(_metrics(broken)) == drop(_metrics(whole))


def test_eval_reproduces_the_logged_miou_from_the_checkpoint_alone(whole, data, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the run's process had: the same sums, pixel for pixel
    try:
        assert main(['segment', 'eval', '--checkpoint', str(whole / 'model.safetensors'), *data[4:8],
                     '--workers', '0']) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out.strip().splitlines()
    logged = _metrics(whole)[-1]
    assert out[-1] == (f'mIoU {float(logged["mIoU"]):.2f}  mAcc {float(logged["mAcc"]):.2f}  '
                       f'aAcc {float(logged["aAcc"]):.2f}')
    table = out[1:-2]
    assert table[0].split() == ['class', 'IoU', 'Acc'] and [line.split()[0] for line in table[1:]] == CLASSES
    assert out[-2].startswith("(every pixel 'background', the most common class: mIoU ")
    assert 'fpn on cmt_ti' in out[0]


def test_eval_takes_the_training_class_flags_and_checks_them(whole, data, tmp_path, capsys):
    """The data flags as training took them, --classes included, evaluate; class flags that do not describe
    the checkpoint's classes are one line naming both."""
    evaluate = ['segment', 'eval', '--checkpoint', str(whole / 'model.safetensors'), *data[4:8], '--workers', '0']
    assert data[8] == '--classes'
    assert main([*evaluate, *data[8:10]]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith('mIoU ')
    (tmp_path / 'other.txt').write_text('background\nred\ngreen\n')
    for flags, names in ((['--num-classes', '2'], 'not the 2 of the class flags (0, 1)'),
                         (['--classes', str(tmp_path / 'other.txt')], '(background, red, green)')):
        assert main([*evaluate, *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and 'trained on 3 classes (background, red, blue)' in err[0] and names in err[0]


def test_predict_writes_an_overlay_and_a_label_mask_per_image_with_distinct_names(whole, tmp_path, capsys, caplog):
    for folder in ('a', 'b'):
        _write_pair(tmp_path / 'in' / folder, tmp_path / 'unused', 'x', seed=7)
    (tmp_path / 'in' / 'a' / 'broken.jpg').write_bytes(b'not an image')
    with caplog.at_level(logging.WARNING):
        assert main(['segment', 'predict', '--checkpoint', str(whole / 'model.safetensors'), str(tmp_path / 'in'),
                     '--output', str(tmp_path / 'out')]) == 0
    assert 'broken.jpg' in caplog.text
    for kind in ('overlays', 'masks'):
        assert sorted(p.name for p in (tmp_path / 'out' / kind).iterdir()) == ['a_x.png', 'b_x.png']
    with Image.open(tmp_path / 'out' / 'masks' / 'a_x.png') as mask:
        assert mask.mode == 'P' and mask.size == (64, 64) and int(np.asarray(mask).max()) < len(CLASSES)
    with Image.open(tmp_path / 'out' / 'overlays' / 'a_x.png') as drawn:
        assert drawn.mode == 'RGB' and drawn.size == (64, 64)
    out = capsys.readouterr().out
    assert out.count('%') >= 2 and 'broken.jpg:' not in out


def test_a_malformed_mask_set_is_one_line_or_a_named_skip(data, tmp_path, capsys, caplog):
    root = tmp_path / 'bad'
    args = _mask_set(root, train=2, val=1)
    Image.fromarray(np.full((64, 64), 7, dtype=np.uint8)).save(root / 'train' / 'masks' / 'train1.png')
    run = ['segment', 'train', *args, *TINY, '--epochs', '1', '--output', str(tmp_path / 'r')]
    assert main([*run, '--strict']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'train1.png has values 7, outside 0..2 and not 255 (--strict)' in err[0]
    assert main(run[:-2] + ['--batch-size', '4', '--output', str(tmp_path / 'r')]) == 2  # one usable pair left
    captured = capsys.readouterr()
    assert 'skipped 1 mask(s) with values outside the classes' in caplog.text
    assert len(captured.err.strip().splitlines()) == 1 and 'fewer than one batch of 4' in captured.err
    no_classes = [a for a in args if a != '--classes' and not a.endswith('classes.txt')]
    assert main(['segment', 'train', *no_classes, '--output', str(tmp_path / 'r')]) == 2
    assert '--classes FILE' in capsys.readouterr().err
    assert main(['segment', 'eval', '--val-images', args[5], '--val-masks', args[7]]) == 2
    assert '--checkpoint is required' in capsys.readouterr().err
    assert main(['segment', 'train', *args, '--hflip', '1.5', '--output', str(tmp_path / 'r')]) == 2
    assert '--hflip must be a probability in [0, 1], got 1.5' in capsys.readouterr().err
    assert main(['segment', 'train', '--data', str(tmp_path / 'none'), '--output', str(tmp_path / 'r')]) == 2
    assert "expected ADE20K's release layout" in capsys.readouterr().err
    one_image = ['--batch-size', '1', '--head', 'upernet']  # the last of a repeated flag wins
    assert main(['segment', 'train', *args, *TINY, *one_image, '--output', str(tmp_path / 'r')]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and '--head upernet trains with at least 2 images per process' in err[0]
    assert not (tmp_path / 'r').exists()


def test_the_defaults_are_the_semantic_fpn_recipe_and_the_demo_config_parses():
    o = parse_options([])
    assert (o.head, o.model, o.opt, o.lr, o.lr_base, o.lr_base_size, o.weight_decay, o.sched, o.decay_rate,
            o.warmup_epochs, o.min_lr, o.crop_size, o.scale, o.epochs, o.output) == (
        'fpn', 'cmt_s', 'adamw', None, 1e-4, 16, 1e-4, 'poly', 0.9, 0, 0.0, 512, None, 64, 'runs/segment')
    assert 20210 // 16 * o.epochs >= 80000  # ADE20K at a global batch of 16: the 80k schedule
    demo = parse_options(['--config', str(Path(__file__).parents[2] / 'configs' / 'segment_demo.yaml')])
    assert demo.data is None and demo.backbone_weights is None  # the embedded set; no file outside the repository
    assert (demo.head, demo.model, demo.sched) == ('fpn', 'cmt_ti', 'poly')


@pytest.mark.parametrize('flags, expected', [([], (96, 64)), (['--scale', '300', '100'], (300, 100))])
def test_without_scale_the_base_scale_is_the_median_size_of_the_users_images(tmp_path, capsys, flags, expected):
    """The demo config is written for the embedded set: with data flags it must not impose that set's scale."""
    sizes = {'a': (96, 64), 'b': (64, 96), 'c': (96, 64), 'd': (200, 40)}  # median long 96, short 64
    folders = []
    for split in ('train', 'val'):
        for kind in ('images', 'masks'):
            (tmp_path / split / kind).mkdir(parents=True)
            folders += [f'--{split}-{kind}', str(tmp_path / split / kind)]
        for name, (width, height) in sizes.items():
            Image.new('RGB', (width, height)).save(tmp_path / split / 'images' / f'{name}.jpg')
            Image.new('L', (width, height)).save(tmp_path / split / 'masks' / f'{name}.png')
    demo = Path(__file__).parents[2] / 'configs' / 'segment_demo.yaml'
    o = parse_options(['--config', str(demo), '--num-classes', '2', '--batch-size', '2', *folders, *flags])
    task = SegmentationTask(o)
    with distributed('cpu') as processes:
        task.setup(processes)
    assert task.protocol.scale == expected and SegmentationTask.meta(task)['scale'] == list(expected)
    why = '--scale' if flags else 'the median size of the 4 train images (--scale LONG SHORT sets another)'
    assert f'base scale {expected[0]}x{expected[1]} (long x short side): {why}' in capsys.readouterr().out.splitlines()


def test_the_poly_schedule_decays_as_mmseg_does():
    o = parse_options(['--epochs', '10'])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler, epochs = create_scheduler(optimizer, o, updates_per_epoch=10)
    assert epochs == 10
    for update in (0, 50, 90):
        scheduler.step_update(num_updates=update)
        assert optimizer.param_groups[0]['lr'] == pytest.approx((1 - update / 100) ** 0.9)


def test_eval_and_predict_at_bf16_agree_with_fp32(whole, data, tmp_path, capsys):
    checkpoint = str(whole / 'model.safetensors')
    summary, masks = {}, {}
    for precision in ('fp32', 'bf16'):
        assert main(['segment', 'eval', '--checkpoint', checkpoint, *data[4:8], '--workers', '0',
                     '--precision', precision]) == 0
        printed = capsys.readouterr().out.strip().splitlines()
        path = 'fp32 unfolded' if precision == 'fp32' else 'bf16 folded on the CPU fast path'
        assert any(f' on cmt_ti in {path}, ' in line for line in printed)  # the header says how it ran
        last = printed[-1].split()
        summary[precision] = dict(zip(last[::2], map(float, last[1::2])))
        out = tmp_path / precision
        assert main(['segment', 'predict', '--checkpoint', checkpoint, data[5], '--output', str(out),
                     '--precision', precision]) == 0
        masks[precision] = {p.name: np.asarray(Image.open(p)) for p in sorted((out / 'masks').iterdir())}
    assert summary['fp32'].keys() == summary['bf16'].keys() == {'mIoU', 'mAcc', 'aAcc'}
    assert all(abs(summary['bf16'][k] - summary['fp32'][k]) <= 2 for k in summary['fp32'])
    assert masks['bf16'].keys() == masks['fp32'].keys() and len(masks['fp32']) == 2
    for name, mask in masks['fp32'].items():
        assert (masks['bf16'][name] == mask).mean() >= 0.97
