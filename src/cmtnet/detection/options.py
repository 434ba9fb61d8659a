"""The options of a detection run: the engine's, with the paper-era COCO 1x schedule as the defaults.

The CMT paper trains its detectors as its contemporaries did (mmdetection's 1x schedule): AdamW at lr 1e-4
(16 images a batch), weight decay 0.05 except on norms, biases and the position biases, 12 epochs with the
learning rate divided by 10 after epochs 8 and 11, a linear warm-up over the first 500 updates from a
thousandth of the rate, and images resized to a shorter side of 800 (longer side at most 1333).
"""
from dataclasses import dataclass, field
from typing import List, Optional

from ..engine.options import RunOptions

__all__ = ['DetectEvalOptions', 'DetectOptions', 'DetectPredictOptions']


@dataclass
class DetectOptions(RunOptions):
    """A detection run: data, detector and backbone, and the engine's options with the 1x defaults."""
    # data: a COCO 2017 tree (`data`), or the four paths; neither: the embedded digits set
    data: Optional[str] = None
    train_images: Optional[str] = None
    train_annotations: Optional[str] = None
    val_images: Optional[str] = None
    val_annotations: Optional[str] = None
    strict: bool = False
    hflip: float = 0.5
    # the model
    detector: str = 'retinanet'
    model: str = 'cmt_s'
    backbone_weights: Optional[str] = None
    trainable_stages: int = 4
    batch_norm: Optional[str] = None
    min_size: int = 800
    max_size: int = 1333
    anchor_sizes: Optional[List[float]] = None  # one base size per pyramid level (5)
    # the engine's options, with the 1x schedule's values
    epochs: int = 12
    batch_size: int = 2
    lr: Optional[float] = 1e-4
    opt: str = 'adamw'
    weight_decay: float = 0.05
    sched: str = 'multistep'
    decay_milestones: List[int] = field(default_factory=lambda: [8, 11])
    decay_rate: float = 0.1
    warmup_epochs: float = 0
    warmup_updates: int = 500
    warmup_lr: float = 1e-7
    min_lr: float = 0.0
    cooldown_epochs: int = 0
    workers: int = 2
    output: str = 'runs/detect'


@dataclass
class DetectEvalOptions:
    """`cmtnet detect eval`: a checkpoint's COCO AP on a val set (or the embedded one's)."""
    checkpoint: Optional[str] = None
    data: Optional[str] = None
    val_images: Optional[str] = None
    val_annotations: Optional[str] = None
    strict: bool = False
    min_size: Optional[int] = None  # default: the checkpoint's
    max_size: Optional[int] = None
    batch_size: int = 2
    workers: int = 2
    output: Optional[str] = None  # where coco_results.json goes; default: the checkpoint's folder
    device: Optional[str] = None
    amp: str = 'auto'
    config: Optional[str] = None


@dataclass
class DetectPredictOptions:
    """`cmtnet detect predict`: drawn detections and a JSON for image files and folders."""
    inputs: List[str] = field(default_factory=list)
    checkpoint: Optional[str] = None
    score_threshold: float = 0.5
    min_size: Optional[int] = None  # default: the checkpoint's
    max_size: Optional[int] = None
    output: str = 'runs/detect/predict'
    device: Optional[str] = None
    amp: str = 'auto'
    config: Optional[str] = None
