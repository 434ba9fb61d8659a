"""The options of classification's commands, as typed objects: training, evaluation and prediction.

`TrainOptions` adds classification's own options (data, model, augmentation) to the engine's
`RunOptions`; `EvalOptions` and `PredictOptions` share `ModelOptions` (which weights, at which size, on
which device). Each field carries its command-line spelling and help (engine/options.py), so the command
line and YAML config files fill them (classification/commands.py); library code, tests and benchmarks can
build them directly:

    from cmtnet.classification import TrainOptions, train
    train(TrainOptions(model='cmt_ti', img_size=32, epochs=8, output='runs/digits'))
"""
from dataclasses import dataclass
from typing import List, Optional

from ..engine.options import RunOptions, amp_option, config_option, device_option, option, precision_option
from ..models.variants import VARIANT_ARGS
from .recipes import RECIPES

__all__ = ['EvalOptions', 'ModelOptions', 'PredictOptions', 'TrainOptions']

_INTERPOLATIONS = ['bicubic', 'bilinear']


@dataclass
class TrainOptions(RunOptions):
    """`cmtnet train`: the engine's options plus data, model and augmentation."""
    # data
    data: Optional[str] = option(None, metavar='DIR', group='data',
                                 help='ImageFolder root holding train/ and val/ (one folder per class)',
                                 unset='the embedded handwritten digits')
    train_split: str = option('train', metavar='NAME', group='data', help='training folder under --data')
    val_split: Optional[str] = option(None, metavar='NAME', group='data', help='validation folder under --data',
                                      unset='val; test for the digits')
    img_size: Optional[int] = option(None, metavar='N', group='data', help='input side, a multiple of 32',
                                     unset='the model\'s native size')
    strict: bool = option(False, group='data', help='stop at an unreadable image instead of skipping it with a warning')
    # model
    recipe: Optional[str] = option(None, choices=list(RECIPES), group='model',
                                   help='preset: the released ImageNet recipe of a variant')
    model: str = option('cmt_ti', choices=list(VARIANT_ARGS), group='model', help='CMT variant')
    pretrained: Optional[str] = option(
        None, metavar='PATH', group='model',
        help='start from these weights (a released checkpoint or ours); with other classes the classifier is '
             'reset, with another --img-size the position biases are resized')
    num_classes: Optional[int] = option(None, metavar='N', group='model', help='classes',
                                        unset='those of the data; must match them')
    drop: Optional[float] = option(None, metavar='P', group='model', help='dropout before the classifier',
                                   unset='the variant\'s')
    drop_path: float = option(0.1, metavar='P', group='model', help='stochastic depth rate')
    wd_pos_bias: bool = option(False, group='model', help='apply weight decay to the attention position biases too')
    # augmentation and regularisation
    aa: str = option('rand-m9-mstd0.5-inc1', metavar='POLICY', group='augmentation',
                     help="timm auto-augment policy, or 'none'")
    color_jitter: float = option(0.4, metavar='F', group='augmentation', help='colour jitter (when --aa is none)')
    scale: List[float] = option(default_factory=lambda: [0.08, 1.0], nargs=2, metavar=('MIN', 'MAX'),
                                group='augmentation', help='random-resized-crop area range')
    ratio: List[float] = option(default_factory=lambda: [3 / 4, 4 / 3], nargs=2, metavar=('MIN', 'MAX'),
                                group='augmentation', help='random-resized-crop aspect range')
    hflip: float = option(0.5, metavar='P', group='augmentation', help='horizontal flip probability')
    reprob: float = option(0.25, metavar='P', group='augmentation', help='random erasing probability')
    mixup: float = option(0.8, metavar='ALPHA', group='augmentation', help='mixup alpha (0: off)')
    cutmix: float = option(1.0, metavar='ALPHA', group='augmentation', help='cutmix alpha (0: off)')
    smoothing: float = option(0.1, metavar='F', group='augmentation', help='label smoothing')
    aug_repeats: int = option(3, metavar='N', group='augmentation', help='repeated augmentation (0 or 1: off)')
    interpolation: str = option('bicubic', choices=_INTERPOLATIONS, group='augmentation',
                                help='resize interpolation')
    crop_pct: float = option(0.875, metavar='F', group='augmentation', help='evaluation centre-crop fraction')


@dataclass
class ModelOptions:
    """Which weights, at which size, on which device: shared by `cmtnet eval` and `cmtnet predict`."""
    checkpoint: Optional[str] = option(
        None, metavar='PATH', required=True, help='weights: our .safetensors / .pth, a released checkpoint (with '
                                                  '--model), or an int8 program written by cmtnet quantize (.pt2)')
    model: Optional[str] = option(None, choices=list(VARIANT_ARGS), help='CMT variant',
                                  unset='the one named in the checkpoint')
    img_size: Optional[int] = option(None, metavar='N', help='input side, a multiple of 32',
                                     unset='the checkpoint\'s, else the native size')
    crop_pct: Optional[float] = option(None, help='centre-crop fraction', unset='the checkpoint\'s, else 0.875')
    interpolation: Optional[str] = option(None, choices=_INTERPOLATIONS, help='resize interpolation',
                                          unset='the checkpoint\'s, else bicubic')
    batch_size: int = option(64, metavar='N', help='images per batch')
    device: Optional[str] = device_option()
    amp: str = amp_option()
    channels_last: bool = option(False, help='channels-last memory format')
    precision: str = precision_option()
    compile: bool = option(True, help='compile an int8 program (cmtnet quantize) to its int8 kernels; '
                                      '--no-compile runs its reference float ops instead, slowly but without '
                                      'the minutes compiling takes (they round otherwise than the kernels)')
    config: Optional[str] = config_option()


@dataclass
class EvalOptions(ModelOptions):
    """`cmtnet eval`: a checkpoint on a split of an ImageFolder tree or of the digits."""
    data: Optional[str] = option(None, metavar='DIR', help='ImageFolder root (ROOT/<split>/<class>/<image>)',
                                 unset='the embedded digits')
    split: Optional[str] = option(None, help='split to evaluate', unset='val, or test for the digits')
    workers: int = option(2, metavar='N', help='data loading processes')
    strict: bool = option(False, help='stop at an unreadable image instead of skipping it')


@dataclass
class PredictOptions(ModelOptions):
    """`cmtnet predict`: the top-k classes of image files and folders of images."""
    inputs: List[str] = option(default_factory=list, positional=True, metavar='IMAGE_OR_FOLDER', required=True,
                               help='image files and folders of images')
    top_k: int = option(5, metavar='K', help='classes to show per image')
    json: bool = option(False, help='print a JSON object per image (the answer of cmtnet serve) instead of text')
    cam: Optional[str] = option(None, metavar='DIR', help='write each image\'s class activation map (Grad-CAM '
                                'on the last stage, for its top class) over the image to DIR')
