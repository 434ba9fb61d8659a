"""Semantic segmentation as a task of the training engine: image and mask folders in, cross-entropy,
mIoU out.

The engine gives segmentation what it gives classification and detection (processes, autocast, EMA,
atomic checkpoints and exact resume, the NaN stop, metrics.csv, curves.png, the exported weights); this
module only says what the data, the model, the loss and the metrics are:

- data: ADE20K's release, the user's mask folders or the embedded set, checked before any model is built
  (`data.read_mask_set`), augmented as mmseg's ADE20K pipeline (`data.train_transform`);
- loss: cross-entropy over the pixels of logits at the input's size, pixels labelled 255 left out;
- metrics: mIoU, mAcc and aAcc in percent over the whole val set (`evaluate.evaluate_segmenter`), mIoU
  picking best.safetensors.

Every exported weight file carries what evaluation and prediction need (`meta`: head, variant, classes,
crop size, evaluation scale, sliding windows), so that `models.segmenter_from_checkpoint` rebuilds the
segmenter from the file alone. `train(options)` runs the task on the engine (`cmtnet segment train`).
"""
from typing import Any, Dict, Optional, Sequence, Tuple

import torch.nn as nn
import torch.nn.functional as F

from ..engine.dense import DenseTask
from ..engine.task import Losses
from ..engine.trainer import fit
from ..errors import InputError
from ..runtime import Processes
from .data import (
    DataSource, MaskSet, SegmentationSamples, class_names, collate, data_paths, eval_transform, median_size,
    read_mask_set, train_transform)
from .evaluate import Protocol, evaluate_segmenter, metrics_of
from .metrics import IGNORE_INDEX
from .models import HEADS, SEGMENTATION, SIZE_DIVISOR, build_segmenter
from .options import SegmentOptions

__all__ = ['SegmentationTask', 'train']


def train(options: SegmentOptions) -> Dict[str, Any]:
    """Train as `options` say; the last epoch's metrics."""
    return fit(SegmentationTask(options), options)


def base_scale(given: Optional[Sequence[int]], source: DataSource, train_set: MaskSet) -> Tuple[Tuple[int, int], str]:
    """The run's base scale and where it comes from: `--scale` where given, else the layout's (ADE20K's),
    else the train images' median size, so that a config written for other images does not impose its
    scale on these."""
    if given:
        return (given[0], given[1]), '--scale'
    if source.scale is not None:
        return source.scale, "the layout's (--scale LONG SHORT sets another)"
    return median_size(train_set), (f'the median size of the {len(train_set.pairs)} train images '
                                    f'(--scale LONG SHORT sets another)')


def check_options(o: SegmentOptions) -> None:
    """Refuse inconsistent data and model options before any data is read."""
    if o.head not in HEADS:
        raise InputError(f'--head {o.head!r}: expected one of {", ".join(HEADS)}')
    if o.crop_size < SIZE_DIVISOR:
        raise InputError(f'--crop-size must be at least {SIZE_DIVISOR} pixels, got {o.crop_size}')
    if o.hflip is not None and not 0 <= o.hflip <= 1:
        raise InputError(f'--hflip must be a probability in [0, 1], got {o.hflip}')
    if o.scale is not None and (len(o.scale) != 2 or min(o.scale) < 1):
        raise InputError(f'--scale takes two positive sides (LONG SHORT), got {" ".join(map(str, o.scale))}')
    if o.head == 'upernet' and o.batch_size < 2 and not o.sync_bn:
        # its pyramid pooling normalises 1x1 maps: BatchNorm needs more than one value per channel
        raise InputError('--head upernet trains with at least 2 images per process (--batch-size 2), or with '
                         '--sync-bn over several processes: its pyramid-pooling BatchNorm cannot normalise one image')


class SegmentationTask(DenseTask):
    """Train a segmentation head on CMT on image and mask folders; see the module docstring."""
    best_metric = 'mIoU'  # metrics.csv columns: mIoU, mAcc, aAcc
    ema_metrics = ('mIoU',)  # with --model-ema, the EMA weights' mIoU too (ema_mIoU)
    curves = {
        'loss': [('train_loss', 'train')],
        'val (%)': [('mIoU', 'mIoU'), ('mAcc', 'mAcc'), ('aAcc', 'aAcc')],
    }

    def __init__(self, options: SegmentOptions):
        check_options(options)
        self.options = options

    def setup(self, processes: Processes) -> None:
        o = self.options
        source = data_paths(o)
        names = class_names(o.classes, o.num_classes, default=source.class_names)
        self.train_set, self.val_set = (
            read_mask_set(*source.splits[split], names, reduce_zero_label=source.reduce_zero_label, strict=o.strict)
            for split in ('train', 'val'))
        scale, why = base_scale(o.scale, source, self.train_set)
        self.protocol = Protocol(scale, o.crop_size, o.slide)
        hflip = source.hflip if o.hflip is None else o.hflip
        train = SegmentationSamples(self.train_set, train_transform(o.crop_size, scale, hflip=hflip), strict=o.strict)
        val = SegmentationSamples(self.val_set, eval_transform(), strict=o.strict)
        self.finish_setup(processes, train, val, 1, collate)
        if processes.is_main:
            print(f'base scale {scale[0]}x{scale[1]} (long x short side): {why}')

    @property
    def num_classes(self) -> int:
        return self.train_set.num_classes

    def build_model(self) -> nn.Module:
        o = self.options
        return build_segmenter(o.head, o.model, self.num_classes, backbone_weights=o.backbone_weights)

    def training_step(self, model: nn.Module, batch: Any) -> Losses:
        images, labels, _ = batch
        device = self.processes.device
        logits = model(images.to(device, non_blocking=True))
        return F.cross_entropy(logits.float(), labels.to(device, non_blocking=True), ignore_index=IGNORE_INDEX)

    def evaluate(self, model: nn.Module) -> Dict[str, float]:
        self.last_confusion = evaluate_segmenter(model, self.val_loader, self.num_classes, self.protocol,
                                                 self.processes.device, self.amp)
        return metrics_of(self.last_confusion)

    def meta(self) -> Dict[str, Any]:
        o = self.options
        return dict(task=SEGMENTATION.name, head=o.head, model=o.model, num_classes=self.num_classes,
                    class_names=self.train_set.class_names, crop_size=o.crop_size, scale=list(self.protocol.scale),
                    slide=o.slide)

    def describe(self) -> str:
        o = self.options
        return (f'{o.head} on {o.model} ({self.num_classes} classes, {o.crop_size}px crops, evaluated '
                f'{self.protocol.describe()})')

    def format_metrics(self, row: Dict[str, Any]) -> str:
        return '  '.join(f'{k} {row[k]:.4g}' for k in ('train_loss', 'mIoU', 'mAcc', 'aAcc', 'ema_mIoU') if k in row)

    def summary(self, last: Dict[str, Any], best: float, best_epoch: int) -> str:
        return (f'mIoU {last["mIoU"]:.2f}, mAcc {last["mAcc"]:.2f}, aAcc {last["aAcc"]:.2f} '
                f'(best mIoU {best:.2f} at epoch {best_epoch})')
