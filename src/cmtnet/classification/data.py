"""Data for classification: ImageFolder trees, the embedded digits, timm's transforms.

Two sources:
- an ImageFolder tree, laid out as ImageNet usually is: `ROOT/train/<class>/*.jpg`, `ROOT/val/<class>/*.jpg`;
- the embedded default, scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes), with a
  fixed stratified 80/20 train/test split (`engine.data.digits_split`), upscaled to the size the model takes.

Training, evaluation and prediction read them through the engine's `ReadableImages` (unreadable images
are skipped with a warning naming the file, or an error under `strict`) and its loaders, whose training
samples are augmented under their own seeds, so that a run resumed in the middle of an epoch sees exactly
the batches the interrupted run would have seen.
"""
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, auto_augment, create_transform

from ..engine.data import digits_split
from ..errors import InputError, did_you_mean_path

__all__ = ['DigitsDataset', 'build_dataset', 'default_eval_split', 'eval_transform', 'train_transform']

DIGITS_SPLITS = ('train', 'test')


def default_eval_split(root: Optional[Union[str, Path]]) -> str:
    """The held-out split: val/ of an ImageFolder tree, the test split of the digits."""
    return 'val' if root is not None else 'test'


class DigitsDataset(Dataset):
    """scikit-learn's handwritten digits as RGB PIL images of `img_size`, with a fixed train/test split."""

    def __init__(self, split: str, img_size: int):
        if split not in DIGITS_SPLITS:
            raise InputError(f'the digits have the splits {DIGITS_SPLITS}, got {split!r}')
        digits = digits_split()
        indices = digits.train if split == 'train' else digits.test
        self.classes = [str(c) for c in range(10)]
        self.targets = [int(digits.targets[i]) for i in indices]
        # 8x8 images of ink levels 0..16, upscaled once here rather than for every sample
        self.images = [
            Image.fromarray((digits.images[i] * (255 / 16)).astype(np.uint8))
            .resize((img_size, img_size), Image.Resampling.BICUBIC).convert('RGB')
            for i in indices
        ]
        self.names = [f'digits/{split}/{i}' for i in indices]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Tuple[Image.Image, int]:
        return self.images[index], self.targets[index]


def build_dataset(root: Optional[Union[str, Path]], split: str, img_size: int) -> Dataset:
    """The `split` of an ImageFolder tree at `root`, or of the digits when `root` is None.

    Raises InputError, before any work starts, for a missing folder or one without classes or images.
    """
    if root is None:
        return DigitsDataset(split, img_size)
    folder = Path(root) / split
    if not Path(root).is_dir():
        raise InputError(f'data folder {root} does not exist{did_you_mean_path(root)}')
    if not folder.is_dir():
        raise InputError(
            f'data folder {root} has no {split}/ folder; expected {root}/{split}/<class>/<image> '
            f'(ImageNet layout: train/ and val/, one folder per class)')
    try:
        return ImageFolder(str(folder))
    except FileNotFoundError as e:  # no class folders, or a class folder without images
        raise InputError(f'{folder}: {e}') from e


def train_transform(
        img_size: int,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        color_jitter: float = 0.4,
        aa: Optional[str] = 'rand-m9-mstd0.5-inc1',
        reprob: float = 0.25,
        interpolation: str = 'bicubic',
) -> Callable:
    """timm's training transform: random resized crop, flip, RandAugment (or colour jitter), random erasing."""
    transform = create_transform(
        img_size, is_training=True, scale=tuple(scale), ratio=tuple(ratio), hflip=hflip,
        color_jitter=color_jitter, auto_augment=None if aa in (None, '', 'none') else aa,
        interpolation=interpolation, re_prob=reprob, re_mode='pixel', re_count=1,
        mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
    return _posterize_on_any_pillow(transform)


def _posterize(img: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
    """timm's posterize, where keeping 0 bits gives a black image, as it did before Pillow 13 (which raises)."""
    if bits_to_keep < 1:
        return Image.new(img.mode, img.size)
    return auto_augment.posterize(img, bits_to_keep, **kwargs)


def _posterize_on_any_pillow(transform: Callable) -> Callable:
    """Give the posterize ops of timm's auto-augment policies in `transform` the 0-bit case back.

    timm's increasing posterize keeps 0 bits at magnitude 10, which `rand-m9-mstd0.5` draws in about 2% of
    its posterizes, and its plain posterize does so at magnitudes below 2.5. Pillow 13 made 0 bits an error,
    which would end a long run at random; with this the augmentation is the one timm intends.
    """
    for t in getattr(transform, 'transforms', ()):
        ops = list(getattr(t, 'ops', ())) + [op for sub_policy in getattr(t, 'policy', ()) for op in sub_policy]
        for op in ops:
            if getattr(op, 'aug_fn', None) is auto_augment.posterize:
                op.aug_fn = _posterize
    return transform


def eval_transform(img_size: int, crop_pct: float = 0.875, interpolation: str = 'bicubic') -> Callable:
    """timm's evaluation transform: resize to img_size / crop_pct, centre crop, normalise."""
    return create_transform(
        img_size, is_training=False, crop_pct=crop_pct, interpolation=interpolation,
        mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
