"""A small semantic segmentation set from real photos, in the mask-folder layout `cmtnet segment train`
reads, for checking that `configs/segment_demo.yaml` carries over to a user's own data (three classes and
the background, 256x256 images) with only the data flags and the crop size changed.

The objects are cut from the photos scikit-image ships (`skimage.data`), each from its box in the original
photo, with a pixel mask of what is pasted:

- cup (coffee): the cup with its saucer and spoon, a rough silhouette found in the photo: SLIC superpixels
  of the box, each labelled with the nearer (in Lab colour) of the superpixels on the box's border (the
  table) and those of its central ellipse, the largest connected object kept and its holes filled;
- person (astronaut): the same silhouette, the table being the backdrop, flag and shuttle on the top and
  upper sides of the box (the suit reaches the bottom and the lower sides); the helmet at the bottom right
  mostly counts as the person;
- cat (chelsea): the cat fills the photo, which has no background to separate: the pasted rectangle.

Each image is a random crop of another photo of the same collection (brick, grass, gravel, the rocket
scene, the Hubble deep field, a micrograph: none shows a cat, a cup or a person) with one to three objects
pasted at random sizes (60-150 px on their long side), flips, brightness and contrast, overlapping little;
a later object covers an earlier one. Masks are single-channel PNGs named as their images: 0 background,
1 cat, 2 cup, 3 person (the lines of `classes.txt`), 255 on the blended border of a silhouette (where its
resized mask is neither clearly in nor out). Objects come from one photo per class, so the set is easier
than a hundred independent photos: it checks that the recipe learns photographic content at 256 px in the
time it has, not how a segmenter generalises. The layout is that of `--train-images/--train-masks/
--val-images/--val-masks` and `--classes`:

    ROOT/classes.txt  ROOT/train/images/0000.jpg  ROOT/train/masks/0000.png  ROOT/val/images/...  ROOT/val/masks/...

    pip install scikit-image        # in cmtnet's test extra; not a dependency of the package
    python benchmarks/photo_segmentation_set.py runs/photo_seg_set --train 100 --val 30
    cmtnet segment train --config configs/segment_demo.yaml --crop-size 256 \
        --train-images runs/photo_seg_set/train/images --train-masks runs/photo_seg_set/train/masks \
        --val-images runs/photo_seg_set/val/images --val-masks runs/photo_seg_set/val/masks \
        --classes runs/photo_seg_set/classes.txt \
        --backbone-weights runs/demo/model_ema.safetensors --output runs/photo_segment
"""
import argparse
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageEnhance

from cmtnet.segmentation.data import class_names, read_mask_set
from cmtnet.segmentation.metrics import IGNORE_INDEX
# the photos, the background crops and the overlap measure are the detection set's
from photo_detection_set import BACKGROUNDS, SIZE, _background, _iou, _photo

# (class, photo, box x0 y0 x1 y1 in the photo, border sides of the box that are background: top, bottom,
# left, right; None: the object fills the box, its mask is the rectangle)
OBJECTS = [('cat', 'chelsea', (30, 0, 390, 300), None),
           ('cup', 'coffee', (60, 15, 490, 395), 'tblr'),
           ('person', 'astronaut', (20, 5, 365, 512), 'tlr')]
CLASSES = ('background', *(kind for kind, _, _, _ in OBJECTS))
SIDE_SEEDS = 0.55  # where the bottom is not background, the left and right sides are for their upper part
BORDER = 3  # px of the box's border taken as background


def silhouette(crop: np.ndarray, sides: str) -> np.ndarray:
    """Boolean mask of the object in `crop` (H, W, 3 uint8) whose background touches the box's `sides`."""
    from scipy import ndimage
    from skimage.color import rgb2lab
    from skimage.measure import label
    from skimage.segmentation import slic

    height, width = crop.shape[:2]
    segments = slic(crop, n_segments=300, compactness=10, start_label=0)
    lab = rgb2lab(crop)
    index = np.arange(segments.max() + 1)
    means = np.stack([ndimage.mean(lab[..., c], segments, index) for c in range(3)], 1)
    border = np.zeros((height, width), bool)
    side_end = height if 'b' in sides else int(height * SIDE_SEEDS)
    border[:BORDER] = 't' in sides
    border[-BORDER:] |= 'b' in sides
    border[:side_end, :BORDER] |= 'l' in sides
    border[:side_end, -BORDER:] |= 'r' in sides
    yy, xx = np.mgrid[:height, :width]
    centre = ((yy - height / 2) / (height / 4)) ** 2 + ((xx - width / 2) / (width / 4)) ** 2 < 1
    background = np.unique(segments[border])
    foreground = np.setdiff1d(np.unique(segments[centre]), background)

    def distance(ids: np.ndarray) -> np.ndarray:
        return np.linalg.norm(means[:, None] - means[ids][None], axis=2).min(1)
    inside = distance(foreground) < distance(background)
    inside[background] = False
    inside[foreground] = True
    mask = inside[segments]
    parts = label(mask)
    if parts.max() > 1:
        sizes = np.bincount(parts.ravel())
        sizes[0] = 0
        mask = parts == sizes.argmax()
    return ndimage.binary_fill_holes(mask)


def object_masks(photos: Dict[str, Image.Image]) -> Dict[str, np.ndarray]:
    """Per photo of an object, a 0..255 mask of the whole photo: its silhouette, or all of it (a rectangle)."""
    masks = {}
    for _, name, (x0, y0, x1, y1), sides in OBJECTS:
        photo = photos[name]
        mask = np.full((photo.height, photo.width), 255, np.uint8)
        if sides is not None:
            mask[:] = 0
            mask[y0:y1, x0:x1] = silhouette(np.asarray(photo)[y0:y1, x0:x1], sides) * 255
        masks[name] = mask
    return masks


def _object(photos: Dict[str, Image.Image], masks: Dict[str, np.ndarray], kind: int,
            rng: np.random.Generator) -> Tuple[Image.Image, Image.Image]:
    """(object image, its 0..255 mask), cut, flipped, lit and resized alike."""
    _, name, (x0, y0, x1, y1), _ = OBJECTS[kind]
    w, h = x1 - x0, y1 - y0
    jitter = [int(rng.uniform(-0.08, 0.08) * s) for s in (w, h, w, h)]  # a slightly different cut each time
    photo = photos[name]
    box = (max(0, x0 + jitter[0]), max(0, y0 + jitter[1]),
           min(photo.width, x1 + jitter[2]), min(photo.height, y1 + jitter[3]))
    crop, mask = photo.crop(box), Image.fromarray(masks[name]).crop(box)
    if rng.random() < 0.5:
        crop, mask = crop.transpose(Image.FLIP_LEFT_RIGHT), mask.transpose(Image.FLIP_LEFT_RIGHT)
    crop = ImageEnhance.Brightness(crop).enhance(rng.uniform(0.75, 1.25))
    crop = ImageEnhance.Contrast(crop).enhance(rng.uniform(0.75, 1.25))
    scale = rng.uniform(60, 150) / max(crop.size)
    size = (max(8, round(crop.width * scale)), max(8, round(crop.height * scale)))
    return crop.resize(size, Image.BILINEAR), mask.resize(size, Image.BILINEAR)


def _place(size: Tuple[int, int], boxes: List[Tuple[int, int, int, int]],
           rng: np.random.Generator) -> Optional[Tuple[int, int, int, int]]:
    for _ in range(20):  # a place that overlaps the others little
        x, y = rng.integers(0, SIZE - size[0] + 1), rng.integers(0, SIZE - size[1] + 1)
        box = (int(x), int(y), int(x) + size[0], int(y) + size[1])
        if all(_iou(box, other) < 0.2 for other in boxes):
            return box
    return None


def make_split(photos: Dict[str, Image.Image], masks: Dict[str, np.ndarray], root: Path, count: int,
               seed: int) -> int:
    """`count` images in `root/images` and their masks in `root/masks`; returns the number of objects."""
    rng = np.random.default_rng(seed)
    (root / 'images').mkdir(parents=True, exist_ok=True)
    (root / 'masks').mkdir(exist_ok=True)
    objects = 0
    for index in range(count):
        canvas = _background(photos, rng)
        labels = np.zeros((SIZE, SIZE), np.uint8)
        boxes: List[Tuple[int, int, int, int]] = []
        for _ in range(rng.integers(1, 4)):
            kind = int(rng.integers(len(OBJECTS)))
            piece, alpha = _object(photos, masks, kind, rng)
            box = _place(piece.size, boxes, rng)
            if box is None:
                continue
            canvas.paste(piece, box[:2], alpha)
            coverage = np.asarray(alpha)
            region = labels[box[1]:box[3], box[0]:box[2]]
            region[coverage >= 192] = kind + 1
            region[(coverage >= 64) & (coverage < 192)] = IGNORE_INDEX  # blended: neither the object nor behind it
            boxes.append(box)
            objects += 1
        canvas.save(root / 'images' / f'{index:04d}.jpg', quality=92)
        Image.fromarray(labels, mode='L').save(root / 'masks' / f'{index:04d}.png')
    return objects


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('output', type=Path)
    parser.add_argument('--train', type=int, default=100)
    parser.add_argument('--val', type=int, default=30)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    photos = {name: _photo(name) for name in {name for _, name, _, _ in OBJECTS} | set(BACKGROUNDS)}
    masks = object_masks(photos)
    args.output.mkdir(parents=True, exist_ok=True)
    classes = args.output / 'classes.txt'
    classes.write_text('\n'.join(CLASSES) + '\n')
    for split, count, seed in (('train', args.train, args.seed), ('val', args.val, args.seed + 1)):
        objects = make_split(photos, masks, args.output / split, count, seed)
        checked = read_mask_set(args.output / split / 'images', args.output / split / 'masks',
                                class_names(classes), strict=True)  # as `cmtnet segment train` reads it
        print(f'{split}: {len(checked.pairs)} images, {objects} objects; {checked.describe()}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
