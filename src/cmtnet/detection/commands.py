"""RetinaNet, FCOS, Faster and Mask R-CNN (torchvision) on a CMT backbone, on COCO-format data.

`cmtnet detect train | eval | predict`, added as segmentation's are (`engine.dense.DenseCommands`):

    cmtnet detect train --config configs/detect_demo.yaml                  # the embedded digits, on CPU
    cmtnet detect train --data /path/coco --model cmt_s --backbone-weights cmt_small.pth
    torchrun --nproc_per_node 8 -m cmtnet detect train --data /path/coco --detector maskrcnn
    cmtnet detect eval --checkpoint runs/detect/model.safetensors            # the twelve-line COCO summary
    cmtnet detect predict --checkpoint runs/detect/model.safetensors photos/ --output runs/detect/predict

A checkpoint carries the detector, variant, sizes and class names, so eval and predict need no other flag.
"""
from ..engine.dense import DenseCommands
from .builders import DETECTION
from .evaluate import eval_command
from .options import DetectEvalOptions, DetectOptions, DetectPredictOptions
from .predict import predict_command

__all__ = ['add_parser', 'eval_command', 'parse_options', 'predict_command']

COMMANDS = DenseCommands(
    DETECTION, __package__, (DetectOptions, DetectEvalOptions, DetectPredictOptions), eval_command, predict_command,
    help='object detection and instance segmentation with a CMT backbone', description=__doc__.split('\n\n')[0],
    data='COCO format',
    helps=('train a detector', "a checkpoint's COCO box (and mask) AP", 'draw detections on image files'))
add_parser, parse_options = COMMANDS.add_parser, COMMANDS.parse_options
