"""Evaluation as ADE20K's benchmark scores it: mIoU, mAcc and aAcc over every pixel of the val set.

`evaluate_segmenter` runs a segmenter over a loader of `SegmentationSamples` (one image at its own size a
sample) with the protocol's inference (`inference.segment`: the image rescaled to fit the evaluation scale,
whole or in sliding windows, optionally mirrored and at several scales, scored at the mask's size), adds
each image's pixels to a confusion matrix, and sums the matrices of all processes under torchrun, so that
every process gets the figures of the whole set. The metrics are percentages, as the papers give them.

`eval_command` is `cmtnet segment eval`: a segmenter rebuilt from its exported weights, scored on val
images, with the per-class IoU table and the summary printed (the summary last).
"""
from pathlib import Path
from typing import Any, Dict, Iterable, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..engine.data import eval_loader
from ..errors import InputError
from ..runtime import all_reduce, amp_dtype, autocast, distributed, inference_path
from .data import (
    MaskSet, SegmentationSamples, class_names as flag_class_names, collate, data_paths, eval_transform, read_mask_set)
from .inference import segment
from .metrics import ConfusionMatrix
from .models import SEGMENTATION, segmenter_from_checkpoint, segmenter_in_precision
from .options import SegmentEvalOptions

__all__ = ['METRICS', 'Protocol', 'eval_command', 'evaluate_segmenter', 'metrics_of', 'read_val_set']

METRICS = ('mIoU', 'mAcc', 'aAcc')


class Protocol(NamedTuple):
    """How an image is scored: rescaled to fit `scale` (long, short side), whole or in `crop_size` windows
    2/3 of a crop apart (`slide`), mirrored too (`flip`), at each ratio of `scales`."""
    scale: Tuple[int, int]
    crop_size: int
    slide: bool = False
    flip: bool = False
    scales: Tuple[float, ...] = (1.0,)

    @classmethod
    def of(cls, meta: Dict[str, Any], slide: Optional[bool] = None, flip: bool = False,
           scales: Sequence[float] = (1.0,)) -> 'Protocol':
        """A checkpoint's protocol (its `meta`), with `slide` (None: the checkpoint's), `flip` and `scales`."""
        if not scales or any(s <= 0 for s in scales):
            raise InputError(f'--scales must be positive ratios, got {" ".join(map(str, scales))}')
        return cls(tuple(meta['scale']), meta['crop_size'], meta['slide'] if slide is None else slide, flip,
                   tuple(scales))

    def scores(self, model: nn.Module, image: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Class scores (K, H, W) of one image (3, H, W, 0..1) at its own size."""
        return segment(model, image, num_classes, scale=self.scale, scales=self.scales, flip=self.flip,
                       slide=self.slide, crop=self.crop_size, stride=max(1, round(self.crop_size * 2 / 3)))

    def describe(self) -> str:
        how = f'{self.crop_size}px sliding windows' if self.slide else 'whole images'
        extra = (', flipped too' if self.flip else '') + (
            f', scales {" ".join(map(str, self.scales))}' if self.scales != (1.0,) else '')
        return f'fitted to {self.scale[0]}x{self.scale[1]}, {how}{extra}'


def metrics_of(confusion: ConfusionMatrix) -> Dict[str, float]:
    """{'mIoU', 'mAcc', 'aAcc'} in percent."""
    return {k: 100 * v for k, v in confusion.summary().items()}


@torch.no_grad()
def evaluate_segmenter(model: nn.Module, loader: Iterable, num_classes: int, protocol: Protocol,
                       device: torch.device, amp: Optional[torch.dtype] = None) -> ConfusionMatrix:
    """The confusion matrix of `model` over `loader` (batches of `collate`), summed over the processes."""
    was_training = model.training
    model.eval()
    confusion = ConfusionMatrix(num_classes)
    for images, labels, skipped in loader:
        for image, label, stood_in in zip(images, labels, skipped):
            if stood_in:  # a stand-in for an unreadable image: scored at its own turn
                continue
            with autocast(device, amp):
                scores = protocol.scores(model, image.to(device, non_blocking=True), num_classes)
            confusion.update(scores.argmax(0).cpu(), label)
    model.train(was_training)
    summed = confusion.matrix.to(device)
    all_reduce(summed)
    confusion.matrix = summed.cpu()
    return confusion


def _listed(names: Sequence[str], most: int = 12) -> str:
    return ', '.join(names) if len(names) <= most else ', '.join(names[:most]) + ', ...'


def read_val_set(o: Any, class_names: Sequence[str]) -> MaskSet:
    """The checked val split of `o`'s data flags (`--data`, `--val-images/--val-masks`, or the embedded
    set), read with the classes a checkpoint was trained on (`--classes` / `--num-classes`, where given,
    must describe them)."""
    source = data_paths(o, splits=('val',))
    given = getattr(o, 'classes', None), getattr(o, 'num_classes', None)
    if given != (None, None):  # the training run's class flags, which must describe the checkpoint's classes
        names = flag_class_names(*given)
        if len(names) != len(class_names) or (given[0] is not None and names != list(class_names)):
            raise InputError(f'the checkpoint was trained on {len(class_names)} classes '
                             f'({_listed(class_names)}), not the {len(names)} of the class flags ({_listed(names)})')
    if source.class_names is not None and len(source.class_names) != len(class_names):
        raise InputError(f'the checkpoint scores {len(class_names)} classes, the val data has '
                         f'{len(source.class_names)}')
    images, masks = source.splits['val']
    return read_mask_set(images, masks, class_names, reduce_zero_label=source.reduce_zero_label, strict=o.strict)


def eval_command(options: SegmentEvalOptions) -> Dict[str, float]:
    """Print the per-class IoU table and the summary of a checkpoint on val images; the metrics."""
    o = options
    meta = SEGMENTATION.meta(o.checkpoint)  # a missing or foreign checkpoint is named before the data is read
    protocol = Protocol.of(meta, o.slide, o.flip, o.scales)
    val_set = read_val_set(o, meta['class_names'])
    model, meta = segmenter_from_checkpoint(o.checkpoint)
    with distributed(o.device) as p:
        model = segmenter_in_precision(model, o.precision, p.device)
        samples = SegmentationSamples(val_set, eval_transform(), strict=o.strict)
        loader = eval_loader(samples, 1, p.rank, p.world_size, o.workers, collate_fn=collate)
        confusion = evaluate_segmenter(model.to(p.device), loader, meta['num_classes'], protocol, p.device,
                                       amp_dtype(o.amp, p.device))
        if p.is_main:
            print(f'{meta["head"]} on {meta["model"]} in {inference_path(o.precision, p.device)}, {Path(o.checkpoint)} '
                  f'on {val_set.describe()}; '
                  f'{protocol.describe()}')
            print(confusion.table(meta['class_names']))
    return metrics_of(confusion)
