"""The embedded segmentation set: objects cut from real photos, pasted on crops of other photos, as class masks.

`cmtnet segment train` with no data flags trains on it, so that segmentation runs with no download. It is
generated, with a fixed seed, from the photos scikit-image ships (`skimage.data`, inside the installed
package), and written in the generic folder layout, `ROOT/{train,val}/images/*.jpg`,
`ROOT/{train,val}/masks/*.png` and `ROOT/classes.txt`, so that it reads as a user's own folders would.

The objects, each from its box in the original photo, with a pixel mask of what is pasted:

- cup (coffee): the cup with its saucer and spoon, a rough silhouette found in the photo: SLIC superpixels
  of the box, each labelled with the nearer (in Lab colour) of the superpixels on the box's border (the
  table) and those of its central ellipse, the largest connected object kept and its holes filled;
- person (astronaut): the same silhouette, the backdrop (flag and shuttle) on the top and upper sides of
  the box (the suit reaches the bottom and the lower sides);
- cat (chelsea): the cat fills the photo, which has no background to separate: the pasted rectangle.

Each image is a random crop of another photo of the collection (brick, grass, gravel, the rocket scene, the
Hubble deep field, a micrograph: none shows a cat, a cup or a person) with one to `max_objects` objects
pasted at random sizes, flips, brightness and contrast, overlapping little; a later object covers an
earlier one. Masks are single-channel PNGs named as their images: 0 background, 1 cat, 2 cup, 3 person (the
lines of `classes.txt`), 255 (ignored) on the blended border of a silhouette, where its resized mask is
neither clearly in nor out. The objects come from one photo per class, so the set shows a segmenter learning
photographic content in a short run, not how it generalises.
"""
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageEnhance

from ..detection.synthetic import write_whole
from .metrics import IGNORE_INDEX

__all__ = ['BACKGROUNDS', 'CLASS_NAMES', 'OBJECTS', 'SPEC', 'PhotoSpec', 'background', 'box_iou', 'default_root',
           'load_photos', 'object_masks', 'photo', 'write_photo_split', 'write_synthetic_masks']

_VERSION = 1
# (class, photo, box x0 y0 x1 y1 in the photo, border sides of the box that are background: top, bottom,
# left, right; None: the object fills the box, its mask is the rectangle)
OBJECTS = (('cat', 'chelsea', (30, 0, 390, 300), None),
           ('cup', 'coffee', (60, 15, 490, 395), 'tblr'),
           ('person', 'astronaut', (20, 5, 365, 512), 'tlr'))
BACKGROUNDS = ('brick', 'grass', 'gravel', 'rocket', 'hubble_deep_field', 'immunohistochemistry')
CLASS_NAMES = ('background', *(kind for kind, _, _, _ in OBJECTS))
_SIDE_SEEDS = 0.55  # where the bottom is not background, the left and right sides are for their upper part
_BORDER = 3  # px of the box's border taken as background


@dataclass(frozen=True)
class PhotoSpec:
    """What a generated set is made of; a change of any field makes another set (another folder)."""
    train_images: int = 480
    val_images: int = 60
    image_size: int = 128
    min_object: int = 32  # an object's long side, in pixels
    max_object: int = 80
    max_objects: int = 3
    seed: int = 0  # the train split's; the val split's is seed + 1


# small images: a short CPU run learns them (benchmarks/photo_segmentation_set.py writes the 256 px variant)
SPEC = PhotoSpec()


def default_root(spec: PhotoSpec = SPEC) -> Path:
    """Where the embedded set is kept: `$CMTNET_CACHE` (or ~/.cache/cmtnet)/segmentation-photos-v<N>-<spec>."""
    cache = Path(os.environ.get('CMTNET_CACHE', Path.home() / '.cache' / 'cmtnet'))
    s = spec
    return cache / (f'segmentation-photos-v{_VERSION}-{s.train_images}-{s.val_images}-{s.image_size}px-'
                    f'{s.min_object}-{s.max_object}-{s.max_objects}obj-seed{s.seed}')


def photo(name: str) -> Image.Image:
    """The scikit-image sample photo `name` (`skimage.data.<name>()`) as an RGB image."""
    import skimage.data
    return Image.fromarray(getattr(skimage.data, name)()).convert('RGB')


def load_photos() -> Dict[str, Image.Image]:
    """The object and background photos, by name."""
    return {name: photo(name) for name in sorted({name for _, name, _, _ in OBJECTS} | set(BACKGROUNDS))}


def background(photos: Dict[str, Image.Image], rng: np.random.Generator, size: int) -> Image.Image:
    """A random square crop of a background photo, resized to `size`."""
    picture = photos[BACKGROUNDS[rng.integers(len(BACKGROUNDS))]]
    side = int(rng.uniform(0.4, 1.0) * min(picture.size))
    x, y = rng.integers(0, picture.width - side + 1), rng.integers(0, picture.height - side + 1)
    return picture.crop((x, y, x + side, y + side)).resize((size, size), Image.BILINEAR)


def box_iou(a: Tuple[int, ...], b: Tuple[int, ...]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


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
    side_end = height if 'b' in sides else int(height * _SIDE_SEEDS)
    border[:_BORDER] = 't' in sides
    border[-_BORDER:] |= 'b' in sides
    border[:side_end, :_BORDER] |= 'l' in sides
    border[:side_end, -_BORDER:] |= 'r' in sides
    yy, xx = np.mgrid[:height, :width]
    centre = ((yy - height / 2) / (height / 4)) ** 2 + ((xx - width / 2) / (width / 4)) ** 2 < 1
    outside = np.unique(segments[border])
    inside_seeds = np.setdiff1d(np.unique(segments[centre]), outside)

    def distance(ids: np.ndarray) -> np.ndarray:
        return np.linalg.norm(means[:, None] - means[ids][None], axis=2).min(1)
    inside = distance(inside_seeds) < distance(outside)
    inside[outside] = False
    inside[inside_seeds] = True
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
        picture = photos[name]
        mask = np.full((picture.height, picture.width), 255, np.uint8)
        if sides is not None:
            mask[:] = 0
            mask[y0:y1, x0:x1] = silhouette(np.asarray(picture)[y0:y1, x0:x1], sides) * 255
        masks[name] = mask
    return masks


def _object(photos: Dict[str, Image.Image], masks: Dict[str, np.ndarray], kind: int, spec: PhotoSpec,
            rng: np.random.Generator) -> Tuple[Image.Image, Image.Image]:
    """(object image, its 0..255 mask), cut, flipped, lit and resized alike."""
    _, name, (x0, y0, x1, y1), _ = OBJECTS[kind]
    w, h = x1 - x0, y1 - y0
    jitter = [int(rng.uniform(-0.08, 0.08) * s) for s in (w, h, w, h)]  # a slightly different cut each time
    picture = photos[name]
    box = (max(0, x0 + jitter[0]), max(0, y0 + jitter[1]),
           min(picture.width, x1 + jitter[2]), min(picture.height, y1 + jitter[3]))
    crop, mask = picture.crop(box), Image.fromarray(masks[name]).crop(box)
    if rng.random() < 0.5:
        crop, mask = crop.transpose(Image.FLIP_LEFT_RIGHT), mask.transpose(Image.FLIP_LEFT_RIGHT)
    crop = ImageEnhance.Brightness(crop).enhance(rng.uniform(0.75, 1.25))
    crop = ImageEnhance.Contrast(crop).enhance(rng.uniform(0.75, 1.25))
    scale = rng.uniform(spec.min_object, spec.max_object) / max(crop.size)
    size = (max(8, round(crop.width * scale)), max(8, round(crop.height * scale)))
    return crop.resize(size, Image.BILINEAR), mask.resize(size, Image.BILINEAR)


def _place(size: Tuple[int, int], boxes: List[Tuple[int, int, int, int]], side: int,
           rng: np.random.Generator) -> Optional[Tuple[int, int, int, int]]:
    for _ in range(20):  # a place that overlaps the others little
        x, y = rng.integers(0, side - size[0] + 1), rng.integers(0, side - size[1] + 1)
        box = (int(x), int(y), int(x) + size[0], int(y) + size[1])
        if all(box_iou(box, other) < 0.2 for other in boxes):
            return box
    return None


def write_photo_split(photos: Dict[str, Image.Image], masks: Dict[str, np.ndarray], root: Path, count: int,
                      seed: int, spec: PhotoSpec = SPEC) -> int:
    """`count` images in `root/images` and their masks in `root/masks`; returns the number of objects."""
    rng = np.random.default_rng(seed)
    (root / 'images').mkdir(parents=True, exist_ok=True)
    (root / 'masks').mkdir(exist_ok=True)
    side = spec.image_size
    objects = 0
    for index in range(count):
        canvas = background(photos, rng, side)
        labels = np.zeros((side, side), np.uint8)
        boxes: List[Tuple[int, int, int, int]] = []
        for _ in range(rng.integers(1, spec.max_objects + 1)):
            kind = int(rng.integers(len(OBJECTS)))
            piece, alpha = _object(photos, masks, kind, spec, rng)
            box = _place(piece.size, boxes, side, rng)
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


def write_synthetic_masks(root: Optional[Union[str, Path]] = None, spec: PhotoSpec = SPEC) -> Path:
    """Generate the embedded set into `root` (default: `default_root(spec)`) unless it is there already;
    returns `root`. Generation writes to a temporary folder renamed into place, so a set is whole or absent."""
    def write(tmp: Path) -> Dict[str, Any]:
        photos = load_photos()
        masks = object_masks(photos)
        for split, count, seed in (('train', spec.train_images, spec.seed), ('val', spec.val_images, spec.seed + 1)):
            write_photo_split(photos, masks, tmp / split, count, seed, spec)
        (tmp / 'classes.txt').write_text('\n'.join(CLASS_NAMES) + '\n')
        return {'version': _VERSION, **asdict(spec)}
    return write_whole(Path(root) if root is not None else default_root(spec), 'segmentation', write)
