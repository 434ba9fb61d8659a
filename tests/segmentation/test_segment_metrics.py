"""mIoU, mAcc and aAcc over a confusion matrix, against a hand-computed example."""
import math

import pytest
import torch

from cmtnet.segmentation.metrics import ConfusionMatrix

# 3 labelled classes and a 4th seen nowhere; the pixel labelled 255 is ignored whatever was predicted there
LABEL = torch.tensor([[0, 0, 1], [1, 2, 255]])
PREDICTION = torch.tensor([[0, 1, 1], [1, 1, 0]])


def test_hand_computed_example():
    cm = ConfusionMatrix(4)
    cm.update(PREDICTION, LABEL)
    # [label, prediction]: (0,0) (0,1) (1,1) (1,1) (2,1)
    assert cm.matrix.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    per_class = cm.per_class()
    # class 0: TP 1, union 2; class 1: TP 2, union 4 (2 labelled + 4 predicted - 2); class 2: TP 0, union 1
    assert per_class['iou'][:3] == [0.5, 0.5, 0.0] and math.isnan(per_class['iou'][3])
    assert per_class['acc'][:3] == [0.5, 1.0, 0.0] and math.isnan(per_class['acc'][3])
    summary = cm.summary()
    assert summary['mIoU'] == pytest.approx(1 / 3)  # the class seen nowhere is left out of the mean
    assert summary['mAcc'] == pytest.approx(0.5)
    assert summary['aAcc'] == pytest.approx(3 / 5)


def test_batches_accumulate_as_one():
    whole = ConfusionMatrix(4)
    whole.update(torch.stack([PREDICTION, PREDICTION.flip(-1)]), torch.stack([LABEL, LABEL]))
    parts = ConfusionMatrix(4)
    parts.update(PREDICTION, LABEL)
    parts.update(PREDICTION.flip(-1), LABEL)
    assert torch.equal(whole.matrix, parts.matrix) and int(whole.matrix.sum()) == 10


def test_table_names_every_class_and_ends_with_the_summary():
    cm = ConfusionMatrix(4)
    cm.update(PREDICTION, LABEL)
    lines = cm.table(['wall', 'sky', 'tree', 'boat']).splitlines()
    assert lines[1].split() == ['wall', '50.00', '50.00']
    assert lines[4].split() == ['boat', '-', '-']
    assert lines[-1] == 'mIoU 33.33  mAcc 50.00  aAcc 60.00'
    # the floor beside it: every pixel 'wall' (label 0, 2 of the 5 labelled pixels, the first of the two most
    # common) -> IoU 2/5 for wall, 0 for sky and tree
    assert lines[-2] == "(every pixel 'wall', the most common class: mIoU 13.33  mAcc 33.33  aAcc 40.00)"


def test_the_majority_answer_labels_every_pixel_with_the_most_common_class():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 1, 2, 2, 0]), torch.tensor([0, 1, 2, 2, 2, 255]))  # label 2 is most common
    majority = cm.majority()
    assert majority.matrix.tolist() == [[0, 0, 1], [0, 0, 1], [0, 0, 3]]
    summary = majority.summary()
    assert summary['aAcc'] == pytest.approx(3 / 5) and summary['mIoU'] == pytest.approx(3 / 5 / 3)


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match=r'\(2, 3\).*\(3, 2\)'):
        ConfusionMatrix(3).update(torch.zeros(2, 3), torch.zeros(3, 2))
