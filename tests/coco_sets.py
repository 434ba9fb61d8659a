"""Tiny COCO-format sets for the detection tests: the embedded set at a few images, and hand-made files."""
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from PIL import Image

from cmtnet.detection.synthetic import SyntheticSpec, write_synthetic_coco

TINY = SyntheticSpec(train_images=12, val_images=6, image_size=96, min_digit=28, max_digit=44, max_objects=2, bold=0.5)


def tiny_synthetic(root: Path, spec: SyntheticSpec = TINY) -> Path:
    return write_synthetic_coco(root, spec)


def write_coco(root: Path, images: List[Dict[str, Any]], annotations: List[Dict[str, Any]],
               categories: Optional[List[Dict[str, Any]]] = None, missing: tuple = (), size: int = 32) -> Path:
    """ROOT/images/<file_name> (except `missing`) and ROOT/ann.json; returns the annotation file."""
    folder = root / 'images'
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for img in images:
        if img['file_name'] not in missing:
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / img['file_name'])
    path = root / 'ann.json'
    cats = categories if categories is not None else [{'id': 1, 'name': 'a'}, {'id': 3, 'name': 'b'}]
    path.write_text(json.dumps({'images': images, 'annotations': annotations, 'categories': cats}))
    return path


def image(i: int, size: int = 32) -> Dict[str, Any]:
    return {'id': i, 'file_name': f'{i}.png', 'width': size, 'height': size}


def box(i: int, image_id: int, category_id: int = 1, bbox=(2, 3, 10, 12)) -> Dict[str, Any]:
    return {'id': i, 'image_id': image_id, 'category_id': category_id, 'bbox': list(bbox),
            'area': bbox[2] * bbox[3], 'iscrowd': 0}
