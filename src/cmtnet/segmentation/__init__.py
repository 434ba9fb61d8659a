"""Semantic segmentation with CMT: Semantic FPN and UPerNet heads (smp's decoders where they are the
published ones), ADE20K and mask folders checked before training, protocol inference, mIoU, and the
embedded set."""
from .inference import segment, slide_logits
from .metrics import ConfusionMatrix
from .models import HEADS, CMTSegmenter, build_segmenter, semantic_fpn_cmt, upernet_cmt

__all__ = ['HEADS', 'CMTSegmenter', 'ConfusionMatrix', 'build_segmenter', 'segment', 'semantic_fpn_cmt',
           'slide_logits', 'upernet_cmt']
