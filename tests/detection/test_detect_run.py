"""Detection end to end: a short training raises AP50, a killed run resumes exactly, eval and predict
work from the checkpoint alone, bad input is one line. CMT-Ti FCOS at 96x96 on a few generated images."""
import csv
import json
from pathlib import Path
from typing import Dict, List

import pytest
import safetensors.torch
import torch
from timm.utils import random_seed

from cmtnet.cli import main
from cmtnet.detection import build_detector
from cmtnet.detection.data import coco_layout
from cmtnet.detection.options import DetectOptions
from cmtnet.detection.synthetic import SyntheticSpec
from cmtnet.detection.task import DetectionTask
from cmtnet.engine.report import TIMING_COLUMNS
from cmtnet.engine.trainer import fit
from cmtnet.errors import InputError
from cmtnet.runtime import Processes
from coco_sets import box, image, tiny_synthetic, write_coco
from killed_runs import kill_after_first_checkpoint, run_here

# four images of one digit each, trained and scored on the same images: a detector learns them in a few steps
FOUR = SyntheticSpec(train_images=4, val_images=4, image_size=96, min_digit=32, max_digit=44, max_objects=1)
TINY = ['--detector', 'fcos', '--model', 'cmt_ti', '--min-size', '96', '--max-size', '96', '--batch-size', '2',
        '--workers', '0', '--warmup-updates', '0', '--lr', '1e-3', '--no-progress']


def _data(root: Path) -> List[str]:
    layout = coco_layout(tiny_synthetic(root, FOUR))
    (train_images, train_ann), (val_images, val_ann) = layout['train'], layout['val']
    return ['--train-images', str(train_images), '--train-annotations', str(train_ann),
            '--val-images', str(val_images), '--val-annotations', str(val_ann)]


def _metrics(run: Path) -> List[Dict[str, str]]:
    with open(run / 'metrics.csv') as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> List[str]:
    return _data(tmp_path_factory.mktemp('coco'))


@pytest.fixture(scope='module')
def whole(tmp_path_factory, data) -> Path:
    """An uninterrupted run of 2 epochs of 2 updates (flips on, a checkpoint after every update)."""
    run = tmp_path_factory.mktemp('runs') / 'whole'
    assert run_here(['detect', 'train', *data, *TINY, '--epochs', '2', '--checkpoint-interval', '1',
                     '--output', str(run)])[0] == 0
    return run


def test_a_short_training_raises_ap50(tmp_path):
    root = tiny_synthetic(tmp_path / 'coco', FOUR)
    (images, annotations), _ = coco_layout(root).values()
    options = DetectOptions(
        train_images=str(images), train_annotations=str(annotations), val_images=str(images),
        val_annotations=str(annotations), detector='fcos', model='cmt_ti', min_size=96, max_size=96, batch_size=4,
        workers=0, epochs=10, sched='constant', warmup_updates=0, lr=1e-3, hflip=0, progress=False,
        output=str(tmp_path / 'run'))
    task = DetectionTask(options)
    task.setup(Processes(torch.device('cpu')))
    random_seed(options.seed, 0)
    before = task.evaluate(task.build_model())['bbox_AP50']
    fit(task, options)
    rows = _metrics(tmp_path / 'run')
    columns = list(rows[0])
    first = columns.index('bbox_AP')  # COCO's twelve numbers, in order
    assert columns[first:first + 12] == [f'bbox_{n}' for n in ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1',
                                                               'AR10', 'AR100', 'ARs', 'ARm', 'ARl')]
    after = max(float(r['bbox_AP50']) for r in rows)
    assert before < 0.1 and after >= 0.3, (before, [r['bbox_AP50'] for r in rows])


def test_resume_after_sigkill_matches_an_uninterrupted_run(whole, data, tmp_path):
    args = [*data, *TINY, '--epochs', '2', '--checkpoint-interval', '1']
    broken = tmp_path / 'broken'
    kill_after_first_checkpoint(['detect', 'train', *args], broken)

    assert run_here(['detect', 'train', *args, '--output', str(broken), '--resume'])[0] == 0
    for name in ('model.safetensors', 'best.safetensors'):
        a, b = (safetensors.torch.load_file(run / name) for run in (whole, broken))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    drop = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]  # noqa: E731
    assert drop(_metrics(broken)) == drop(_metrics(whole))


def test_eval_and_predict_need_only_the_checkpoint(whole, data, tmp_path, capsys):
    checkpoint = str(whole / 'model.safetensors')
    val = data[4:]
    assert main(['detect', 'eval', '--checkpoint', checkpoint, *val, '--workers', '0', '--output', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count('Average Precision') == 6 and out.count('Average Recall') == 6 and 'fcos on cmt_ti' in out
    assert isinstance(json.loads((tmp_path / 'coco_results.json').read_text()), list)
    last = float(_metrics(whole)[-1]['bbox_AP'])
    assert f'= {max(last, 0):.3f}' in out.splitlines()[2]  # the same AP as the run's last epoch

    images = Path(val[1])
    assert main(['detect', 'predict', '--checkpoint', checkpoint, str(images), '--score-threshold', '0.0',
                 '--output', str(tmp_path / 'drawn')]) == 0
    found = json.loads((tmp_path / 'drawn' / 'detections.json').read_text())
    assert len(found) == 4 and all(Path(item['drawn']).is_file() for item in found)
    assert {'box', 'class', 'category_id', 'score'} <= set(found[0]['detections'][0])


def test_eval_and_predict_in_bf16_find_what_fp32_finds(whole, data, tmp_path, capsys):
    checkpoint = str(whole / 'model.safetensors')
    val, images = data[4:], data[5]
    aps, found = {}, {}
    for precision in ('fp32', 'bf16'):
        out = tmp_path / precision
        assert main(['detect', 'eval', '--checkpoint', checkpoint, *val, '--workers', '0', '--output', str(out),
                     '--precision', precision]) == 0
        printed = capsys.readouterr().out.splitlines()
        aps[precision] = float(printed[2].rsplit('=', 1)[1])
        path = 'fp32 unfolded' if precision == 'fp32' else 'bf16 folded on the CPU fast path'
        assert printed[0].startswith(f'fcos on cmt_ti in {path}, ')  # the header says how it ran
        assert main(['detect', 'predict', '--checkpoint', checkpoint, images, '--score-threshold', '0.3',
                     '--output', str(out), '--precision', precision]) == 0
        found[precision] = json.loads((out / 'detections.json').read_text())
        capsys.readouterr()
    assert abs(aps['bf16'] - aps['fp32']) <= 0.05
    for ours, theirs in zip(found['bf16'], found['fp32']):
        if theirs['detections'] and ours['detections']:  # the best box of each image, within a few pixels
            best, ref = ours['detections'][0], theirs['detections'][0]
            assert best['class'] == ref['class']
            assert max(abs(a - b) for a, b in zip(best['box'], ref['box'])) <= 3


def test_a_detector_in_bf16_runs_its_backbone_and_heads_in_bfloat16_and_decodes_in_float32():
    from cmtnet.detection.builders import detector_in_precision
    from cmtnet.models.fast_path import FastCMTBlock
    from cmtnet.models.fuse import FusedCMTBlock
    from cmtnet.runtime import InPrecision
    model = build_detector('maskrcnn', 'cmt_ti', 3, min_size=96, max_size=96).eval()
    fast = detector_in_precision(model, 'bf16', torch.device('cpu'))
    assert isinstance(fast.backbone, InPrecision) and isinstance(fast.roi_heads.mask_predictor, InPrecision)
    assert any(isinstance(m, FastCMTBlock) for m in fast.modules())  # folded, on the CPU fast path
    assert not any(isinstance(m, (FusedCMTBlock, FastCMTBlock)) for m in model.modules())  # the fp32 model is left
    # for another device: the plain fold, without the CPU fast path
    other = detector_in_precision(model, 'bf16', torch.device('meta'))
    assert any(isinstance(m, FusedCMTBlock) for m in other.modules())
    assert not any(isinstance(m, FastCMTBlock) for m in other.modules())
    with torch.inference_mode():
        out = fast([torch.rand(3, 96, 96)])[0]
    assert out['boxes'].dtype == out['scores'].dtype == out['masks'].dtype == torch.float32
    with pytest.raises(InputError, match='fp16'):
        detector_in_precision(model, 'fp16', torch.device('cpu'))


def test_bad_input_is_one_line_before_any_model_is_built(tmp_path, capsys):
    path = write_coco(tmp_path, [image(1), image(2)], [box(10, 1), box(11, 2, bbox=(1, 1, 0, 5))])
    images = str(tmp_path / 'images')
    assert main(['detect', 'train', '--train-images', images, '--train-annotations', str(tmp_path / 'nope.json'),
                 '--val-images', images, '--val-annotations', str(path), '--output', str(tmp_path / 'r')]) == 2
    assert f'annotation file {tmp_path / "nope.json"} does not exist' in capsys.readouterr().err
    assert main(['detect', 'train', '--train-images', images, '--train-annotations', str(path), '--val-images',
                 images, '--val-annotations', str(path), '--strict', '--output', str(tmp_path / 'r')]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and 'annotation id 11 has a box of zero or negative size' in err
    assert main(['detect', 'train', '--data', str(tmp_path / 'none'), '--output', str(tmp_path / 'r')]) == 2
    assert 'no such folder' in capsys.readouterr().err
    assert main(['detect', 'train', '--hflip', '1.5', '--output', str(tmp_path / 'r')]) == 2
    assert '--hflip must be a probability in [0, 1], got 1.5' in capsys.readouterr().err
    assert main(['detect', 'eval', '--output', str(tmp_path)]) == 2
    assert '--checkpoint is required' in capsys.readouterr().err
    assert not (tmp_path / 'r').exists()


def test_the_defaults_are_the_1x_schedule_and_the_demo_config_parses():
    from cmtnet.detection.commands import parse_options
    o = parse_options([])
    assert (o.detector, o.model, o.opt, o.lr, o.weight_decay, o.epochs, o.sched, o.decay_milestones, o.decay_rate,
            o.warmup_updates, o.min_size, o.max_size, o.output) == (
        'retinanet', 'cmt_s', 'adamw', 1e-4, 0.05, 12, 'multistep', [8, 11], 0.1, 500, 800, 1333, 'runs/detect')
    demo = parse_options(['--config', str(Path(__file__).parents[2] / 'configs' / 'detect_demo.yaml')])
    assert demo.data is None and demo.backbone_weights is None  # the embedded set; no file outside the repository
    assert (demo.detector, demo.model, demo.min_size) == ('fcos', 'cmt_ti', 128)


def test_position_biases_get_no_weight_decay():
    task = DetectionTask(DetectOptions(detector='fcos', model='cmt_ti'))
    model = build_detector('fcos', 'cmt_ti', 3)
    exempt = task.no_weight_decay(model)
    assert len(exempt) == 4 and all(name.endswith('rel_pos_bias') for name in exempt)
    assert exempt <= dict(model.named_parameters()).keys()
