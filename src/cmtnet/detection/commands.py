"""`cmtnet detect train | eval | predict`: the command line of detection.

    cmtnet detect train --config configs/detect_demo.yaml                  # the embedded digits, on CPU
    cmtnet detect train --data /path/coco --model cmt_s --backbone-weights cmt_small.pth
    torchrun --nproc_per_node 8 -m cmtnet detect train --data /path/coco --detector maskrcnn
    cmtnet detect eval --checkpoint runs/detect/model.safetensors            # the twelve-line COCO summary
    cmtnet detect predict --checkpoint runs/detect/model.safetensors photos/ --output runs/detect/predict

A checkpoint carries the detector, variant, sizes and class names, so eval and predict need no other flag.
"""
import argparse
from typing import Sequence

from ..engine.options import add_command, parse
from .evaluate import eval_command
from .options import DetectEvalOptions, DetectOptions, DetectPredictOptions
from .predict import predict_command
from .task import train as train_command

__all__ = ['add_parser', 'eval_command', 'parse_options', 'predict_command', 'train_command']

_DATA = {'data': 'data (COCO format; default: the embedded digits set)'}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `detect` with its `train`, `eval` and `predict` subcommands."""
    parser = subparsers.add_parser('detect', help='object detection and instance segmentation with a CMT backbone',
                                   description='RetinaNet, FCOS, Faster and Mask R-CNN (torchvision) on a CMT '
                                               'backbone, on COCO-format data.')
    commands = parser.add_subparsers(dest='detect_command', metavar='COMMAND', required=True)
    add_command(
        commands, 'train', DetectOptions, train_command, groups=dict(_DATA, model='model'), help='train a detector',
        description='Train a torchvision detector on a CMT backbone on COCO-format data (default: the embedded '
                    'digits set), with the paper-era 1x schedule as the default. Every option can also be set in '
                    'a YAML file (--config); the command line wins. Several processes: torchrun '
                    '--nproc_per_node N -m cmtnet detect train ...')
    add_command(
        commands, 'eval', DetectEvalOptions, eval_command, groups=_DATA, help="a checkpoint's COCO box (and mask) AP",
        description='COCO evaluation (pycocotools) of a detection checkpoint on val images: prints the standard '
                    'summary and writes the COCO results JSON.')
    add_command(
        commands, 'predict', DetectPredictOptions, predict_command, help='draw detections on image files',
        description='Detect objects in image files (and folders of them): a PNG per image with boxes, labels, '
                    'scores and masks drawn, and detections.json.')


def parse_options(argv: Sequence[str]) -> DetectOptions:
    """The options of `cmtnet detect train ARGV`, with the config file applied."""
    return parse(DetectOptions, argv, prog='cmtnet detect train')
