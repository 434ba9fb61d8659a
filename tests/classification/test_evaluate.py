"""Evaluation's figures: top-5 only where it can be below 100% (more than 5 classes)."""
import pytest
import torch
import torch.nn as nn

from cmtnet.classification.evaluate import evaluate
from cmtnet.classification.options import TrainOptions
from cmtnet.classification.train import ClassificationTask


def _batches(logits: torch.Tensor, targets: torch.Tensor):
    """One batch as ReadableImages gives it: (images, targets, skipped); the images are the logits, which
    the model below passes through."""
    return [(logits, targets, torch.zeros(len(targets), dtype=torch.long))]


@pytest.mark.parametrize('num_classes', [6, 10])
def test_top5_counts_the_images_whose_class_is_among_the_five_best(num_classes):
    logits = torch.arange(num_classes, dtype=torch.float).repeat(3, 1)  # class num_classes - 1 is the best
    targets = torch.tensor([num_classes - 1, num_classes - 5, 0])  # top-1, 5th best, last
    result = evaluate(nn.Identity(), _batches(logits, targets), num_classes, torch.device('cpu'))
    assert result['top1'] == pytest.approx(100 / 3)
    assert result['top5'] == pytest.approx(200 / 3)


@pytest.mark.parametrize('num_classes', [2, 5])
def test_top5_is_left_out_with_five_classes_or_fewer(num_classes):
    logits = torch.eye(num_classes)
    result = evaluate(nn.Identity(), _batches(logits, torch.arange(num_classes)), num_classes, torch.device('cpu'))
    assert result['top1'] == 100 and 'top5' not in result


def test_the_epoch_line_shows_top5_only_where_measured():
    task = ClassificationTask(TrainOptions())
    row = dict(train_loss=1., val_loss=0.5, val_top1=50.)
    assert 'top-5' not in task.format_metrics(row)
    assert 'top-5 90.00%' in task.format_metrics(dict(row, val_top5=90.))
