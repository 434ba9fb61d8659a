"""Image classification as the engine's task: the released CMT recipe from timm's components.

    from cmtnet.classification import TrainOptions, train
    train(TrainOptions(model='cmt_ti', img_size=32, epochs=8))       # the embedded digits, on a CPU

The task gives the engine an ImageFolder tree (or the embedded digits) with timm's augmentation
(RandAugment, random erasing, repeated augmentation), mixup / cutmix with a soft-target loss (or label
smoothing), the CMT model (fresh, or fine-tuned from released or own weights with the classifier reset and
the position biases resized), and top-1 / top-5 evaluation (top-5 above 5 classes only). The engine does the rest (see
cmtnet.engine.trainer): `cmtnet train` runs this from one CPU to many GPUs under torchrun.
"""
from typing import Any, Dict, List, Set

import torch
import torch.nn as nn
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from ..checkpoints import create_model
from ..engine.data import ReadableImages, eval_loader, train_loader
from ..engine.task import Task
from ..errors import InputError
from ..models.variants import check_img_size, native_img_size
from ..runtime import Processes, amp_dtype, to_device
from .data import build_dataset, default_eval_split, eval_transform, train_transform
from .evaluate import evaluate, has_top5
from .options import TrainOptions

__all__ = ['ClassificationTask', 'train']


def train(options: TrainOptions) -> Dict[str, Any]:
    """Train as `options` say; returns the last epoch's metrics (`val_top1`, `train_loss`, ...)."""
    check_options(options)
    from ..engine.trainer import fit  # the training loop comes with a run, not with the package (eval, predict)
    return fit(ClassificationTask(options), options)


def check_options(o: TrainOptions) -> None:
    """Refuse inconsistent classification options before any work starts."""
    if o.img_size is not None:
        check_img_size(o.img_size, '--img-size')
    if (o.mixup > 0 or o.cutmix > 0) and o.batch_size % 2:
        raise InputError(f'mixup / cutmix pair the images of a batch: --batch-size must be even, got {o.batch_size}')


class ClassificationTask(Task):
    """Classify images into the classes of the data (ImageFolder's folders, or the ten digits)."""
    best_metric = 'top1'
    ema_metrics = ('top1', 'top5')
    curves = {
        'loss': [('train_loss', 'train'), ('val_loss', 'validation')],
        'validation accuracy (%)': [('val_top1', 'top-1'), ('val_top5', 'top-5'), ('ema_top1', 'EMA top-1')],
    }

    def __init__(self, options: TrainOptions):
        self.options = options
        self.img_size = options.img_size or native_img_size(options.model)

    def setup(self, processes: Processes) -> None:
        o, size = self.options, self.img_size
        self.device, self.amp = processes.device, amp_dtype(o.amp, processes.device)
        train_set = build_dataset(o.data, o.train_split, size)
        self.val_split = o.val_split or default_eval_split(o.data)
        val_set = build_dataset(o.data, self.val_split, size)
        self.class_names: List[str] = list(train_set.classes)
        if list(val_set.classes) != self.class_names:
            raise InputError(f'the classes of {self.val_split} ({val_set.classes[:5]}...) differ from those of '
                             f'{o.train_split} ({self.class_names[:5]}...)')
        self.num_classes = len(self.class_names)
        self.ema_metrics = ('top1', 'top5') if has_top5(self.num_classes) else ('top1',)
        if o.num_classes is not None and o.num_classes != self.num_classes:
            raise InputError(f'--num-classes is {o.num_classes}, but the data has {self.num_classes} classes')
        pin = processes.device.type == 'cuda'
        rank, world = processes.rank, processes.world_size
        self.train_loader = train_loader(
            ReadableImages(train_set, train_transform(
                size, o.scale, o.ratio, o.hflip, o.color_jitter, o.aa, o.reprob, o.interpolation), o.strict),
            o.batch_size, rank, world, o.seed, o.aug_repeats, o.workers, pin)
        self.val_loader = eval_loader(
            ReadableImages(val_set, eval_transform(size, o.crop_pct, o.interpolation), o.strict),
            o.batch_size, rank, world, o.workers, pin)
        self.mixup = None
        if o.mixup > 0 or o.cutmix > 0:
            self.mixup = Mixup(mixup_alpha=o.mixup, cutmix_alpha=o.cutmix, label_smoothing=o.smoothing,
                               num_classes=self.num_classes)
            self.criterion = SoftTargetCrossEntropy()
        elif o.smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=o.smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()

    def build_model(self) -> nn.Module:
        o = self.options
        model_args = dict(num_classes=self.num_classes, img_size=self.img_size, drop_path_rate=o.drop_path)
        if o.drop is not None:
            model_args['drop_rate'] = o.drop
        return create_model(o.model, o.pretrained, **model_args)

    def training_step(self, model: nn.Module, batch: Any) -> torch.Tensor:
        images, targets, _ = batch
        images = to_device(images, self.device, self.options.channels_last)
        targets = targets.to(self.device, non_blocking=True)
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)
        return self.criterion(model(images), targets)

    def skipped(self, batch: Any) -> torch.Tensor:
        return batch[2]

    def evaluate(self, model: nn.Module) -> Dict[str, float]:
        result = evaluate(model, self.val_loader, self.num_classes, self.device, self.amp, self.options.channels_last)
        return {k: result[k] for k in ('loss', 'top1', 'top5') if k in result}

    def no_weight_decay(self, model: nn.Module) -> Set[str]:
        return set() if self.options.wd_pos_bias else model.no_weight_decay()

    def meta(self) -> Dict[str, Any]:
        o = self.options
        return dict(model=o.model, img_size=self.img_size, num_classes=self.num_classes,
                    class_names=self.class_names, crop_pct=o.crop_pct, interpolation=o.interpolation)

    def describe(self) -> str:
        return (f'{self.options.model} at {self.img_size}px, {self.num_classes} classes, '
                f'{len(self.train_loader.dataset)} training images')

    def format_metrics(self, row: Dict[str, Any]) -> str:
        top5 = f'  top-5 {row["val_top5"]:.2f}%' if 'val_top5' in row else ''
        ema = f'  ema top-1 {row["ema_top1"]:.2f}%' if 'ema_top1' in row else ''
        return (f'train loss {row["train_loss"]:.4f}  val loss {row["val_loss"]:.4f}  top-1 {row["val_top1"]:.2f}%'
                f'{top5}{ema}')

    def summary(self, last: Dict[str, Any], best: float, best_epoch: int) -> str:
        ema = f', EMA {last["ema_top1"]:.2f}%' if 'ema_top1' in last else ''
        return f'val top-1 {last["val_top1"]:.2f}%{ema} (best {best:.2f}% at epoch {best_epoch})'
