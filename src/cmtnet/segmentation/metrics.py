"""Semantic segmentation metrics over a confusion matrix: mIoU, mAcc, aAcc and the per-class table.

As ADE20K's benchmark (and mmseg) computes them, over all pixels of the evaluation set at once, not per
image: for class c, IoU = TP / (TP + FP + FN) and Acc = TP / (TP + FN); mIoU and mAcc are their means over
the classes present in the labels or the predictions (a class seen in neither is left out of the mean),
aAcc is the share of labelled pixels predicted right. Pixels labelled `ignore_index` (255) count nowhere.
"""
import math
from typing import Dict, List, Optional, Sequence

import torch

__all__ = ['IGNORE_INDEX', 'ConfusionMatrix']

IGNORE_INDEX = 255


class ConfusionMatrix:
    """Pixel counts `matrix[label, prediction]`, accumulated batch by batch with `torch.bincount`.

    `matrix` is a plain int64 tensor, so that processes can sum theirs (all_reduce) before `summary()`.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, prediction: torch.Tensor, label: torch.Tensor) -> None:
        """Add the pixels of `prediction` (class indices) against `label` (same shape; ignore_index ignored)."""
        if prediction.shape != label.shape:
            raise ValueError(f'prediction {tuple(prediction.shape)} and label {tuple(label.shape)} differ in shape')
        label, prediction = label.reshape(-1).long(), prediction.reshape(-1).long()
        kept = label != self.ignore_index
        k = self.num_classes
        counts = torch.bincount(label[kept].cpu() * k + prediction[kept].cpu(), minlength=k * k)
        self.matrix += counts.reshape(k, k)

    def per_class(self) -> Dict[str, List[float]]:
        """{'iou': [...], 'acc': [...]} per class, NaN where a class is in neither labels nor predictions
        (IoU) or not in the labels (Acc)."""
        m = self.matrix.double()
        tp = m.diag()
        labelled, predicted = m.sum(1), m.sum(0)
        union = labelled + predicted - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
        acc = torch.where(labelled > 0, tp / labelled.clamp(min=1), torch.full_like(tp, math.nan))
        return {'iou': iou.tolist(), 'acc': acc.tolist()}

    def summary(self) -> Dict[str, float]:
        """{'mIoU', 'mAcc', 'aAcc'}, as fractions (0..1)."""
        per_class = self.per_class()
        total = int(self.matrix.sum())
        return {
            'mIoU': _nanmean(per_class['iou']),
            'mAcc': _nanmean(per_class['acc']),
            'aAcc': float(self.matrix.diag().sum()) / total if total else math.nan,
        }

    def majority(self) -> 'ConfusionMatrix':
        """The confusion matrix of the answer that labels every pixel with the most common labelled class: the
        floor a segmenter has to beat."""
        baseline = ConfusionMatrix(self.num_classes, self.ignore_index)
        labelled = self.matrix.sum(1)
        baseline.matrix[:, int(labelled.argmax())] = labelled
        return baseline

    def table(self, class_names: Optional[Sequence[str]] = None) -> str:
        """The per-class IoU and Acc table (percent), the summary of labelling every pixel with the most
        common class (`majority`), then the summary line."""
        names = list(class_names) if class_names is not None else [str(c) for c in range(self.num_classes)]
        per_class = self.per_class()
        width = max(5, *(len(n) for n in names))
        lines = [f'{"class":<{width}}  {"IoU":>6}  {"Acc":>6}']
        for name, iou, acc in zip(names, per_class['iou'], per_class['acc']):
            lines.append(f'{name:<{width}}  {_percent(iou):>6}  {_percent(acc):>6}')
        most_common = names[int(self.matrix.sum(1).argmax())]
        lines.append(f'(every pixel {most_common!r}, the most common class: {_summary(self.majority().summary())})')
        lines.append(_summary(self.summary()))
        return '\n'.join(lines)


def _summary(s: Dict[str, float]) -> str:
    return f'mIoU {_percent(s["mIoU"])}  mAcc {_percent(s["mAcc"])}  aAcc {_percent(s["aAcc"])}'


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def _percent(value: float) -> str:
    return '-' if math.isnan(value) else f'{100 * value:.2f}'
