"""`cmtnet train`, `cmtnet eval` and `cmtnet predict`: the command line of classification.

Each command's parser declares its options (defaults from the option dataclasses), and its handler
resolves them (default < recipe < config file < command line) into that dataclass and runs the library
function:

    cmtnet train --config configs/demo.yaml                                  # the embedded digits, on CPU
    cmtnet train --recipe cmt_s --data /path/imagenet                        # the released recipe
    torchrun --nproc_per_node 8 -m cmtnet train --recipe cmt_s --data /path/imagenet
    cmtnet eval --checkpoint runs/demo/model_ema.safetensors
    cmtnet predict --checkpoint runs/demo/model_ema.safetensors my_images/
"""
import argparse
from typing import Any, Sequence, Type

from ..engine.options import HelpFormatter, add_option, add_run_options, resolve, track_defaults
from ..models.variants import VARIANT_ARGS
from .evaluate import MAX_CONFUSION_CLASSES, eval_command
from .options import EvalOptions, ModelOptions, PredictOptions, TrainOptions
from .predict import predict_command
from .recipes import RECIPES
from .train import train

__all__ = ['add_parser', 'parse_options']


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train`, `eval` and `predict` subcommands."""
    _add_train_parser(subparsers)
    _add_eval_parser(subparsers)
    _add_predict_parser(subparsers)


def parse_options(argv: Sequence[str]) -> TrainOptions:
    """The options of `cmtnet train ARGV`, with the recipe and config file applied, as `train` takes them."""
    parser = _add_train_parser(argparse.ArgumentParser(prog='cmtnet').add_subparsers())
    return resolve(parser, parser.parse_args(list(argv)), TrainOptions, RECIPES)


def _add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        'train', help='train or fine-tune a CMT model (the released recipe, one CPU to many GPUs)',
        formatter_class=HelpFormatter,
        description='Train a CMT model on an ImageFolder tree (train/ and val/, a folder per class) or, '
                    'without --data, on the embedded handwritten digits; fine-tune with --pretrained. Every '
                    'option can also be set in a YAML file (--config); --recipe presets the released ImageNet '
                    'recipe of a variant. Precedence: default < recipe < config file < command line. '
                    'Several processes: torchrun --nproc_per_node N -m cmtnet train ...',
        epilog='The learning rate is --lr, or else --lr-base x global batch / --lr-base-size, with the global '
               'batch = --batch-size x processes x --accum-steps.')
    _train_data_and_model_options(parser)
    _augmentation_options(parser)
    add_run_options(parser, TrainOptions)
    track_defaults(parser)
    parser.set_defaults(func=lambda args: train(resolve(parser, args, TrainOptions, RECIPES)))
    return parser


def _train_data_and_model_options(parser: argparse.ArgumentParser) -> None:
    def opt(group: Any, flag: str, **kwargs: Any) -> None:
        add_option(group, TrainOptions, flag, **kwargs)

    g = parser.add_argument_group('data')
    opt(g, '--data', metavar='DIR', help='ImageFolder root holding train/ and val/ (one folder per class); '
                                         'default: the embedded handwritten digits')
    opt(g, '--train-split', metavar='NAME', help='training folder under --data')
    opt(g, '--val-split', metavar='NAME', help='validation folder under --data (default: val; test for the digits)')
    opt(g, '--img-size', type=int, metavar='N', help='input side, a multiple of 32 (default: the model\'s native size)')
    opt(g, '--workers', type=int, metavar='N', help='data loading processes per training process')
    opt(g, '--strict', help='stop at an unreadable image instead of skipping it with a warning')
    g = parser.add_argument_group('model')
    opt(g, '--recipe', choices=list(RECIPES), help='preset: the released ImageNet recipe of a variant')
    opt(g, '--model', choices=list(VARIANT_ARGS), help='CMT variant')
    opt(g, '--pretrained', metavar='PATH',
        help='start from these weights (a released checkpoint or ours); with other classes the classifier is '
             'reset, with another --img-size the position biases are resized')
    opt(g, '--num-classes', type=int, metavar='N', help='classes (default: those of the data; must match them)')
    opt(g, '--drop', type=float, metavar='P', help='dropout before the classifier (default: the variant\'s)')
    opt(g, '--drop-path', type=float, metavar='P', help='stochastic depth rate')
    opt(g, '--wd-pos-bias', help='apply weight decay to the attention position biases too')


def _augmentation_options(parser: argparse.ArgumentParser) -> None:
    def opt(flag: str, **kwargs: Any) -> None:
        add_option(g, TrainOptions, flag, **kwargs)

    g = parser.add_argument_group('augmentation and regularisation')
    opt('--aa', metavar='POLICY', help="timm auto-augment policy, or 'none'")
    opt('--color-jitter', type=float, metavar='F', help='colour jitter (when --aa is none)')
    opt('--scale', type=float, nargs=2, metavar=('MIN', 'MAX'), help='random-resized-crop area range')
    opt('--ratio', type=float, nargs=2, metavar=('MIN', 'MAX'), help='random-resized-crop aspect range')
    opt('--hflip', type=float, metavar='P', help='horizontal flip probability')
    opt('--reprob', type=float, metavar='P', help='random erasing probability')
    opt('--mixup', type=float, metavar='ALPHA', help='mixup alpha (0: off)')
    opt('--cutmix', type=float, metavar='ALPHA', help='cutmix alpha (0: off)')
    opt('--smoothing', type=float, metavar='F', help='label smoothing')
    opt('--aug-repeats', type=int, metavar='N', help='repeated augmentation (0 or 1: off)')
    opt('--interpolation', choices=['bicubic', 'bilinear'], help='resize interpolation')
    opt('--crop-pct', type=float, metavar='F', help='evaluation centre-crop fraction')


def _model_options(parser: argparse.ArgumentParser, options: Type[ModelOptions]) -> None:
    """Options shared by eval and predict: which weights, at which size, on which device."""
    def opt(flag: str, **kwargs: Any) -> None:
        add_option(parser, options, flag, **kwargs)

    opt('--checkpoint', metavar='PATH',
        help='weights (required): our .safetensors / .pth, or a released checkpoint (with --model)')
    opt('--model', choices=list(VARIANT_ARGS), help='CMT variant (default: the one named in the checkpoint)')
    opt('--img-size', type=int, metavar='N',
        help='input side, a multiple of 32 (default: the checkpoint\'s, else the native size)')
    opt('--crop-pct', type=float, help='centre-crop fraction (default: the checkpoint\'s, else 0.875)')
    opt('--interpolation', choices=['bicubic', 'bilinear'],
        help='resize interpolation (default: the checkpoint\'s, else bicubic)')
    opt('--batch-size', type=int, metavar='N', help='images per batch')
    opt('--device', help='torch device (default: cuda if available, else cpu)')
    opt('--amp', choices=['auto', 'none', 'bf16', 'fp16'], help='mixed precision: auto is bf16 on CUDA and off on CPU')
    opt('--channels-last', help='channels-last memory format')
    opt('--config', metavar='YAML', help='YAML file of options (the command line wins)')


def _add_eval_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'eval', help='top-1 / top-5 accuracy of a checkpoint on a dataset', formatter_class=HelpFormatter,
        description='Top-1 / top-5 accuracy (and, for up to %d classes, the confusion matrix) of a checkpoint '
                    'on a split of an ImageFolder tree, or on the test split of the embedded digits.'
                    % MAX_CONFUSION_CLASSES)
    _model_options(parser, EvalOptions)
    add_option(parser, EvalOptions, '--data', metavar='DIR',
               help='ImageFolder root (ROOT/<split>/<class>/<image>); default: the embedded digits')
    add_option(parser, EvalOptions, '--split', help='split to evaluate (default: val, or test for the digits)')
    add_option(parser, EvalOptions, '--workers', type=int, metavar='N', help='data loading processes')
    add_option(parser, EvalOptions, '--strict', help='stop at an unreadable image instead of skipping it')
    track_defaults(parser)
    parser.set_defaults(func=lambda args: eval_command(resolve(parser, args, EvalOptions)))


def _add_predict_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'predict', help='top-k classes of image files', formatter_class=HelpFormatter,
        description='Print the top-k classes, with probabilities, of image files and of the images in folders.')
    parser.add_argument('inputs', nargs='*', metavar='IMAGE_OR_FOLDER', help='image files and folders of images')
    _model_options(parser, PredictOptions)
    add_option(parser, PredictOptions, '--top-k', type=int, metavar='K', help='classes to show per image')
    track_defaults(parser)
    parser.set_defaults(func=lambda args: predict_command(resolve(parser, args, PredictOptions)))
