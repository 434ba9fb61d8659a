"""Every script in benchmarks/ runs, on a tiny configuration, so that none of them rots unseen.

Each runs as a user runs it (`python benchmarks/x.py ...`, `bash benchmarks/x.sh`), in a process of its
own (the Python ones forked from one that has imported torch, timm and cmtnet: tests/forked.py); the GPU
scripts in their CPU dry-run mode. What they measure is not checked here, only that they run to the end and
print their report.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
from PIL import Image

import cmtnet  # noqa: F401  (registers the models)
from cmtnet.checkpoints import export_weights
from cmtnet.segmentation.data import class_names, read_mask_set
import forked
from image_folders import make_image_folder

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / 'benchmarks'
FIXTURE = ROOT / 'tests' / 'data' / 'cmt_ti_160.json'

# script -> (arguments, a line its report prints); {tmp} is a temporary folder
TINY = {
    'bench_inference.py': (['--models', 'cmt_ti', '--paths', 'eager', 'fused_cl', '--baseline', 'cmt_ti:eager',
                            '--batch-size', '1', '--warmup', '0', '--rounds', '1', '--peak-gflops', '100'],
                           '| cmt_ti | fused_cl | fp32 |'),
    'bench_checkouts.py': ([str(ROOT / 'src'), str(ROOT / 'src'), '--model', 'cmt_ti', '--paths', 'fused_cl',
                            '--precision', 'fp32', '--batch-size', '1', '--warmup', '0', '--rounds', '1'],
                           '| fused_cl | fp32 |'),
    'forward_cpu.py': (['--models', 'cmt_ti', '--img-size', '64', '--batch-size', '1', '--warmup', '0',
                        '--rounds', '1'], 'cmt_ti'),
    'train_throughput.py': (['--model', 'cmt_ti', '--img-size', '32', '--batch-size', '2', '--variants', 'eager',
                             'channels-last', '--against', 'resnet18', '--warmup', '1', '--rounds', '1'],
                            'plain training step'),
    'gpu_model_check.py': (['--device', 'cpu', '--variants', 'cmt_ti', '--train-batch-size', '1', '--batch-size', '1',
                            '--warmup', '0', '--iters', '1', '--rounds', '1', '--fixture', str(FIXTURE),
                            '--json', '{tmp}/results.json'], 'all checks passed'),
    'gpu_detection_check.py': (['--device', 'cpu', '--model', 'cmt_ti', '--size', '128', '160', '--batch-size', '1',
                                '--amp', 'none', '--warmup', '1', '--rounds', '1', '--json', '{tmp}/detection.json'],
                               '| maskrcnn |'),
    'gpu_segmentation_check.py': (['--device', 'cpu', '--model', 'cmt_ti', '--size', '64', '--batch-size', '2',
                                   '--amp', 'none', '--warmup', '1', '--rounds', '1',
                                   '--json', '{tmp}/segmentation.json'], '| upernet |'),
    'detection_precision.py': (['--model', 'cmt_ti', '--size', '96', '128', '--warmup', '0', '--rounds', '1'],
                               '| bf16 |'),
    'photo_classification_set.py': (['{tmp}/photo_cls_set', '--train', '10', '--val', '10', '--size', '64'],
                                     'val: 10 images of 10 classes'),
    # the accuracy scripts on a tiny ImageFolder of their own ({tmp}/colours) rather than the 360 digits
    'precision_accuracy.py': (['--eval', '{tmp}/colours.safetensors', '{tmp}/colours', '--precisions', 'fp32', 'bf16',
                               'int8', '--reference-ops', '--calibration', '8', '--batch-size', '64',
                               '--max-drop', '100'], '| bf16 |'),
    'int8_accuracy.py': (['--eval', '{tmp}/colours.safetensors', '{tmp}/colours', '--precisions', 'fp32', 'int8',
                          '--reference-ops', '--calibrations', 'minmax', '--calibration-size', '8', '--batch-size',
                          '64', '--max-drop', '100', '--time', 'none'],
                         '| minmax |'),
    'photo_detection_set.py': (['{tmp}/photo_set', '--train', '3', '--val', '2'], 'val: 2 images'),
    'serve_load.py': (['--checkpoint', '{tmp}/model.safetensors', '--precision', 'fp32', '--concurrency', '1', '2',
                       '--seconds', '1', '--rounds', '1', '--max-batch-size', '2'], '| fp32 | 1 |'),
    'serve_screenshot.py': (['--checkpoint', '{tmp}/model.safetensors', '--output', '{tmp}/serve.png'], 'serve.png'),
    'photo_segmentation_set.py': (['{tmp}/photo_seg_set', '--train', '4', '--val', '2'], 'val: 2 images'),
    'segmentation_fidelity.py': (['--models', 'cmt_ti', 'twins_svt_small', '--sizes', '64x64', '64x96'],
                                 '| twins_svt_small | upernet |'),
    'profile_forward.py': (['--model', 'cmt_ti', '--path', 'fused_cl', '--precision', 'bf16', '--batch-size', '1',
                            '--warmup', '0', '--rounds', '1'], 'ms per step'),
    'padded_gelu.py': (['--shapes', '16', '8', '--model', 'cmt_ti', '--img-size', '64', '--compiled', '--backend',
                        'eager', '--batch-size', '2', '--warmup', '0', '--rounds', '1'],
                       '| folded cmt_ti, compiled (eager) | bfloat16 |'),
    'compiled_micro_batches.py': (['--model', 'cmt_ti', '--img-size', '64', '--batch-size', '2', '--precision',
                                   'bf16', '--warmup', '0', '--rounds', '1', '--backend', 'eager'],
                                  '| bf16 |'),
    'autocast_training.py': (['--model', 'cmt_ti', '--batch-size', '2', '--warmup', '0', '--rounds', '1'],
                             '| bf16 autocast, rules off |'),
    'gpu_train_check.sh': (['{tmp}/out', '--data', '{tmp}/data', '--batch-size', '4'],
                           '== last metrics row'),
}
# imported by the scripts, not run on its own
MODULES = {'timing.py'}


def test_every_script_has_a_tiny_run():
    scripts = {p.name for p in BENCHMARKS.iterdir() if p.suffix in ('.py', '.sh')}
    assert scripts - MODULES == set(TINY)


@pytest.mark.parametrize('script', sorted(TINY))
def test_script_runs_on_a_tiny_configuration(script, tmp_path):
    args, expected = TINY[script]
    args = [a.replace('{tmp}', str(tmp_path)) for a in args]
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    if script.endswith('.sh'):
        make_image_folder(tmp_path / 'data', per_class=4)
        env.update(DRY_RUN='1', BIN=str(Path(sys.executable).parent))
    # an untrained digits classifier
    if script in ('serve_load.py', 'serve_screenshot.py'):
        model = timm.create_model('cmt_ti', img_size=32, num_classes=10)
        export_weights(tmp_path / 'model.safetensors', model.state_dict(),
                       dict(model='cmt_ti', img_size=32, class_names=[str(c) for c in range(10)]))
    # an untrained classifier of the tiny folder's classes, and the folder (train: calibration, val: 8 images)
    if script in ('precision_accuracy.py', 'int8_accuracy.py'):
        make_image_folder(tmp_path / 'colours', per_class=4)
        model = timm.create_model('cmt_ti', img_size=32, num_classes=2)
        export_weights(tmp_path / 'colours.safetensors', model.state_dict(),
                       dict(model='cmt_ti', img_size=32, class_names=['blue', 'red']))
    if script.endswith('.sh'):
        result = subprocess.run(['bash', str(BENCHMARKS / script), *args], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=300)
    else:
        result = forked.shared().run(BENCHMARKS / script, args, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, f'{result.stdout[-3000:]}\n{result.stderr[-3000:]}'
    assert expected in result.stdout, result.stdout[-3000:]
    if script == 'gpu_train_check.sh':  # killed and resumed, the run ends as the uninterrupted one
        lines = result.stdout.splitlines()
        at = next(i for i, line in enumerate(lines) if line.startswith(expected))
        whole, resumed = lines[at + 1:at + 3]
        assert whole.split(',')[:-2] == resumed.split(',')[:-2]  # all but epoch_time and img_per_s
        assert re.search(r'resuming \S+ at epoch [123],', result.stdout)  # killed before the end of epoch 3
    if script == 'photo_segmentation_set.py':  # the layout `cmtnet segment train` reads, every pair usable
        root = tmp_path / 'photo_seg_set'
        names = class_names(root / 'classes.txt')
        assert names == ['background', 'cat', 'cup', 'person']
        for split, count in (('train', 4), ('val', 2)):
            mask_set = read_mask_set(root / split / 'images', root / split / 'masks', names)
            assert len(mask_set.pairs) == count and not any(mask_set.skipped.values())
            values = set().union(*(np.unique(np.asarray(Image.open(mask))).tolist() for _, mask in mask_set.pairs))
            assert 0 in values and values & {1, 2, 3} and values <= {0, 1, 2, 3, 255}
