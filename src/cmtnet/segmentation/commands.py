"""`cmtnet segment train | eval | predict`: the command line of semantic segmentation.

    cmtnet segment train --config configs/segment_demo.yaml                 # the embedded photo set, on CPU
    cmtnet segment train --data /path/ADEChallengeData2016 --model cmt_s --backbone-weights cmt_small.pth
    torchrun --nproc_per_node 8 -m cmtnet segment train --data /path/ade --backbone-weights cmt_small.pth
    cmtnet segment eval --checkpoint runs/segment/model.safetensors --flip --scales 0.75 1.0 1.25
    cmtnet segment predict --checkpoint runs/segment/model.safetensors photos/ --output runs/segment/predict

A checkpoint carries the head, variant, classes, crop size and evaluation scale, so eval and predict need
no other flag. The three commands are added as detection's are (`engine.dense.add_dense_commands`).
"""
import argparse
from typing import Sequence

from ..engine.dense import DenseTexts, add_dense_commands
from ..engine.options import parse
from .evaluate import eval_command
from .models import SEGMENTATION
from .options import SegmentEvalOptions, SegmentOptions, SegmentPredictOptions
from .predict import predict_command

__all__ = ['add_parser', 'eval_command', 'parse_options', 'predict_command']


TEXTS = DenseTexts(
    command=('semantic segmentation with a CMT backbone',
             'Semantic FPN and UPerNet on a CMT backbone, on ADE20K or on folders of images and single-channel PNG '
             'masks.'),
    data='ADE20K or image and mask folders',
    train=('train a segmenter',
           'Train Semantic FPN or UPerNet on a CMT backbone (default: on the embedded photo set), with the Semantic '
           'FPN ADE20K recipe as the default (AdamW, lr 1e-4 at a global batch of 16, poly schedule, 80k iterations '
           'on ADE20K).'),
    eval=("a checkpoint's mIoU, mAcc and aAcc",
          'Evaluate a segmentation checkpoint on val images and masks as ADE20K does: prints the per-class IoU and '
          'accuracy table, then the summary (mIoU, mAcc, aAcc).'),
    predict=('segment image files',
             'Segment image files (and folders of them): a colour overlay (overlays/) and a label mask (masks/, '
             'value = class index) per image.'))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `segment` with its `train`, `eval` and `predict` subcommands."""
    add_dense_commands(subparsers, SEGMENTATION, __package__, TEXTS,
                       (SegmentOptions, SegmentEvalOptions, SegmentPredictOptions), eval_command, predict_command)


def parse_options(argv: Sequence[str]) -> SegmentOptions:
    """The options of `cmtnet segment train ARGV`, with the config file applied."""
    return parse(SegmentOptions, argv, prog='cmtnet segment train')
