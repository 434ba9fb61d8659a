"""torchvision's detectors with a CMT backbone: RetinaNet, FCOS, Faster R-CNN and Mask R-CNN.

Each builder returns torchvision's own model class with `cmt_fpn_backbone` in place of the ResNet-FPN,
so training, losses, post-processing and export are torchvision's. What differs from torchvision's
ResNet builders is only the backbone, the normalisation of the input (CMT's ImageNet mean and std, which
are torchvision's too) and a convenience for small objects, `anchor_sizes`.

Classes are counted as each torchvision detector counts them. RetinaNet and FCOS score every class with
its own sigmoid and have no background class: `num_classes` is the number of label values, labels
0 .. num_classes - 1. Faster and Mask R-CNN reserve label 0 for the background: `num_classes` includes
it, labels 1 .. num_classes - 1 (COCO: 80 and 81). `HAS_BACKGROUND` says which is which.

`detector_from_checkpoint` rebuilds a detector from a weight file a detection run exported: the file's
metadata (`DETECTION.meta`, engine/dense.py) names the detector, variant, sizes, anchors, class names and
category ids.
"""
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Type

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator

from ..checkpoints import PathLike
from ..engine.dense import DenseKind
from ..errors import InputError
from ..runtime import inference_model
from .backbone import NUM_STAGES, cmt_fpn_backbone

__all__ = ['DETECTION', 'DETECTORS', 'HAS_BACKGROUND', 'anchor_tuples', 'build_detector',
           'detector_from_checkpoint', 'detector_in_precision', 'fasterrcnn_cmt', 'fcos_cmt', 'maskrcnn_cmt',
           'retinanet_cmt']

DETECTION = DenseKind('detection', 'detect', head='detector')  # its exports, commands and runs' folder
PYRAMID_LEVELS = 5  # P3-P7 for the one-stage detectors, P2-P6 (max pool) for the R-CNNs
HAS_BACKGROUND = {'retinanet': False, 'fcos': False, 'fasterrcnn': True, 'maskrcnn': True}
# the aspect ratios of torchvision's default anchors, per detector
_ASPECT_RATIOS = {'retinanet': (0.5, 1.0, 2.0), 'fcos': (1.0,), 'fasterrcnn': (0.5, 1.0, 2.0),
                  'maskrcnn': (0.5, 1.0, 2.0)}


def _anchor_generator(detector: str, anchor_sizes: Sequence[Sequence[float]]) -> AnchorGenerator:
    """torchvision anchors of the given sizes (one tuple per pyramid level), with the detector's ratios."""
    sizes = tuple(tuple(level) for level in anchor_sizes) if isinstance(anchor_sizes, (list, tuple)) else ()
    if len(sizes) != PYRAMID_LEVELS or any(
            not level or any(isinstance(s, bool) or not isinstance(s, (int, float)) or s <= 0 for s in level)
            for level in sizes):
        raise InputError(
            f'anchor_sizes must hold {PYRAMID_LEVELS} tuples of positive sizes, one per pyramid level '
            f'(e.g. ((32,), (64,), (128,), (256,), (512,))), got {anchor_sizes!r}')
    if len({len(level) for level in sizes}) != 1:
        raise InputError(f'anchor_sizes must give every pyramid level the same number of sizes, got {anchor_sizes!r}')
    return AnchorGenerator(sizes, (_ASPECT_RATIOS[detector],) * PYRAMID_LEVELS)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _detector_args(
        detector: str,
        num_classes: int,
        min_size: Any,
        max_size: int,
        anchor_sizes: Optional[Sequence[Sequence[float]]],
        detector_kwargs: Dict[str, Any],
) -> Dict[str, Any]:
    """Check the arguments common to every builder; the keyword arguments for torchvision's constructor."""
    least = 2 if HAS_BACKGROUND[detector] else 1
    if not _is_positive_int(num_classes) or num_classes < least:
        counted = 'including the background' if HAS_BACKGROUND[detector] else 'no background class'
        raise InputError(f'num_classes for {detector} ({counted}) must be an integer >= {least}, got {num_classes!r}')
    sizes = min_size if isinstance(min_size, (list, tuple)) else (min_size,)
    if not sizes or not all(_is_positive_int(v) for v in sizes):
        raise InputError(f'min_size must be a positive number of pixels (or a tuple of them), got {min_size!r}')
    if not _is_positive_int(max_size):
        raise InputError(f'max_size must be a positive number of pixels, got {max_size!r}')
    args = dict(num_classes=num_classes, min_size=min_size, max_size=max_size,
                image_mean=list(IMAGENET_DEFAULT_MEAN), image_std=list(IMAGENET_DEFAULT_STD))
    args.update(detector_kwargs)
    if anchor_sizes is not None:
        key = 'rpn_anchor_generator' if HAS_BACKGROUND[detector] else 'anchor_generator'
        if detector_kwargs.get(key) is not None:
            raise InputError(f'give either anchor_sizes or {key}, not both')
        args[key] = _anchor_generator(detector, anchor_sizes)
    return args


# each detector: torchvision's class, and the pyramid its heads read (backbone.py)
_DETECTORS: Dict[str, Tuple[Type[nn.Module], str]] = {
    'retinanet': (RetinaNet, 'one_stage'), 'fcos': (FCOS, 'one_stage'),
    'fasterrcnn': (FasterRCNN, 'two_stage'), 'maskrcnn': (MaskRCNN, 'two_stage'),
}


def build_detector(
        detector: str,
        variant: str,
        num_classes: int,
        *,
        backbone_weights: Optional[str] = None,
        trainable_stages: int = NUM_STAGES,
        batch_norm: Optional[str] = None,
        min_size: int = 800,
        max_size: int = 1333,
        anchor_sizes: Optional[Sequence[Sequence[float]]] = None,
        **detector_kwargs: Any,
) -> nn.Module:
    """torchvision's detector `detector` ('retinanet', 'fcos', 'fasterrcnn' or 'maskrcnn') on a CMT backbone.

    Args:
        variant: 'cmt_ti', 'cmt_xs', 'cmt_s' or 'cmt_b'.
        num_classes: As the detector counts them (`HAS_BACKGROUND`): RetinaNet and FCOS, label values
            0 .. num_classes - 1; Faster and Mask R-CNN, the background (label 0) included.
        backbone_weights: A CMT checkpoint (released or ours, .pth or .safetensors) for the backbone.
        trainable_stages: 0-4 CMT stages that train, counted from the last; the others are frozen.
        batch_norm: The backbone's BatchNorm: 'train', 'eval' or 'frozen' (default: 'frozen' with
            backbone_weights, 'train' without).
        min_size: torchvision's resize of the input: its short side (it then pads to a multiple of 32).
        max_size: The long side's limit of that resize.
        anchor_sizes: One tuple of anchor sizes per pyramid level (5), e.g. for small objects; aspect
            ratios stay torchvision's (each builder says what they set).
        detector_kwargs: Passed to torchvision's detector class (anchor_generator, head, score_thresh, ...).
    """
    if detector not in _DETECTORS:
        raise InputError(f'unknown detector {detector!r}; expected one of {", ".join(_DETECTORS)}')
    detector_class, pyramid = _DETECTORS[detector]
    args = _detector_args(detector, num_classes, min_size, max_size, anchor_sizes, detector_kwargs)
    backbone = cmt_fpn_backbone(variant, pyramid, backbone_weights=backbone_weights,
                                trainable_stages=trainable_stages, batch_norm=batch_norm)
    return detector_class(backbone, **args)


def retinanet_cmt(variant: str = 'cmt_s', num_classes: int = 80, **kwargs: Any) -> RetinaNet:
    """torchvision's RetinaNet on a CMT backbone (FPN P3-P7, P6/P7 from C5), standard head; `num_classes`
    label values 0 .. num_classes - 1 (no background class), `anchor_sizes` with torchvision's aspect ratios
    (0.5, 1, 2). The keyword arguments are `build_detector`'s (`detector_kwargs`: torchvision's `RetinaNet`)."""
    return build_detector('retinanet', variant, num_classes, **kwargs)


def fcos_cmt(variant: str = 'cmt_s', num_classes: int = 80, **kwargs: Any) -> FCOS:
    """torchvision's FCOS on a CMT backbone (FPN P3-P7, P6/P7 from C5), standard head.

    Arguments as for `retinanet_cmt`; FCOS's `anchor_sizes` (default ((8,), (16,), (32,), (64,), (128,)))
    set the object size range each level is trained on (4 to 8 times the size), with aspect ratio 1.
    """
    return build_detector('fcos', variant, num_classes, **kwargs)


def fasterrcnn_cmt(variant: str = 'cmt_s', num_classes: int = 81, **kwargs: Any) -> FasterRCNN:
    """torchvision's Faster R-CNN on a CMT backbone (FPN P2-P6), standard (v1) RPN and box heads.

    Arguments as for `retinanet_cmt`, except `num_classes`, which includes the background (label 0), and
    `anchor_sizes`, which set the RPN's anchors (default ((32,), (64,), (128,), (256,), (512,))).
    """
    return build_detector('fasterrcnn', variant, num_classes, **kwargs)


def maskrcnn_cmt(variant: str = 'cmt_s', num_classes: int = 81, **kwargs: Any) -> MaskRCNN:
    """torchvision's Mask R-CNN on a CMT backbone (FPN P2-P6), standard (v1) RPN, box and mask heads.

    Arguments as for `fasterrcnn_cmt` (`num_classes` includes the background).
    """
    return build_detector('maskrcnn', variant, num_classes, **kwargs)


DETECTORS: Dict[str, Callable[..., nn.Module]] = {
    'retinanet': retinanet_cmt,
    'fcos': fcos_cmt,
    'fasterrcnn': fasterrcnn_cmt,
    'maskrcnn': maskrcnn_cmt,
}


def anchor_tuples(detector: str, sizes: Optional[Sequence[float]]) -> Optional[Tuple[Tuple[float, ...], ...]]:
    """torchvision anchor sizes from one base size per pyramid level: RetinaNet gets torchvision's three
    octave scales per level (x1, x2^(1/3), x2^(2/3)), the others the size alone."""
    if sizes is None:
        return None
    scales = (1.0, 2 ** (1 / 3), 2 ** (2 / 3)) if detector == 'retinanet' else (1.0,)
    return tuple(tuple(float(s) * k for k in scales) for s in sizes)


def _detector_of(meta: Dict[str, Any]) -> nn.Module:
    """The detector that a detection run's exported weights, with metadata `meta`, load into."""
    return build_detector(meta['detector'], meta['model'], meta['num_classes'], min_size=meta['min_size'],
                          max_size=meta['max_size'],
                          anchor_sizes=anchor_tuples(meta['detector'], meta['anchor_sizes']))


def detector_from_checkpoint(path: PathLike, **overrides: Any) -> Tuple[nn.Module, Dict[str, Any]]:
    """(the detector in eval mode, its metadata) from a weight file a detection run exported; `overrides`
    replace stored sizes (`min_size`, `max_size`)."""
    return DETECTION.load(path, _detector_of, **overrides)


# the parts of torchvision's detectors that run on feature maps: the backbone and the heads
_MAP_PARTS = ('backbone', 'head', 'rpn.head', 'roi_heads.box_head', 'roi_heads.box_predictor',
              'roi_heads.mask_head', 'roi_heads.mask_predictor')


def detector_in_precision(model: nn.Module, precision: str, device: torch.device) -> nn.Module:
    """`model` (in eval mode) for inference on `device` at `--precision`: itself for fp32; for bf16, a copy with
    its CMT folded for inference (`runtime.folded_for`: on the CPU fast path on a CPU) in channels-last memory,
    and the backbone and every head running their weights in bfloat16 (`runtime.inference_model`), while the
    image transform, anchors, box decoding, non-maximum suppression and RoI pooling stay in float32: a bfloat16
    box coordinate would be off by up to 4 pixels at 1333, and the scores' ranking must not round."""
    return inference_model(model, device, precision, parts=_MAP_PARTS)
