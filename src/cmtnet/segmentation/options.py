"""The options of a segmentation run: the engine's, with the Semantic FPN ADE20K recipe as the defaults.

PVT's and Next-ViT's Semantic FPN trains on ADE20K (mmseg) with AdamW at lr 1e-4 for a global batch of 16,
weight decay 1e-4, a poly schedule of power 0.9 down to 0 stepped every iteration, no warm-up, 80k
iterations, on 512x512 crops of images rescaled within 0.5-2.0 times 2048x512. Here the learning rate
scales with the global batch as classification's does (`lr_base` 1e-4 at `lr_base_size` 16), and the
schedule is counted in epochs so that it scales too: ADE20K's 20,210 training images at a global batch of
16 make 1,263 updates an epoch, and 64 epochs are 80,832 updates, the 80k schedule. (`--min-updates N`
stretches the epochs of a small set by a whole factor until the schedule has at least N updates.)

Each field carries its command-line spelling and help (engine/options.py), and each class's docstring is its
command's description in --help; segmentation/commands.py turns them into `cmtnet segment train | eval |
predict`. Eval and predict take what every dense task's do (`engine.dense.DenseEvalOptions`,
`DensePredictOptions`: checkpoint, device, autocast, `--precision`, config, val data), their help speaking of
the data as training's does, and segmentation's own flags.
"""
from dataclasses import dataclass, field
from typing import Any, List, Optional

from ..engine.dense import DenseEvalOptions, DensePredictOptions, DenseTrainOptions, images_option
from ..engine.options import option
from ..models.variants import VARIANT_ARGS
from .models import HEADS

__all__ = ['SegmentEvalOptions', 'SegmentOptions', 'SegmentPredictOptions']

ADE20K_EPOCHS = 64  # x 1,263 updates (20,210 images at a global batch of 16): 80,832, the 80k schedule


def _data() -> Any:
    return option(None, metavar='ROOT', group='data',
                  help="ADE20K's release: ADEChallengeData2016/{images,annotations}/{training,validation} "
                       '(150 classes, mask value 0 not labelled)')


def _masks(split: str) -> Any:
    return option(None, metavar='DIR', group='data',
                  help=f'folder of the {split} masks: single-channel PNGs named as their images, value = class '
                       f'index, 255 = not labelled')


def _classes(unset: str = "the layout's (ADE20K, the embedded set), else --num-classes") -> Any:
    return option(None, metavar='FILE', group='data', help='class names, one per line, label i the i-th',
                  unset=unset)


def _num_classes() -> Any:
    return option(None, metavar='N', group='data', help='number of classes of mask folders without --classes')


def _strict() -> Any:
    return option(False, group='data', help='stop at an unusable pair (image without mask, mask of another size, '
                                            'value outside the classes) instead of skipping it with a warning')


def _flip() -> Any:
    return option(False, help='also score the mirrored image (averaged)')


def _scales() -> Any:
    return option(default_factory=lambda: [1.0], metavar='R',
                  help='ratios of the evaluation scale to score at, averaged (multi-scale: 0.5 0.75 1.0 1.25 1.5 1.75)')


def _slide_override() -> Any:
    return option(None, help='sliding-window inference (crops of the crop size, 2/3 of it apart)',
                  unset="the checkpoint's")


@dataclass
class SegmentOptions(DenseTrainOptions):
    """Train Semantic FPN or UPerNet on a CMT backbone (default: on the embedded photo set), with the Semantic
    FPN ADE20K recipe as the default (AdamW, lr 1e-4 at a global batch of 16, poly schedule, 80k iterations on
    ADE20K)."""
    # data: ADE20K (`data`), or the four folders; neither: the embedded photo set
    data: Optional[str] = _data()
    train_images: Optional[str] = images_option('train')
    train_masks: Optional[str] = _masks('train')
    val_images: Optional[str] = images_option('val')
    val_masks: Optional[str] = _masks('val')
    classes: Optional[str] = _classes()
    num_classes: Optional[int] = _num_classes()
    strict: bool = _strict()
    crop_size: int = option(512, metavar='PX', group='data',
                            help='side of the random training crops, and of the sliding windows')
    scale: Optional[List[int]] = option(None, nargs=2, metavar=('LONG', 'SHORT'), group='data',
                                        help='base scale: images are rescaled to fit LONG x SHORT (aspect kept), '
                                             'times 0.5-2.0 for training, once for evaluation',
                                        unset="ADE20K's 2048 512 with --data; else the train images' median "
                                              "long and short sides")
    hflip: Optional[float] = option(None, metavar='P', group='data',
                                    help='horizontal flip probability in training (0 where mirrored content '
                                         'means something else, e.g. digits or text)',
                                    unset="mmseg's 0.5")
    slide: bool = option(False, group='data', help='evaluate with sliding windows instead of the whole image')
    # the model
    head: str = option('fpn', choices=list(HEADS), group='model', help='Semantic FPN or UPerNet')
    model: str = option('cmt_s', choices=list(VARIANT_ARGS), group='model', help='CMT variant of the backbone')
    backbone_weights: Optional[str] = option(None, metavar='PATH', group='model',
                                             help='CMT weights for the backbone (a released checkpoint or ours)')
    # the engine's options, with the Semantic FPN ADE20K recipe (and the dense recipes' shared ones)
    epochs: int = ADE20K_EPOCHS
    lr_base: float = 1e-4
    lr_base_size: int = 16
    weight_decay: float = 1e-4
    sched: str = 'poly'
    decay_rate: float = 0.9
    decay_milestones: List[int] = field(default_factory=list)
    output: str = 'runs/segment'


@dataclass
class SegmentEvalOptions(DenseEvalOptions):
    """Evaluate a segmentation checkpoint on val images and masks as ADE20K does: prints the per-class IoU and
    accuracy table, then the summary (mIoU, mAcc, aAcc)."""
    val_masks: Optional[str] = _masks('val')
    classes: Optional[str] = _classes("the checkpoint's; if given, checked against them")
    num_classes: Optional[int] = _num_classes()
    slide: Optional[bool] = _slide_override()
    flip: bool = _flip()
    scales: List[float] = _scales()


@dataclass
class SegmentPredictOptions(DensePredictOptions):
    """Segment image files (and folders of them): a colour overlay (overlays/) and a label mask (masks/, value =
    class index) per image."""
    slide: Optional[bool] = _slide_override()
    flip: bool = _flip()
    scales: List[float] = _scales()
    output: str = option('runs/segment/predict', metavar='DIR',
                         help='folder for overlays/ (colour overlays) and masks/ (label PNGs)')
