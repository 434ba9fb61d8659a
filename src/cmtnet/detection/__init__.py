"""CMT for object detection and instance segmentation on torchvision's detectors.

`backbone` adapts CMT to torchvision (a feature pyramid on the CMT stages, fine-tuning controls);
`builders` returns torchvision's RetinaNet, FCOS, Faster R-CNN and Mask R-CNN built on it.
"""
from .backbone import CMTFeaturePyramid, cmt_fpn_backbone
from .builders import (
    DETECTORS, HAS_BACKGROUND, build_detector, fasterrcnn_cmt, fcos_cmt, maskrcnn_cmt, retinanet_cmt,
)

__all__ = [
    'CMTFeaturePyramid', 'DETECTORS', 'HAS_BACKGROUND', 'build_detector', 'cmt_fpn_backbone',
    'fasterrcnn_cmt', 'fcos_cmt', 'maskrcnn_cmt', 'retinanet_cmt',
]
