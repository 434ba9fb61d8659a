"""The embedded detection set: reproducible, real COCO files whose boxes are their masks' extents."""
import json
from dataclasses import replace

import numpy as np
from pycocotools import mask as coco_mask

from cmtnet.detection.data import coco_layout, read_coco
from coco_sets import TINY, tiny_synthetic


def test_the_set_is_the_same_every_time(tmp_path):
    a, b = tiny_synthetic(tmp_path / 'a'), tiny_synthetic(tmp_path / 'b')
    for split in ('train', 'val'):
        name = f'annotations/instances_{split}2017.json'
        assert (a / name).read_text() == (b / name).read_text()
        first = json.loads((a / name).read_text())['images'][0]['file_name']
        assert (a / f'{split}2017' / first).read_bytes() == (b / f'{split}2017' / first).read_bytes()


def test_boxes_are_the_extent_of_the_digit_masks(tmp_path):
    root = tiny_synthetic(tmp_path)
    data = json.loads((root / 'annotations/instances_train2017.json').read_text())
    assert [c['name'] for c in data['categories']] == [str(d) for d in range(10)]
    assert len(data['images']) == TINY.train_images
    for ann in data['annotations']:
        mask = coco_mask.decode(ann['segmentation'])
        rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        x, y, w, h = ann['bbox']
        assert (x, y, x + w, y + h) == (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
        assert ann['area'] == mask.sum() and h <= TINY.max_digit
        assert 1 <= ann['category_id'] <= 10


def test_the_reader_takes_it_whole(tmp_path):
    root = tiny_synthetic(tmp_path)
    assert tiny_synthetic(root) == root  # made once, then reused
    for split, (images, annotations) in coco_layout(root).items():
        coco_set = read_coco(annotations, images, strict=True)
        assert coco_set.class_names == [str(d) for d in range(10)] and not any(coco_set.skipped.values())


def test_bold_digits_widen_every_stroke(tmp_path):
    """The same draws with and without `bold`: each bold mask holds the plain one and is wider than it."""
    bold, plain = (json.loads((tiny_synthetic(tmp_path / name, replace(TINY, bold=b)) / 'annotations'
                               / 'instances_train2017.json').read_text()) for name, b in (('bold', 0.5), ('plain', 0.0)))
    assert TINY.bold == 0.5 and len(bold['annotations']) == len(plain['annotations']) > 0
    for a, b in zip(bold['annotations'], plain['annotations']):
        wide, thin = (coco_mask.decode(x['segmentation']).astype(bool) for x in (a, b))
        assert a['category_id'] == b['category_id'] and (wide >= thin).all() and a['area'] > 1.2 * b['area']
