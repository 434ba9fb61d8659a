"""A small COCO-format detection set from real photos, for checking that `configs/detect_demo.yaml` carries
over to a user's own data (three classes, 256x256 images) with only the data flags and sizes changed.

The objects are cut from the photos scikit-image ships (`skimage.data`): a cat (chelsea), a cup of coffee
(coffee) and a person (astronaut), each by its box in the original photo. Each image is a random crop of
another photo of the same collection (brick, grass, gravel, the rocket scene, the Hubble deep field, a
micrograph: none shows a cat, a cup or a person) with one to three objects pasted at random sizes (60-150 px
on their long side), flips, brightness and contrast; boxes are the pasted rectangles and masks fill them. Objects come from one
photo per class, so the set is easier than a hundred independent photos: it checks that the recipe trains
on photographic content at 256 px in the time it has, not how a detector generalises.

    pip install scikit-image        # in cmtnet's test extra; not a dependency of the package
    python benchmarks/photo_detection_set.py runs/photo_set --train 100 --val 30
    cmtnet detect train --config configs/detect_demo.yaml --min-size 256 --max-size 256 \
        --train-images runs/photo_set/train --train-annotations runs/photo_set/train.json \
        --val-images runs/photo_set/val --val-annotations runs/photo_set/val.json \
        --backbone-weights runs/demo/model_ema.safetensors --output runs/photo_detect
"""
import argparse
import json
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageEnhance

from cmtnet.segmentation.synthetic import BACKGROUNDS, background, box_iou, photo

SIZE = 256
# (class, photo, box x0 y0 x1 y1 in the photo)
OBJECTS = [('cat', 'chelsea', (30, 0, 390, 300)), ('cup', 'coffee', (170, 15, 425, 305)),
           ('person', 'astronaut', (20, 15, 365, 512))]
# the photos, the background crops and the overlap measure are the embedded segmentation set's
_photo, _iou = photo, box_iou


def _background(photos: Dict[str, Image.Image], rng: np.random.Generator) -> Image.Image:
    return background(photos, rng, SIZE)


def _object(photos: Dict[str, Image.Image], kind: int, rng: np.random.Generator) -> Image.Image:
    _, name, (x0, y0, x1, y1) = OBJECTS[kind]
    w, h = x1 - x0, y1 - y0
    jitter = [int(rng.uniform(-0.08, 0.08) * s) for s in (w, h, w, h)]  # a slightly different cut each time
    photo = photos[name]
    crop = photo.crop((max(0, x0 + jitter[0]), max(0, y0 + jitter[1]),
                       min(photo.width, x1 + jitter[2]), min(photo.height, y1 + jitter[3])))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    crop = ImageEnhance.Brightness(crop).enhance(rng.uniform(0.75, 1.25))
    crop = ImageEnhance.Contrast(crop).enhance(rng.uniform(0.75, 1.25))
    scale = rng.uniform(60, 150) / max(crop.size)
    return crop.resize((max(8, round(crop.width * scale)), max(8, round(crop.height * scale))), Image.BILINEAR)


def make_split(photos: Dict[str, Image.Image], folder: Path, count: int, seed: int) -> dict:
    """`count` images in `folder` and their COCO annotations."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images: List[dict] = []
    annotations: List[dict] = []
    for index in range(count):
        canvas = _background(photos, rng)
        boxes: List[Tuple[int, int, int, int]] = []
        for _ in range(rng.integers(1, 4)):
            kind = int(rng.integers(len(OBJECTS)))
            piece = _object(photos, kind, rng)
            for _ in range(20):  # a place that overlaps the others little
                x, y = rng.integers(0, SIZE - piece.width + 1), rng.integers(0, SIZE - piece.height + 1)
                box = (int(x), int(y), int(x) + piece.width, int(y) + piece.height)
                if all(_iou(box, other) < 0.2 for other in boxes):
                    break
            else:
                continue
            canvas.paste(piece, box[:2])
            boxes.append(box)
            x0, y0, x1, y1 = box
            annotations.append({
                'id': len(annotations) + 1, 'image_id': index + 1, 'category_id': kind + 1,
                'bbox': [x0, y0, x1 - x0, y1 - y0], 'area': (x1 - x0) * (y1 - y0), 'iscrowd': 0,
                'segmentation': [[x0, y0, x1, y0, x1, y1, x0, y1]]})
        name = f'{index:04d}.jpg'
        canvas.save(folder / name, quality=92)
        images.append({'id': index + 1, 'file_name': name, 'width': SIZE, 'height': SIZE})
    categories = [{'id': i + 1, 'name': kind} for i, (kind, _, _) in enumerate(OBJECTS)]
    return {'images': images, 'annotations': annotations, 'categories': categories}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('output', type=Path)
    parser.add_argument('--train', type=int, default=100)
    parser.add_argument('--val', type=int, default=30)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    photos = {name: _photo(name) for name in {name for _, name, _ in OBJECTS} | set(BACKGROUNDS)}
    for split, count, seed in (('train', args.train, args.seed), ('val', args.val, args.seed + 1)):
        coco = make_split(photos, args.output / split, count, seed)
        (args.output / f'{split}.json').write_text(json.dumps(coco))
        print(f'{split}: {len(coco["images"])} images, {len(coco["annotations"])} objects in {args.output / split}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
