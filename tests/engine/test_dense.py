"""The skeleton detection and segmentation share: the same shared flags with the same defaults on both
tasks' commands, and weight files in the format a dense run exports (written here as the exporting code
writes them: a .safetensors file whose header holds the metadata as JSON under 'cmtnet') loading into
the model they were taken from, with the same outputs."""
import argparse
import json

import pytest
import safetensors.torch
import torch

from cmtnet.cli import build_parser
from cmtnet.detection import build_detector, detector_from_checkpoint
from cmtnet.detection.builders import DETECTION
from cmtnet.detection.options import DetectEvalOptions, DetectOptions, DetectPredictOptions
from cmtnet.engine.dense import DenseEvalOptions, DensePredictOptions, DenseTrainOptions
from cmtnet.engine.options import parse
from cmtnet.errors import InputError
from cmtnet.segmentation import build_segmenter
from cmtnet.segmentation.models import SEGMENTATION, segmenter_from_checkpoint
from cmtnet.segmentation.options import SegmentEvalOptions, SegmentOptions, SegmentPredictOptions

SHARED = ('checkpoint', 'device', 'amp', 'precision', 'config')
SHARED_TRAINING = ('batch_size', 'opt', 'warmup_epochs', 'min_lr', 'workers')


def _actions(*words):
    """{flag: argparse action} of `cmtnet WORDS...`."""
    parser = build_parser()
    for word in words:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return {flag: action for action in parser._actions for flag in action.option_strings}


@pytest.mark.parametrize('command', ['eval', 'predict'])
def test_both_tasks_take_the_shared_flags_alike(command):
    detect, segment = _actions('detect', command), _actions('segment', command)
    for name in SHARED:
        flag = '--' + name
        ours, theirs = detect[flag], segment[flag]
        assert (ours.choices, ours.metavar, ours.dest) == (theirs.choices, theirs.metavar, theirs.dest), flag
    assert detect['--precision'].choices == segment['--precision'].choices == ['fp32', 'bf16']
    # the help of --checkpoint names the task's own runs
    assert 'detection run' in detect['--checkpoint'].help and 'runs/detect/' in detect['--checkpoint'].help
    assert 'segmentation run' in segment['--checkpoint'].help and 'runs/segment/' in segment['--checkpoint'].help


def _listed(*words):
    """The destinations of `cmtnet WORDS... --help`'s options, in the order the help lists them."""
    parser = build_parser()
    for word in words:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return [a.dest for group in parser._action_groups for a in group._group_actions if a.dest != 'help']


@pytest.mark.parametrize('words, listed', [
    (('detect', 'eval'), ['checkpoint', 'min_size', 'max_size', 'batch_size', 'output', 'device', 'amp', 'precision',
                          'config', 'data', 'val_images', 'val_annotations', 'strict', 'workers']),
    (('segment', 'eval'), ['checkpoint', 'slide', 'flip', 'scales', 'device', 'amp', 'precision', 'config', 'data',
                           'val_images', 'val_masks', 'classes', 'num_classes', 'strict', 'workers']),
    (('detect', 'predict'), ['inputs', 'checkpoint', 'score_threshold', 'min_size', 'max_size', 'output', 'json',
                             'device', 'amp', 'precision', 'config']),
    (('segment', 'predict'), ['inputs', 'checkpoint', 'slide', 'flip', 'scales', 'output', 'json', 'device', 'amp',
                              'precision', 'config']),
])
def test_help_lists_the_task_options_before_the_shared_ones(words, listed):
    """Each task's own options come first in --help, then where and how it runs, as before the shared base."""
    assert _listed(*words) == listed


@pytest.mark.parametrize('detect, segment, base', [
    (DetectEvalOptions, SegmentEvalOptions, DenseEvalOptions),
    (DetectPredictOptions, SegmentPredictOptions, DensePredictOptions),
    (DetectOptions, SegmentOptions, DenseTrainOptions),
])
def test_the_shared_options_have_the_same_defaults(detect, segment, base):
    assert issubclass(detect, base) and issubclass(segment, base)
    names = SHARED_TRAINING if base is DenseTrainOptions else SHARED
    ours, theirs = parse(detect, []), parse(segment, [])
    assert {n: getattr(ours, n) for n in names} == {n: getattr(theirs, n) for n in names}
    if base is DenseTrainOptions:
        assert (ours.batch_size, ours.opt, ours.warmup_epochs, ours.min_lr, ours.workers) == (2, 'adamw', 0, 0.0, 2)
    else:
        assert (ours.checkpoint, ours.device, ours.amp, ours.precision) == (None, None, 'auto', 'fp32')
        assert parse(segment, ['--precision', 'bf16']).precision == 'bf16'


def _write_export(path, model, meta):
    """A weight file as a dense run exports it: the weights, and the metadata as JSON in the header."""
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(tensors, str(path), metadata={'format': 'pt', 'cmtnet': json.dumps(meta)})


def test_a_detection_export_loads_into_the_detector_it_was_taken_from(tmp_path):
    torch.manual_seed(0)
    model = build_detector('fcos', 'cmt_ti', 3, min_size=96, max_size=96, anchor_sizes=None).eval()
    meta = dict(task='detection', detector='fcos', model='cmt_ti', num_classes=3, class_names=['a', 'b', 'c'],
                category_ids=[1, 2, 5], min_size=96, max_size=96, anchor_sizes=None)
    _write_export(tmp_path / 'model.safetensors', model, meta)
    loaded, read = detector_from_checkpoint(tmp_path / 'model.safetensors')
    assert read == meta and not loaded.training
    image = torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = model([image])[0], loaded([image])[0]
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    _, resized = detector_from_checkpoint(tmp_path / 'model.safetensors', min_size=64, max_size=None)
    assert (resized['min_size'], resized['max_size']) == (64, 96)  # None keeps the stored size


def test_a_segmentation_export_loads_into_the_segmenter_it_was_taken_from(tmp_path):
    torch.manual_seed(0)
    model = build_segmenter('fpn', 'cmt_ti', 3).eval()
    meta = dict(task='segmentation', head='fpn', model='cmt_ti', num_classes=3, class_names=['x', 'y', 'z'],
                crop_size=64, scale=[128, 64], slide=False)
    _write_export(tmp_path / 'model.safetensors', model, meta)
    loaded, read = segmenter_from_checkpoint(tmp_path / 'model.safetensors')
    assert read == meta and not loaded.training
    image = torch.rand(1, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(image), loaded(image))


def test_an_export_of_the_other_task_or_of_another_model_is_one_named_error(tmp_path):
    torch.manual_seed(0)
    model = build_segmenter('fpn', 'cmt_ti', 3)
    meta = dict(task='segmentation', head='fpn', model='cmt_ti', num_classes=3, class_names=['x', 'y', 'z'],
                crop_size=64, scale=[128, 64], slide=False)
    _write_export(tmp_path / 'seg.safetensors', model, meta)
    with pytest.raises(InputError, match='not written by `cmtnet detect train`'):
        DETECTION.meta(tmp_path / 'seg.safetensors')
    with pytest.raises(InputError, match='--checkpoint is required: a weight file written by `cmtnet segment train`'):
        SEGMENTATION.meta(None)
    _write_export(tmp_path / 'other.safetensors', model, dict(meta, model='cmt_xs'))
    with pytest.raises(InputError, match='cannot load .*other.safetensors into fpn on cmt_xs'):
        segmenter_from_checkpoint(tmp_path / 'other.safetensors')
