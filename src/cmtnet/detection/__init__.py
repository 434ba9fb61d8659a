"""CMT for object detection and instance segmentation on torchvision's detectors.

`backbone` adapts CMT to torchvision (a feature pyramid on the CMT stages, fine-tuning controls);
`builders` returns torchvision's RetinaNet, FCOS, Faster R-CNN and Mask R-CNN built on it, and rebuilds a
detector from the weights a run exported (`detector_from_checkpoint`). `evaluate` and `predict` score and
draw a detector (`cmtnet detect eval`, `predict`) without importing the training loop; `task` trains one on
the engine (`cmtnet detect train`).
"""
from .backbone import CMTFeaturePyramid, cmt_fpn_backbone
from .builders import (
    DETECTORS, HAS_BACKGROUND, build_detector, detector_from_checkpoint, fasterrcnn_cmt, fcos_cmt, maskrcnn_cmt,
    retinanet_cmt,
)

__all__ = [
    'CMTFeaturePyramid', 'DETECTORS', 'HAS_BACKGROUND', 'build_detector', 'cmt_fpn_backbone',
    'detector_from_checkpoint', 'fasterrcnn_cmt', 'fcos_cmt', 'maskrcnn_cmt', 'retinanet_cmt',
]
