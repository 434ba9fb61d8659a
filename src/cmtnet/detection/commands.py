"""`cmtnet detect train | eval | predict`: the command line of detection.

    cmtnet detect train --config configs/detect_demo.yaml                  # the embedded digits, on CPU
    cmtnet detect train --data /path/coco --model cmt_s --backbone-weights cmt_small.pth
    torchrun --nproc_per_node 8 -m cmtnet detect train --data /path/coco --detector maskrcnn
    cmtnet detect eval --checkpoint runs/detect/model.safetensors            # the twelve-line COCO summary
    cmtnet detect predict --checkpoint runs/detect/model.safetensors photos/ --output runs/detect/predict

A checkpoint carries the detector, variant, sizes and class names, so eval and predict need no other flag.
The three commands are added as segmentation's are (`engine.dense.add_dense_commands`).
"""
import argparse
from typing import Sequence

from ..engine.dense import DenseTexts, add_dense_commands
from ..engine.options import parse
from .builders import DETECTION
from .evaluate import eval_command
from .options import DetectEvalOptions, DetectOptions, DetectPredictOptions
from .predict import predict_command

__all__ = ['add_parser', 'eval_command', 'parse_options', 'predict_command']


TEXTS = DenseTexts(
    command=('object detection and instance segmentation with a CMT backbone',
             'RetinaNet, FCOS, Faster and Mask R-CNN (torchvision) on a CMT backbone, on COCO-format data.'),
    data='COCO format',
    train=('train a detector',
           'Train a torchvision detector on a CMT backbone on COCO-format data (default: the embedded digits set), '
           'with the paper-era 1x schedule as the default.'),
    eval=("a checkpoint's COCO box (and mask) AP",
          'COCO evaluation (pycocotools) of a detection checkpoint on val images: prints the standard summary and '
          'writes the COCO results JSON.'),
    predict=('draw detections on image files',
             'Detect objects in image files (and folders of them): a PNG per image with boxes, labels, scores and '
             'masks drawn, and detections.json.'))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `detect` with its `train`, `eval` and `predict` subcommands."""
    add_dense_commands(subparsers, DETECTION, __package__, TEXTS,
                       (DetectOptions, DetectEvalOptions, DetectPredictOptions), eval_command, predict_command)


def parse_options(argv: Sequence[str]) -> DetectOptions:
    """The options of `cmtnet detect train ARGV`, with the config file applied."""
    return parse(DetectOptions, argv, prog='cmtnet detect train')
