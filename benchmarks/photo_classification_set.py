"""A small ImageFolder classification set from real photos, for measuring what inference precision (bf16,
int8) costs a CMT trained on photographic content rather than on the 8x8 digits (`precision_accuracy.py`).

One class per photo that scikit-image ships (`skimage.data`): the astronaut, the cat (chelsea), the cup of
coffee, the rocket scene, the cameraman, the coins, the brick wall, the grass, the gravel and the
immunohistochemistry micrograph. Each image is a random crop of its class's photo, a fifth to a half of the
photo's short side at an aspect of 3/4 to 4/3, resized to `--size`, flipped half the time, with random
brightness, contrast and saturation (0.6-1.4), grayscale for a third of the images (four photos are grayscale
already, so colour alone cannot tell every class) and a blur for one in five, saved as JPEG. Small crops of
one photo show different things (the astronaut's glove, the flag, the shuttle), and brick, grass and gravel
are all grey textures, so the set is not solved at first sight; but train and val are crops of the same ten
photos, so it measures how a model's predictions survive a change of precision, not how it generalises.
The two splits are drawn under different seeds; the same seed gives the same files.

`--set held-out` draws the same kind of crops from six other photos, which neither the first set nor the tests
use: scikit-learn's two sample photos (the Chinese temple, the flower) and scikit-image's Hubble deep field,
moon, motorcycle (the left view of its stereo pair) and retina; a second set of real photos to measure on.

    ROOT/train/<class>/0000.jpg  ...  ROOT/val/<class>/0000.jpg

    pip install scikit-image        # in cmtnet's test extra; not a dependency of the package
    python benchmarks/photo_classification_set.py runs/photo_cls_set --train 1000 --val 300 --size 160
    cmtnet train --data runs/photo_cls_set --model cmt_ti --img-size 128 --epochs 5 --warmup-epochs 1 \
        --batch-size 32 --lr 2e-3 --warmup-lr 1e-4 --min-lr 1e-5 --drop-path 0 --model-ema --model-ema-decay 0.98 \
        --aa none --color-jitter 0 --scale 0.6 1.0 --reprob 0 --mixup 0 --cutmix 0 --aug-repeats 0 \
        --channels-last --workers 0 --output runs/photo_cls
    python benchmarks/precision_accuracy.py \
        --eval runs/demo/model_ema.safetensors --eval runs/photo_cls/best.safetensors runs/photo_cls_set
    python benchmarks/photo_classification_set.py runs/held_out_set --set held-out --train 600 --val 300 --size 40
"""
import argparse
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from cmtnet.checkpoints import atomic_write
from cmtnet.errors import InputError
# the photos are read as the detection set reads them
from photo_detection_set import _photo

# class folder -> skimage.data photo
CLASSES = {
    'astronaut': 'astronaut', 'brick': 'brick', 'camera': 'camera', 'cat': 'chelsea', 'coffee': 'coffee',
    'coins': 'coins', 'grass': 'grass', 'gravel': 'gravel', 'micrograph': 'immunohistochemistry', 'rocket': 'rocket',
}
CROP_SIDE = (0.2, 0.5)  # of the photo's short side
ASPECT = (3 / 4, 4 / 3)
JITTER = (0.6, 1.4)  # brightness, contrast and saturation factors
GRAYSCALE, BLUR = 1 / 3, 0.2  # probabilities
# the held-out set: class folder -> (package, photo): scikit-learn's sample images and scikit-image's other photos
HELD_OUT = {
    'flower': ('sklearn', 'flower.jpg'), 'hubble': ('skimage', 'hubble_deep_field'), 'moon': ('skimage', 'moon'),
    'motorcycle': ('skimage', 'stereo_motorcycle'), 'retina': ('skimage', 'retina'), 'temple': ('sklearn', 'china.jpg'),
}
SETS = ('photos', 'held-out')


def _held_out_photo(package: str, name: str) -> Image.Image:
    if package == 'sklearn':
        from sklearn.datasets import load_sample_image
        return Image.fromarray(load_sample_image(name))
    if name == 'stereo_motorcycle':
        import skimage.data
        return Image.fromarray(skimage.data.stereo_motorcycle()[0])
    return _photo(name)


def load_photos(classes: Sequence[str] = tuple(CLASSES)) -> Dict[str, Image.Image]:
    """The RGB photo of each class in `classes` (names of `CLASSES` or of `HELD_OUT`)."""
    unknown = [c for c in classes if c not in CLASSES and c not in HELD_OUT]
    if unknown:
        raise InputError(f'unknown classes {unknown}; expected some of {", ".join([*CLASSES, *HELD_OUT])}')
    return {c: _photo(CLASSES[c]) if c in CLASSES else _held_out_photo(*HELD_OUT[c]).convert('RGB') for c in classes}


def sample(photo: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """One augmented crop of `photo`, `size` x `size`."""
    short = min(photo.size)
    area = (rng.uniform(*CROP_SIDE) * short) ** 2
    aspect = np.exp(rng.uniform(*np.log(ASPECT)))
    width = min(photo.width, round(np.sqrt(area * aspect)))
    height = min(photo.height, round(np.sqrt(area / aspect)))
    x, y = rng.integers(0, photo.width - width + 1), rng.integers(0, photo.height - height + 1)
    image = photo.crop((x, y, x + width, y + height)).resize((size, size), Image.BICUBIC)
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(rng.uniform(*JITTER))
    if rng.random() < GRAYSCALE:
        image = image.convert('L').convert('RGB')
    if rng.random() < BLUR:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    return image


def make_split(photos: Dict[str, Image.Image], folder: Path, count: int, size: int, seed: int) -> None:
    """`count` images in `folder`/<class>/, the classes taking turns (as balanced as `count` allows)."""
    if count < len(photos):
        raise InputError(f'{folder}: {count} images cannot hold one of each of the {len(photos)} classes')
    rng = np.random.default_rng(seed)
    names = sorted(photos)
    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        name = names[index % len(names)]
        image = sample(photos[name], size, rng)
        atomic_write(folder / name / f'{index // len(names):04d}.jpg',
                     lambda f: image.save(f, format='JPEG', quality=90))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('output', type=Path)
    parser.add_argument('--train', type=int, default=1000, help='training images, all classes together')
    parser.add_argument('--val', type=int, default=300, help='validation images, all classes together')
    parser.add_argument('--size', type=int, default=160, help='image side in px')
    parser.add_argument('--set', default='photos', choices=SETS,
                        help='photos: the ten classes of CLASSES; held-out: the six photos of HELD_OUT')
    parser.add_argument('--classes', nargs='+', choices=[*CLASSES, *HELD_OUT], help='some classes of the set only')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    chosen = list(CLASSES if args.set == 'photos' else HELD_OUT)
    if args.classes and set(args.classes) - set(chosen):
        parser.error(f'--classes {sorted(set(args.classes) - set(chosen))} are not in --set {args.set}')
    photos = load_photos(args.classes or chosen)
    for split, count, seed in (('train', args.train, args.seed), ('val', args.val, args.seed + 1)):
        make_split(photos, args.output / split, count, args.size, seed)
        print(f'{split}: {count} images of {len(photos)} classes in {args.output / split}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
