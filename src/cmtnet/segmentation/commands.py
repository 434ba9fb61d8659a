"""Semantic FPN and UPerNet on a CMT backbone, on ADE20K or on folders of images and single-channel PNG masks.

`cmtnet segment train | eval | predict`, added as detection's are (`engine.dense.DenseCommands`):

    cmtnet segment train --config configs/segment_demo.yaml                 # the embedded photo set, on CPU
    cmtnet segment train --data /path/ADEChallengeData2016 --model cmt_s --backbone-weights cmt_small.pth
    torchrun --nproc_per_node 8 -m cmtnet segment train --data /path/ade --backbone-weights cmt_small.pth
    cmtnet segment eval --checkpoint runs/segment/model.safetensors --flip --scales 0.75 1.0 1.25
    cmtnet segment predict --checkpoint runs/segment/model.safetensors photos/ --output runs/segment/predict

A checkpoint carries the head, variant, classes, crop size and evaluation scale, so eval and predict need
no other flag.
"""
from ..engine.dense import DenseCommands
from .evaluate import eval_command
from .models import SEGMENTATION
from .options import SegmentEvalOptions, SegmentOptions, SegmentPredictOptions
from .predict import predict_command

__all__ = ['add_parser', 'eval_command', 'parse_options', 'predict_command']

COMMANDS = DenseCommands(
    SEGMENTATION, __package__, (SegmentOptions, SegmentEvalOptions, SegmentPredictOptions), eval_command,
    predict_command, help='semantic segmentation with a CMT backbone', description=__doc__.split('\n\n')[0],
    data='ADE20K or image and mask folders', helps=('train a segmenter', "a checkpoint's mIoU, mAcc and aAcc",
                                                   'segment image files'))
add_parser, parse_options = COMMANDS.add_parser, COMMANDS.parse_options
