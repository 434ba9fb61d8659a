"""The embedded segmentation set: the embedded detection set's digits on photo crops, as class masks.

`cmtnet segment train` with no data flags trains on it, so that segmentation runs with no download. It is a
detection set (`detection.synthetic`: scikit-learn's handwritten digits pasted on crops of its sample photos,
with a pixel mask per digit) drawn to `SPEC` (64 px images of one or two bold digits), with each image's
instance masks painted into one class mask: 0 for the background, 1 + d for a pixel of digit d (11 classes,
named in `classes.txt`). A digit's pixels are its ink and those within `MARGIN` pixels of it: a segmenter
predicts at a quarter of the resolution, where a stroke a few pixels wide is less than one cell, while the
digit's area is a shape it can follow. It is written in the generic folder layout,
`ROOT/{train,val}/images/*.jpg` and `ROOT/{train,val}/masks/*.png`, so that it reads as a user's own folders
would; the val digits are the detection set's, which the classification demo never trains on.
"""
import json
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
from PIL import Image, ImageFilter

from ..detection.synthetic import SyntheticSpec, default_root as detection_root, write_synthetic_coco, write_whole

__all__ = ['CLASS_NAMES', 'MARGIN', 'SPEC', 'default_root', 'write_synthetic_masks']

CLASS_NAMES = ('background', *(str(d) for d in range(10)))
_VERSION = 2
MARGIN = 3  # pixels a digit's mask reaches past its ink
# smaller images of fewer, bolder digits than the detection set's: a short CPU run can learn their masks
SPEC = SyntheticSpec(image_size=64, min_digit=24, max_digit=40, max_objects=2, bold=0.5)


def default_root(spec: SyntheticSpec = SPEC) -> Path:
    """Beside the detection set it is made from: `segmentation-<detection set's name>-v<N>`."""
    detection = detection_root(spec)
    return detection.with_name(f'segmentation-{detection.name}-v{_VERSION}')


def _widened(mask: np.ndarray, margin: int) -> np.ndarray:
    """A binary mask grown by `margin` pixels on every side (a square maximum filter)."""
    grown = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(2 * margin + 1))
    return np.asarray(grown) > 0


def _write_split(coco_root: Path, split: str, out: Path) -> None:
    from pycocotools import mask as coco_mask

    data = json.loads((coco_root / 'annotations' / f'instances_{split}2017.json').read_text())
    by_image = {img['id']: [] for img in data['images']}
    for ann in data['annotations']:
        by_image[ann['image_id']].append(ann)
    (out / 'images').mkdir(parents=True)
    (out / 'masks').mkdir()
    for img in data['images']:
        labels = np.zeros((img['height'], img['width']), dtype=np.uint8)
        for ann in by_image[img['id']]:
            # category id 1 + d is digit d, which is also its class here
            labels[_widened(coco_mask.decode(ann['segmentation']), MARGIN)] = ann['category_id']
        source = coco_root / f'{split}2017' / img['file_name']
        shutil.copyfile(source, out / 'images' / img['file_name'])
        Image.fromarray(labels).save(out / 'masks' / f'{Path(img["file_name"]).stem}.png')


def write_synthetic_masks(root: Optional[Union[str, Path]] = None, spec: SyntheticSpec = SPEC) -> Path:
    """Generate the embedded set into `root` (default: `default_root(spec)`) unless it is there already;
    returns `root`. The detection set is generated first if needed. Generation writes to a temporary folder
    renamed into place, so a set is whole or absent."""
    def write(tmp: Path) -> Dict[str, Any]:
        coco_root = write_synthetic_coco(spec=spec)
        for split in ('train', 'val'):
            _write_split(coco_root, split, tmp / split)
        (tmp / 'classes.txt').write_text('\n'.join(CLASS_NAMES) + '\n')
        return {'version': _VERSION, 'detection_set': coco_root.name}
    return write_whole(Path(root) if root is not None else default_root(spec), 'segmentation', write)
