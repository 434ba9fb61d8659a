"""Detection as a task of the training engine: COCO data in, torchvision's losses, COCO AP out.

The engine gives detection what it gives classification (processes, autocast, EMA, atomic checkpoints and
exact resume, the NaN stop, metrics.csv, curves.png, the exported weights); this module only says what
the data, the model, the loss and the metrics are. Every exported weight file carries what evaluation and
prediction need (`meta`): detector, variant, sizes, anchors, class names and category ids, so that
`builders.detector_from_checkpoint` rebuilds the detector from the file alone, without this module.
`train(options)` runs the task on the engine (`cmtnet detect train`).
"""
from typing import Any, Dict

import torch
import torch.nn as nn

from ..engine.dense import DenseTask
from ..engine.task import Losses
from ..engine.trainer import fit
from ..errors import InputError
from ..runtime import Processes
from .builders import DETECTION, DETECTORS, HAS_BACKGROUND, anchor_tuples, build_detector
from .data import DetectionSamples, collate, data_paths, read_coco, train_hflip
from .evaluate import evaluate_detector, iou_types, metric_names
from .options import DetectOptions

__all__ = ['DetectionTask', 'train']


def train(options: DetectOptions) -> Dict[str, Any]:
    """Train as `options` say; the last epoch's metrics."""
    return fit(DetectionTask(options), options)


class DetectionTask(DenseTask):
    """Train a torchvision detector on a CMT backbone on COCO-format data; see the module docstring."""
    best_metric = 'bbox_AP'  # metrics.csv columns are COCO's names: bbox_AP, bbox_AP50, ...
    curves = {
        'loss': [('train_loss', 'train')],
        'box AP (val)': [('bbox_AP', 'AP'), ('bbox_AP50', 'AP50')],
    }

    def __init__(self, options: DetectOptions):
        if options.detector not in DETECTORS:
            raise InputError(f'--detector {options.detector!r}: expected one of {", ".join(DETECTORS)}')
        if options.hflip is not None and not 0 <= options.hflip <= 1:
            raise InputError(f'--hflip must be a probability in [0, 1], got {options.hflip}')
        self.options = options
        self.first_label = 1 if HAS_BACKGROUND[options.detector] else 0
        self.iou_types = iou_types(options.detector)

    def setup(self, processes: Processes) -> None:
        o = self.options
        paths = data_paths(o)
        self.train_set = read_coco(paths['train'][1], paths['train'][0], strict=o.strict, train=True)
        self.val_set = read_coco(paths['val'][1], paths['val'][0], strict=o.strict,
                                 categories=self.train_set.category_ids)
        masks = 'segm' in self.iou_types
        train = DetectionSamples(self.train_set, masks=masks, hflip=train_hflip(o), strict=o.strict,
                                 first_label=self.first_label)
        val = DetectionSamples(self.val_set, strict=o.strict, first_label=self.first_label)
        self.finish_setup(processes, train, val, o.batch_size, collate, train_collate_fn=collate)

    @property
    def num_classes(self) -> int:
        return self.train_set.num_classes + self.first_label

    def build_model(self) -> nn.Module:
        o = self.options
        return build_detector(
            o.detector, o.model, self.num_classes, backbone_weights=o.backbone_weights,
            trainable_stages=o.trainable_stages, batch_norm=o.batch_norm, min_size=o.min_size, max_size=o.max_size,
            anchor_sizes=anchor_tuples(o.detector, o.anchor_sizes))

    def training_step(self, model: nn.Module, batch: Any) -> Losses:
        images, targets, _ = batch
        device = self.processes.device
        images = [image.to(device, non_blocking=True) for image in images]
        targets = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}
                   for t in targets]
        return model(images, targets)

    def evaluate(self, model: nn.Module) -> Dict[str, float]:
        metrics, self.last_summary, _ = evaluate_detector(
            model, self.val_loader, self.val_set, self.iou_types, self.processes.device, self.amp, self.first_label)
        return metrics

    def meta(self) -> Dict[str, Any]:
        o = self.options
        return dict(task=DETECTION.name, detector=o.detector, model=o.model, num_classes=self.num_classes,
                    class_names=self.train_set.class_names, category_ids=self.train_set.category_ids,
                    min_size=o.min_size, max_size=o.max_size, anchor_sizes=o.anchor_sizes)

    def describe(self) -> str:
        o = self.options
        return (f'{o.detector} on {o.model} ({self.train_set.num_classes} classes, images resized to '
                f'{o.min_size}/{o.max_size})')

    def format_metrics(self, row: Dict[str, Any]) -> str:
        shown = ['train_loss'] + [n for n in metric_names(self.iou_types) if n.endswith(('_AP', '_AP50'))]
        return '  '.join(f'{k} {row[k]:.4g}' for k in shown if k in row)

    def summary(self, last: Dict[str, Any], best: float, best_epoch: int) -> str:
        return f'bbox AP {last["bbox_AP"]:.4g}, AP50 {last["bbox_AP50"]:.4g} (best AP {best:.4g} at epoch {best_epoch})'

