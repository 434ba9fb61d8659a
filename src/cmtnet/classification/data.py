"""Data for training, evaluation and prediction: ImageFolder trees, the embedded digits, timm's transforms.

Two sources:
- an ImageFolder tree, laid out as ImageNet usually is: `ROOT/train/<class>/*.jpg`, `ROOT/val/<class>/*.jpg`;
- the embedded default, scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes), with a
  fixed stratified 80/20 train/test split, upscaled to the size the model takes.

Unreadable images are skipped with a warning naming the file (`strict=True` makes them an error): the
next readable one takes their place, so that batches keep their size and processes stay in step, and
evaluation and prediction leave that stand-in out.

Training samples carry their own random seed, derived from the run seed, the epoch and the sample's place
in the epoch's global order, and are augmented under it. A sample is therefore augmented the same way
whatever the number of processes or loader workers, and a run resumed in the middle of an epoch sees
exactly the batches the interrupted run would have seen.
"""
import logging
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, auto_augment, create_transform
from timm.data.distributed_sampler import RepeatAugSampler

from ..engine.sampling import ResumableSampler, seeded
from ..errors import InputError

__all__ = [
    'DigitsDataset', 'ImageFiles', 'ReadableImages', 'build_dataset', 'default_eval_split',
    'eval_loader', 'eval_transform', 'find_images', 'own_images', 'train_loader', 'train_transform',
]

_logger = logging.getLogger(__name__)

DIGITS_SPLITS = ('train', 'test')


def default_eval_split(root: Optional[Union[str, Path]]) -> str:
    """The held-out split: val/ of an ImageFolder tree, the test split of the digits."""
    return 'val' if root is not None else 'test'


class DigitsDataset(Dataset):
    """scikit-learn's handwritten digits as RGB PIL images of `img_size`, with a fixed train/test split."""

    def __init__(self, split: str, img_size: int):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if split not in DIGITS_SPLITS:
            raise InputError(f'the digits have the splits {DIGITS_SPLITS}, got {split!r}')
        digits = load_digits()
        train_idx, test_idx = train_test_split(
            np.arange(len(digits.target)), test_size=0.2, stratify=digits.target, random_state=0)
        indices = train_idx if split == 'train' else test_idx
        self.classes = [str(c) for c in range(10)]
        self.targets = [int(digits.target[i]) for i in indices]
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
        raise InputError(f'data folder {root} does not exist')
    if not folder.is_dir():
        raise InputError(
            f'data folder {root} has no {split}/ folder; expected {root}/{split}/<class>/<image> '
            f'(ImageNet layout: train/ and val/, one folder per class)')
    try:
        return ImageFolder(str(folder))
    except FileNotFoundError as e:  # no class folders, or a class folder without images
        raise InputError(f'{folder}: {e}') from e


class ImageFiles(Dataset):
    """Image files without labels (target -1), read as ImageFolder reads its files."""

    def __init__(self, paths: Sequence[Union[str, Path]]):
        self.samples = [(str(p), -1) for p in paths]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        path, target = self.samples[index]
        return default_loader(path), target


def find_images(paths: Sequence[Union[str, Path]]) -> List[Path]:
    """Image files among `paths`, and under those that are folders (recursively, sorted)."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            images = sorted(p for p in path.rglob('*') if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
            if not images:
                raise InputError(f'folder {path} holds no images ({", ".join(IMG_EXTENSIONS)})')
            found += images
        elif path.is_file():
            found.append(path)
        else:
            raise InputError(f'{path} does not exist')
    return found


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


class ReadableImages(Dataset):
    """A dataset of (image, target) made into (tensor, target, skipped), skipping unreadable images.

    An index may come with a seed (`(index, seed)`, see `ResumableSampler`) to augment under. An image that
    cannot be read is logged and replaced by the next readable one; `skipped` counts the images passed over,
    so that the training loop can report them. With `strict`, an unreadable image raises instead.
    """

    def __init__(self, dataset: Dataset, transform: Callable, strict: bool = False):
        self.dataset = dataset
        self.transform = transform
        self.strict = strict

    def __len__(self) -> int:
        return len(self.dataset)

    def name(self, index: int) -> str:
        """The file (or digits entry) behind `index`."""
        samples = getattr(self.dataset, 'samples', None)
        return samples[index][0] if samples is not None else self.dataset.names[index]

    def __getitem__(self, key: Union[int, Tuple[int, int]]) -> Tuple[torch.Tensor, int, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        for skipped in range(len(self)):
            candidate = (index + skipped) % len(self)
            try:
                image, target = self.dataset[candidate]
            except Exception as e:  # PIL raises several kinds of error for broken or truncated files
                if self.strict:
                    raise InputError(f'unreadable image {self.name(candidate)}: {e}') from e
                _logger.warning('skipping unreadable image %s: %s', self.name(candidate), e)
                continue
            if seed is None:
                return self.transform(image), target, skipped
            with seeded(seed):
                return self.transform(image), target, skipped
        raise InputError(f'none of the {len(self)} images of the dataset could be read')


def own_images(batch: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, targets, kept) of a `ReadableImages` batch without the stand-ins: the place of an unreadable
    image holds a second copy of the next readable one, which evaluation and prediction must count once.
    `kept` marks the batch places that hold their own image."""
    images, targets, skipped = batch
    kept = skipped == 0
    return images[kept], targets[kept], kept


def train_loader(
        dataset: ReadableImages,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        aug_repeats: int = 0,
        workers: int = 4,
        pin_memory: bool = False,
) -> DataLoader:
    """Shuffled, distributed (one shard per process), optionally repeated-augmentation batches; full batches
    only. `loader.sampler.set_epoch(epoch, start)` must be called before each epoch."""
    if aug_repeats > 1:
        inner = RepeatAugSampler(dataset, num_replicas=world_size, rank=rank, num_repeats=aug_repeats)
    else:
        inner = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    if len(inner) < batch_size:
        raise InputError(
            f'{len(dataset)} training images give each of {world_size} process(es) {len(inner)} samples per '
            f'epoch, fewer than one batch of {batch_size}; lower --batch-size')
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ResumableSampler(inner, rank, world_size, seed),
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=True,
        persistent_workers=workers > 0,
        # an own generator, so that starting an epoch leaves the global RNG (saved for resuming) untouched
        generator=torch.Generator(),
    )


def eval_loader(dataset: ReadableImages, batch_size: int, rank: int = 0, world_size: int = 1,
                workers: int = 4, pin_memory: bool = False) -> DataLoader:
    """Batches in order, each process taking every world_size-th image (none twice, so counts are exact)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=range(rank, len(dataset), world_size),
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        generator=torch.Generator(),
    )
