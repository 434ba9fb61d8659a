"""The options of classification's commands, as typed objects: training, evaluation and prediction.

`TrainOptions` adds classification's own options (data, model, augmentation) to the engine's
`RunOptions`; `EvalOptions` and `PredictOptions` share `ModelOptions` (which weights, at which size, on
which device). The command line and YAML config files fill them (classification/commands.py); library
code, tests and benchmarks can build them directly:

    from cmtnet.classification import TrainOptions, train
    train(TrainOptions(model='cmt_ti', img_size=32, epochs=8, output='runs/digits'))
"""
from dataclasses import dataclass, field
from typing import List, Optional

from ..engine.options import RunOptions

__all__ = ['EvalOptions', 'ModelOptions', 'PredictOptions', 'TrainOptions']


@dataclass
class TrainOptions(RunOptions):
    """`cmtnet train`: the engine's options plus data, model and augmentation."""
    # data
    data: Optional[str] = None  # ImageFolder root holding train/ and val/; None: the embedded digits
    train_split: str = 'train'
    val_split: Optional[str] = None  # default: val, or test for the digits
    img_size: Optional[int] = None  # default: the model's native size
    strict: bool = False
    # model
    recipe: Optional[str] = None
    model: str = 'cmt_ti'
    pretrained: Optional[str] = None
    num_classes: Optional[int] = None  # default: those of the data
    drop: Optional[float] = None  # default: the variant's
    drop_path: float = 0.1
    wd_pos_bias: bool = False
    # augmentation and regularisation
    aa: str = 'rand-m9-mstd0.5-inc1'
    color_jitter: float = 0.4
    scale: List[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: List[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: float = 0.5
    reprob: float = 0.25
    mixup: float = 0.8
    cutmix: float = 1.0
    smoothing: float = 0.1
    aug_repeats: int = 3
    interpolation: str = 'bicubic'
    crop_pct: float = 0.875


@dataclass
class ModelOptions:
    """Which weights, at which size, on which device: shared by `cmtnet eval` and `cmtnet predict`."""
    checkpoint: Optional[str] = None
    model: Optional[str] = None  # default: the one named in the checkpoint
    img_size: Optional[int] = None  # default: the checkpoint's, else the native size
    crop_pct: Optional[float] = None  # default: the checkpoint's, else 0.875
    interpolation: Optional[str] = None  # default: the checkpoint's, else bicubic
    batch_size: int = 64
    device: Optional[str] = None
    amp: str = 'auto'
    channels_last: bool = False
    config: Optional[str] = None


@dataclass
class EvalOptions(ModelOptions):
    """`cmtnet eval`: a checkpoint on a split of an ImageFolder tree or of the digits."""
    data: Optional[str] = None
    split: Optional[str] = None  # default: val, or test for the digits
    workers: int = 2
    strict: bool = False


@dataclass
class PredictOptions(ModelOptions):
    """`cmtnet predict`: the top-k classes of image files and folders of images."""
    inputs: List[str] = field(default_factory=list)
    top_k: int = 5
