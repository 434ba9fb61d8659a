"""`cmtnet segment train | eval | predict`: the command line of semantic segmentation.

    cmtnet segment train --config configs/segment_demo.yaml                 # the embedded digits, on CPU
    cmtnet segment train --data /path/ADEChallengeData2016 --model cmt_s --backbone-weights cmt_small.pth
    torchrun --nproc_per_node 8 -m cmtnet segment train --data /path/ade --backbone-weights cmt_small.pth
    cmtnet segment eval --checkpoint runs/segment/model.safetensors --flip --scales 0.75 1.0 1.25
    cmtnet segment predict --checkpoint runs/segment/model.safetensors photos/ --output runs/segment/predict

A checkpoint carries the head, variant, classes, crop size and evaluation scale, so eval and predict need
no other flag.
"""
import argparse
from typing import Any, Dict, Sequence

from ..engine.options import add_command, parse
from .evaluate import eval_command
from .options import SegmentEvalOptions, SegmentOptions, SegmentPredictOptions
from .predict import predict_command

__all__ = ['add_parser', 'eval_command', 'parse_options', 'predict_command', 'train_command']

_DATA = {'data': 'data (ADE20K or image and mask folders; default: the embedded digits set)'}


def train_command(options: SegmentOptions) -> Dict[str, Any]:
    """`cmtnet segment train` (the engine is imported when a run starts)."""
    from .task import train
    return train(options)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `segment` with its `train`, `eval` and `predict` subcommands."""
    parser = subparsers.add_parser('segment', help='semantic segmentation with a CMT backbone',
                                   description='Semantic FPN and UPerNet on a CMT backbone, on ADE20K or on '
                                               'folders of images and single-channel PNG masks.')
    commands = parser.add_subparsers(dest='segment_command', metavar='COMMAND', required=True)
    add_command(
        commands, 'train', SegmentOptions, train_command, groups=dict(_DATA, model='model'),
        help='train a segmenter',
        description='Train Semantic FPN or UPerNet on a CMT backbone (default: on the embedded digits set), with '
                    "the Semantic FPN ADE20K recipe as the default (AdamW, lr 1e-4 at a global batch of 16, poly "
                    'schedule, 80k iterations on ADE20K). Every option can also be set in a YAML file (--config); '
                    'the command line wins. Several processes: torchrun --nproc_per_node N -m cmtnet segment '
                    'train ...')
    add_command(
        commands, 'eval', SegmentEvalOptions, eval_command, groups=_DATA, help="a checkpoint's mIoU, mAcc and aAcc",
        description='Evaluate a segmentation checkpoint on val images and masks as ADE20K does: prints the '
                    'per-class IoU and accuracy table, then the summary (mIoU, mAcc, aAcc).')
    add_command(
        commands, 'predict', SegmentPredictOptions, predict_command, help='segment image files',
        description='Segment image files (and folders of them): a colour overlay (overlays/) and a label mask '
                    '(masks/, value = class index) per image.')


def parse_options(argv: Sequence[str]) -> SegmentOptions:
    """The options of `cmtnet segment train ARGV`, with the config file applied."""
    return parse(SegmentOptions, argv, prog='cmtnet segment train')
