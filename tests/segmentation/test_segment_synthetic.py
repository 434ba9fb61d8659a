"""The embedded segmentation set: the detection set's digits painted as class masks (each digit's ink and a
margin around it), read as a user's folders are."""
import json

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask
from scipy.ndimage import binary_dilation

from cmtnet.detection.synthetic import default_root as detection_root
from cmtnet.segmentation.data import data_paths, read_mask_set
from cmtnet.segmentation.synthetic import CLASS_NAMES, MARGIN, default_root, write_synthetic_masks
from coco_sets import TINY


def test_masks_are_the_digits_pixel_masks(tmp_path, monkeypatch):
    monkeypatch.setenv('CMTNET_CACHE', str(tmp_path))
    root = write_synthetic_masks(spec=TINY)
    assert root == default_root(TINY) and write_synthetic_masks(spec=TINY) == root  # made once, then reused
    assert (root / 'classes.txt').read_text().splitlines() == list(CLASS_NAMES) == ['background', *map(str, range(10))]
    coco = json.loads((detection_root(TINY) / 'annotations' / 'instances_val2017.json').read_text())
    img = coco['images'][0]
    labels = np.asarray(Image.open(root / 'val' / 'masks' / img['file_name'].replace('.jpg', '.png')))
    expected = np.zeros_like(labels)
    square = np.ones((2 * MARGIN + 1, 2 * MARGIN + 1), dtype=bool)
    for ann in (a for a in coco['annotations'] if a['image_id'] == img['id']):
        ink = coco_mask.decode(ann['segmentation']).astype(bool)
        # the digit's ink and every pixel within MARGIN of it (Chebyshev distance), labelled 1 + digit
        expected[binary_dilation(ink, structure=square)] = ann['category_id']
        assert (labels[ink] == ann['category_id']).all()
    assert np.array_equal(labels, expected) and labels.max() >= 1 and MARGIN >= 1
    for split, count in (('train', TINY.train_images), ('val', TINY.val_images)):
        mask_set = read_mask_set(root / split / 'images', root / split / 'masks', CLASS_NAMES, strict=True)
        assert len(mask_set.pairs) == count


def test_no_data_flags_mean_the_embedded_set(tmp_path, monkeypatch):
    monkeypatch.setenv('CMTNET_CACHE', str(tmp_path))
    root = write_synthetic_masks(spec=TINY)
    monkeypatch.setattr('cmtnet.segmentation.synthetic.write_synthetic_masks', lambda: root)

    class Options:
        data = train_images = train_masks = val_images = val_masks = None

    source = data_paths(Options())
    assert source.splits == {s: (root / s / 'images', root / s / 'masks') for s in ('train', 'val')}
    assert source.class_names == list(CLASS_NAMES) and not source.reduce_zero_label
    assert source.hflip == 0  # a mirrored digit is another shape: the embedded set trains without flips
