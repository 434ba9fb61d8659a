"""The options of a detection run: the engine's, with the paper-era COCO 1x schedule as the defaults.

The CMT paper trains its detectors as its contemporaries did (mmdetection's 1x schedule): AdamW at lr 1e-4
(16 images a batch), weight decay 0.05 except on norms, biases and the position biases, 12 epochs with the
learning rate divided by 10 after epochs 8 and 11, a linear warm-up over the first 500 updates from a
thousandth of the rate, and images resized to a shorter side of 800 (longer side at most 1333).

Each field carries its command-line spelling and help (engine/options.py), and each class's docstring is its
command's description in --help; detection/commands.py turns them into `cmtnet detect train | eval | predict`.
Eval and predict take what every dense task's do (`engine.dense.DenseEvalOptions`, `DensePredictOptions`:
checkpoint, device, autocast, `--precision`, config, val data), their help speaking of the data as training's
does, and detection's own flags.
"""
from dataclasses import dataclass, field
from typing import Any, List, Optional

from ..engine.dense import DenseEvalOptions, DensePredictOptions, DenseTrainOptions, images_option
from ..engine.options import option
from ..models.variants import VARIANT_ARGS
from .backbone import BATCH_NORM_MODES
from .builders import DETECTORS

__all__ = ['DetectEvalOptions', 'DetectOptions', 'DetectPredictOptions']


def _data() -> Any:
    return option(None, metavar='ROOT', group='data',
                  help='a COCO 2017 tree: annotations/instances_{train,val}2017.json, {train,val}2017/')


def _annotations(split: str) -> Any:
    return option(None, metavar='JSON', group='data', help=f'COCO annotation file of the {split} images')


def _strict() -> Any:
    return option(False, group='data', help='stop at an unusable entry (absent or unreadable image, bad box or '
                                            'category) instead of skipping it with a warning')


def _side(help: str) -> Any:
    return option(None, metavar='PX', help=help, unset="the checkpoint's")


@dataclass
class DetectOptions(DenseTrainOptions):
    """Train a torchvision detector on a CMT backbone on COCO-format data (default: the embedded digits set),
    with the paper-era 1x schedule as the default."""
    # data: a COCO 2017 tree (`data`), or the four paths; neither: the embedded digits set
    data: Optional[str] = _data()
    train_images: Optional[str] = images_option('train')
    train_annotations: Optional[str] = _annotations('train')
    val_images: Optional[str] = images_option('val')
    val_annotations: Optional[str] = _annotations('val')
    strict: bool = _strict()
    hflip: Optional[float] = option(None, metavar='P', group='data',
                                    help='horizontal flip probability in training (0 where mirrored content '
                                         'means something else, e.g. digits or text)',
                                    unset="torchvision's 0.5; 0 on the embedded digits set")
    # the model
    detector: str = option('retinanet', choices=list(DETECTORS), group='model', help='torchvision detector')
    model: str = option('cmt_s', choices=list(VARIANT_ARGS), group='model', help='CMT variant of the backbone')
    backbone_weights: Optional[str] = option(None, metavar='PATH', group='model',
                                             help='CMT weights for the backbone (a released checkpoint or ours)')
    trainable_stages: int = option(4, choices=range(5), metavar='N', group='model',
                                   help='CMT stages that train (0-4, from the last)')
    batch_norm: Optional[str] = option(None, choices=list(BATCH_NORM_MODES), group='model',
                                       help="the backbone's BatchNorm",
                                       unset='frozen with --backbone-weights, else train')
    min_size: int = option(800, metavar='PX', group='model', help='shorter side the images are resized to')
    max_size: int = option(1333, metavar='PX', group='model', help='longest side at most')
    anchor_sizes: Optional[List[float]] = option(  # one base size per pyramid level (5)
        None, nargs=5, metavar='PX', group='model', unset="the detector's",
        help='base anchor size per pyramid level; RetinaNet adds x2^(1/3), x2^(2/3)')
    # the engine's options, with the 1x schedule's values (and the dense recipes' shared ones)
    epochs: int = 12
    lr: Optional[float] = 1e-4
    weight_decay: float = 0.05
    sched: str = 'multistep'
    decay_milestones: List[int] = field(default_factory=lambda: [8, 11])
    decay_rate: float = 0.1
    warmup_updates: int = 500
    warmup_lr: float = 1e-7
    cooldown_epochs: int = 0
    output: str = 'runs/detect'


@dataclass
class DetectEvalOptions(DenseEvalOptions):
    """COCO evaluation (pycocotools) of a detection checkpoint on val images: prints the standard summary and
    writes the COCO results JSON."""
    val_annotations: Optional[str] = _annotations('val')
    min_size: Optional[int] = _side('shorter side')
    max_size: Optional[int] = _side('longest side')
    batch_size: int = option(2, metavar='N', help='images per batch')
    output: Optional[str] = option(None, metavar='DIR', help='folder for coco_results.json',
                                   unset="the checkpoint's")


@dataclass
class DetectPredictOptions(DensePredictOptions):
    """Detect objects in image files (and folders of them): a PNG per image with boxes, labels, scores and masks
    drawn, and detections.json."""
    score_threshold: float = option(0.5, metavar='S', help='leave out detections scored below this')
    min_size: Optional[int] = _side('shorter side')
    max_size: Optional[int] = _side('longest side')
    output: str = option('runs/detect/predict', metavar='DIR', help='folder for the drawn images and the JSON')
