"""The embedded detection set: handwritten digits pasted on photo crops, written as real COCO files.

`cmtnet detect train` with no data flags trains on it, so that detection runs with no download. It is
generated from what scikit-learn ships (the 1,797 8x8 handwritten digits and its two sample photos),
with a fixed seed, and written in the COCO 2017 layout (`ROOT/annotations/instances_{train,val}2017.json`,
`ROOT/{train,val}2017/*.jpg`), so that the very reader used for COCO reads it too.

Each image is a random crop of a sample photo, flipped, rotated by quarter turns and colour-shifted, with one
to `max_objects` digits pasted at random scales and positions, without overlap. With `bold`, each stroke is
widened by that many of the digit's 8x8 pixels on each side, so that a pixel mask (and a segmenter predicting
at a quarter of the resolution) can follow it. A digit's mask is its own ink
(the 8x8 ink levels upscaled and widened, above half strength) and its box the extent of that mask; the ink is
painted in a colour that stands out from the background under it. The ten categories are the digits '0' to '9'
(ids 1 to 10). The train and val images draw their digits from the same stratified 80/20 split of the digits
as the classification demo, so a backbone trained on that demo never saw a val digit.
"""
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageFilter

from ..engine.data import digits_split
from ..errors import InputError

__all__ = ['SyntheticSpec', 'default_root', 'write_synthetic_coco', 'write_whole']

_VERSION = 1
_DONE = 'complete.json'


@dataclass(frozen=True)
class SyntheticSpec:
    """What the embedded set is made of; a change of any field makes another set (another folder)."""
    train_images: int = 1200
    val_images: int = 200
    image_size: int = 128
    min_digit: int = 28  # the side of the pasted 8x8 digit cell, in pixels
    max_digit: int = 60
    max_objects: int = 3
    bold: float = 0.  # how far each stroke is widened on each side, in the 8x8 digit's pixels
    seed: int = 0


def default_root(spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Where the embedded set is kept: `$CMTNET_CACHE` (or ~/.cache/cmtnet)/detection-digits-v<N>-<spec>."""
    cache = Path(os.environ.get('CMTNET_CACHE', Path.home() / '.cache' / 'cmtnet'))
    s = spec
    return cache / (f'detection-digits-v{_VERSION}-{s.train_images}-{s.val_images}-{s.image_size}px-'
                    f'{s.min_digit}-{s.max_digit}-{s.max_objects}obj-bold{s.bold:g}-seed{s.seed}')


def _photos() -> List[np.ndarray]:
    from sklearn.datasets import load_sample_images
    return [np.asarray(p, dtype=np.float32) / 255 for p in load_sample_images().images]


def _background(rng: np.random.Generator, photos: List[np.ndarray], size: int) -> np.ndarray:
    photo = photos[rng.integers(len(photos))]
    scale = rng.uniform(0.5, 1.5)  # the crop covers size/scale photo pixels
    side = min(int(size / scale), *photo.shape[:2])
    y, x = rng.integers(photo.shape[0] - side + 1), rng.integers(photo.shape[1] - side + 1)
    crop = Image.fromarray((photo[y:y + side, x:x + side] * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    crop = np.rot90(np.asarray(crop, dtype=np.float32) / 255, rng.integers(4))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    gain, shift = rng.uniform(0.6, 1.2, size=3), rng.uniform(-0.2, 0.2, size=3)  # a colour cast
    return np.clip(crop * gain + shift, 0, 1)


def _ink(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour that contrasts with the mean colour `under` the digit (luminance differs by >= 0.45)."""
    luminance = float(under @ np.array([0.299, 0.587, 0.114]))
    for _ in range(100):
        colour = rng.uniform(0, 1, size=3)
        if abs(float(colour @ np.array([0.299, 0.587, 0.114])) - luminance) >= 0.45:
            return colour
    return np.zeros(3) if luminance > 0.5 else np.ones(3)


def _place(rng: np.random.Generator, size: int, cell: int,
           taken: List[Tuple[int, int, int, int]]) -> Optional[Tuple[int, int]]:
    """A top-left corner for a `cell`-pixel square that overlaps no square in `taken`, or None."""
    for _ in range(50):
        x, y = (int(v) for v in rng.integers(0, size - cell + 1, size=2))
        if all(x + cell <= a or a + c <= x or y + cell <= b or b + c <= y for a, b, c, _ in taken):
            return x, y
    return None


def _ink_alpha(digit: np.ndarray, cell: int, bold: float) -> np.ndarray:
    """The ink (0..1) of an 8x8 digit (0..1) upscaled to `cell` pixels, its strokes widened by `bold` digit
    pixels on each side (a maximum filter)."""
    ink = Image.fromarray((digit * 255).astype(np.uint8)).resize((cell, cell), Image.BICUBIC)
    radius = round(bold * cell / 8)
    if radius:
        ink = ink.filter(ImageFilter.MaxFilter(2 * radius + 1))
    return np.asarray(ink, dtype=np.float32) / 255


def _rle(mask: np.ndarray) -> Dict[str, Any]:
    from pycocotools import mask as coco_mask
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [int(v) for v in rle['size']], 'counts': rle['counts'].decode('ascii')}


def _make_split(split: str, count: int, spec: SyntheticSpec, folder: Path, rng: np.random.Generator,
                digits: np.ndarray, labels: np.ndarray, pool: np.ndarray, photos: List[np.ndarray]) -> Dict[str, Any]:
    images, annotations = [], []
    size = spec.image_size
    for image_id in range(1, count + 1):
        canvas = _background(rng, photos, size)
        taken: List[Tuple[int, int, int, int]] = []
        for _ in range(rng.integers(1, spec.max_objects + 1)):
            cell = int(rng.integers(spec.min_digit, spec.max_digit + 1))
            corner = _place(rng, size, cell, taken)
            if corner is None:
                continue
            x, y = corner
            taken.append((x, y, cell, 0))
            index = pool[rng.integers(len(pool))]
            alpha = _ink_alpha(digits[index], cell, spec.bold)
            region = canvas[y:y + cell, x:x + cell]
            colour = _ink(rng, region.reshape(-1, 3).mean(0))
            canvas[y:y + cell, x:x + cell] = region * (1 - alpha[..., None]) + colour * alpha[..., None]
            mask = np.zeros((size, size), dtype=bool)
            mask[y:y + cell, x:x + cell] = alpha > 0.5
            rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
            if not len(rows):
                continue
            x0, y0, x1, y1 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
            annotations.append({
                'id': len(annotations) + 1, 'image_id': image_id, 'category_id': int(labels[index]) + 1,
                'bbox': [x0, y0, x1 - x0, y1 - y0], 'area': int(mask.sum()), 'iscrowd': 0, 'segmentation': _rle(mask),
            })
        name = f'{image_id:06d}.jpg'
        Image.fromarray((canvas * 255).round().astype(np.uint8)).save(folder / name, quality=92)
        images.append({'id': image_id, 'file_name': name, 'width': size, 'height': size})
    return {
        'info': {'description': f'cmtnet embedded detection set ({split}): handwritten digits on photo crops',
                 'version': str(_VERSION), 'spec': asdict(spec)},
        'images': images, 'annotations': annotations,
        'categories': [{'id': d + 1, 'name': str(d), 'supercategory': 'digit'} for d in range(10)],
    }


def write_whole(root: Path, what: str, write: Callable[[Path], Dict[str, Any]]) -> Path:
    """Make the generated set `root` unless it is there already, and return it: `write(folder)` fills a
    temporary folder and returns what the set's marker file records, and the folder is renamed into place,
    so that a set is whole or absent. `what` names the set in the error for a `root` that holds another."""
    if (root / _DONE).is_file():
        return root
    tmp = root.with_name(f'.{root.name}.{os.getpid()}.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / _DONE).write_text(json.dumps(write(tmp)))
    try:
        os.replace(tmp, root)
    except OSError:  # another process (torchrun) finished first, or `root` is a folder of other files
        shutil.rmtree(tmp, ignore_errors=True)
        if not (root / _DONE).is_file():
            raise InputError(f'cannot write the embedded {what} set to {root}: it exists and is not one')
    return root


def write_synthetic_coco(root: Optional[Union[str, Path]] = None, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Generate the embedded set into `root` (default: `default_root(spec)`) unless it is there already;
    returns `root`. Generation writes to a temporary folder renamed into place, so a set is whole or absent."""
    def write(tmp: Path) -> Dict[str, Any]:
        (tmp / 'annotations').mkdir()
        digits = digits_split()  # the classification demo's split: its test digits are the val set's
        pools = {'train': digits.train, 'val': digits.test}
        photos = _photos()
        for i, (split, count) in enumerate((('train', spec.train_images), ('val', spec.val_images))):
            folder = tmp / f'{split}2017'
            folder.mkdir()
            rng = np.random.default_rng([spec.seed, i])
            coco = _make_split(split, count, spec, folder, rng, digits.images / 16.0, digits.targets, pools[split],
                               photos)
            (tmp / 'annotations' / f'instances_{split}2017.json').write_text(json.dumps(coco))
        return asdict(spec)
    return write_whole(Path(root) if root is not None else default_root(spec), 'detection', write)
