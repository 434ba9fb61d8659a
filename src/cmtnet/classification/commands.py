"""`cmtnet train`, `cmtnet eval` and `cmtnet predict`: the command line of classification.

Each command's options are the fields of its dataclass (classification/options.py); the handler resolves
them (default < recipe < config file < command line, engine/options.py) and runs the library function:

    cmtnet train --config configs/demo.yaml                                  # the embedded digits, on CPU
    cmtnet train --recipe cmt_s --data /path/imagenet                        # the released recipe
    torchrun --nproc_per_node 8 -m cmtnet train --recipe cmt_s --data /path/imagenet
    cmtnet eval --checkpoint runs/demo/model_ema.safetensors
    cmtnet predict --checkpoint runs/demo/model_ema.safetensors my_images/
"""
import argparse
from typing import Sequence

from ..engine.options import add_command, parse
from .evaluate import MAX_CONFUSION_CLASSES, eval_command
from .options import EvalOptions, PredictOptions, TrainOptions
from .predict import predict_command
from .recipes import RECIPES
from .train import train

__all__ = ['add_parser', 'parse_options']

# the help sections of `cmtnet train`, in order
_TRAIN_GROUPS = {'data': 'data', 'model': 'model', 'augmentation': 'augmentation and regularisation',
                 'optimisation': 'optimisation', 'speed': 'speed', 'run': 'run'}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train`, `eval` and `predict` subcommands."""
    add_command(
        subparsers, 'train', TrainOptions, train, RECIPES, _TRAIN_GROUPS,
        help='train or fine-tune a CMT model (the released recipe, one CPU to many GPUs)',
        description='Train a CMT model on an ImageFolder tree (train/ and val/, a folder per class) or, '
                    'without --data, on the embedded handwritten digits; fine-tune with --pretrained. Every '
                    'option can also be set in a YAML file (--config); --recipe presets the released ImageNet '
                    'recipe of a variant. Precedence: default < recipe < config file < command line. '
                    'Several processes: torchrun --nproc_per_node N -m cmtnet train ...',
        epilog='The learning rate is --lr, or else --lr-base x global batch / --lr-base-size, with the global '
               'batch = --batch-size x processes x --accum-steps.')
    add_command(
        subparsers, 'eval', EvalOptions, eval_command,
        help='top-1 / top-5 accuracy of a checkpoint on a dataset',
        description='Top-1 / top-5 accuracy (and, for up to %d classes, the confusion matrix) of a checkpoint '
                    'on a split of an ImageFolder tree, or on the test split of the embedded digits.'
                    % MAX_CONFUSION_CLASSES)
    add_command(
        subparsers, 'predict', PredictOptions, predict_command, help='top-k classes of image files',
        description='Print the top-k classes, with probabilities, of image files and of the images in folders.')


def parse_options(argv: Sequence[str]) -> TrainOptions:
    """The options of `cmtnet train ARGV`, with the recipe and config file applied, as `train` takes them."""
    return parse(TrainOptions, argv, RECIPES, prog='cmtnet train')
