"""COCO evaluation: the ground truth scores AP 1.0, nothing scores 0, results are COCO's format."""
import pytest
import torch

from cmtnet.detection.data import coco_layout, read_coco
from cmtnet.detection.evaluate import SUMMARY_NAMES, coco_evaluate, metric_names, to_coco_results
from coco_sets import tiny_synthetic


@pytest.fixture(scope='module')
def val_set(tmp_path_factory):
    images, annotations = coco_layout(tiny_synthetic(tmp_path_factory.mktemp('coco')))['val']
    return read_coco(annotations, images)


def test_the_ground_truth_itself_scores_ap_one(val_set):
    truth = [dict(a, score=1.0) for a in val_set.coco.anns.values()]
    metrics, summary = coco_evaluate(val_set.coco, truth, ('bbox', 'segm'))
    assert list(metrics) == metric_names(('bbox', 'segm'))
    for kind in ('bbox', 'segm'):
        assert metrics[f'{kind}_AP'] == pytest.approx(1.0) and metrics[f'{kind}_AP50'] == pytest.approx(1.0)
        assert metrics[f'{kind}_AR100'] == pytest.approx(1.0)
    assert summary.count('Average Precision') == 12 and summary.count('Average Recall') == 12


def test_no_detections_score_zero(val_set):
    metrics, _ = coco_evaluate(val_set.coco, [], ('bbox',))
    assert metrics == {f'bbox_{n}': 0.0 for n in SUMMARY_NAMES}


def test_detector_outputs_become_coco_results():
    output = {'boxes': torch.tensor([[10., 20., 30., 60.]]), 'scores': torch.tensor([0.9]),
              'labels': torch.tensor([2]), 'masks': torch.zeros(1, 1, 64, 64)}
    output['masks'][0, 0, 20:60, 10:30] = 1
    [result] = to_coco_results([output], [7], category_ids=[5, 9])
    assert result['image_id'] == 7 and result['category_id'] == 9 and result['bbox'] == [10, 20, 20, 40]
    assert result['score'] == pytest.approx(0.9) and result['segmentation']['size'] == [64, 64]
