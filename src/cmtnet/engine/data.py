"""What every task's data shares: image files, skipping unreadable images, the train and eval loaders, the digits.

- `find_images` and `ImageFiles`: the image files a prediction is given (files and folders of them), and
  `output_names`, a distinct file name for what is written about each.
- `ReadableImages`: a dataset whose images may not be readable, made into samples that skip them. An image
  that cannot be read (a broken or truncated file, one PIL cannot identify, a decompression bomb) is
  skipped with a warning naming the file (`strict=True` makes it an error): the next readable one takes
  its place, so that batches keep their size and processes stay in step, and evaluation and prediction
  leave that stand-in out (`own_images`, or the `skipped` count of each sample).
- `train_loader` and `eval_loader`: shuffled, sharded, resumable training batches whose samples carry their
  own seeds (see `engine.sampling`), and evaluation batches in order, each image on one process.
- `digits_split`: scikit-learn's handwritten digits with the fixed stratified 80/20 split that the
  classification demo trains on and the embedded detection set draws its digits from.
"""
import logging
import os
import struct
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..errors import InputError, did_you_mean_path
from .sampling import RepeatedAugmentationSampler, ResumableSampler, seeded

__all__ = [
    'UNREADABLE', 'Digits', 'ImageFiles', 'ReadableImages', 'digits_split', 'eval_loader', 'find_images',
    'output_names', 'own_images', 'read_image', 'readable_files', 'rgb_image', 'train_loader',
]

_logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

# what PIL raises for a file it cannot read: OSError (unidentified, truncated, decoder errors), SyntaxError
# and ValueError (malformed headers and chunks), EOFError and struct.error (cut short), and
# DecompressionBombError (an image of more pixels than PIL agrees to decode), which is not an OSError
UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


def find_images(paths: Sequence[PathLike]) -> List[Path]:
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
            raise InputError(f'{path} does not exist{did_you_mean_path(path)}')
    return found


def output_names(paths: Sequence[PathLike], suffix: str = '.png') -> List[str]:
    """A distinct file name per input path, for what a prediction writes about each, in one folder.

    The name is the path relative to the folder that holds all the inputs, its folders joined by '_', with
    `suffix` for its own: `photos/x.jpg` alone gives `x.png`, `a/x.jpg` and `b/x.jpg` give `a_x.png` and
    `b_x.png`. A name still taken (`x.jpg` beside `x.png`, `a_x.jpg` beside `a/x.jpg`, a file given twice;
    compared without case) gets `-2`, `-3`, ... in input order. The names depend on the paths alone.
    """
    folders = [os.path.abspath(Path(p).parent) for p in paths]
    common = os.path.commonpath(folders) if folders else ''
    names, taken = [], set()
    for path, folder in zip(paths, folders):
        base = '_'.join((*Path(os.path.relpath(folder, common)).parts, Path(path).stem))
        name, n = base + suffix, 1
        while name.lower() in taken:
            n += 1
            name = f'{base}-{n}{suffix}'
        taken.add(name.lower())
        names.append(name)
    return names


def rgb_image(image: Image.Image) -> Image.Image:
    """A decoded picture in RGB, as torchvision's ImageFolder reads its files; the one conversion of an image
    file and of an upload to `cmtnet serve`, so that both give the model the same pixels."""
    return image.convert('RGB')


def read_image(path: PathLike) -> Image.Image:
    """An image file in RGB (`rgb_image`)."""
    with open(path, 'rb') as f:
        return rgb_image(Image.open(f))


class ImageFiles(Dataset):
    """Image files without labels (target -1), read as torchvision's ImageFolder reads its files (RGB)."""

    def __init__(self, paths: Sequence[PathLike]):
        self.samples = [(str(p), -1) for p in paths]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        path, target = self.samples[index]
        return read_image(path), target


class ReadableImages(Dataset):
    """A dataset of (image, target) made into (transform(image), target, skipped), skipping unreadable images.

    An index may come with a seed (`(index, seed)`, see `ResumableSampler`) to augment under. An image that
    cannot be read (`UNREADABLE`) is logged with its file and replaced by the next readable one; `skipped`
    counts the images passed over, so that the training loop can report them and evaluation and prediction
    can leave the stand-in out. With `strict`, an unreadable image raises InputError instead.

    A task whose targets change with the image (boxes, masks) overrides `prepare`; the file behind an index
    is the dataset's `samples[index][0]` (ImageFolder, `ImageFiles`) or `names[index]`, or what `name` says.
    """
    source = 'the dataset'  # what the error names when no image at all can be read

    def __init__(self, dataset: Dataset, transform: Callable, strict: bool = False):
        self.dataset = dataset
        self.transform = transform
        self.strict = strict

    def __len__(self) -> int:
        return len(self.dataset)

    def name(self, index: int) -> str:
        """The file (or embedded entry) behind `index`."""
        samples = getattr(self.dataset, 'samples', None)
        if samples is not None:
            return str(samples[index][0])
        names = getattr(self.dataset, 'names', None)
        return str(names[index]) if names is not None else f'#{index}'

    def prepare(self, index: int, image: Any, target: Any) -> Tuple[Any, Any]:
        """The sample of the readable `image` at `index` as the model takes it (under the sample's seed)."""
        return self.transform(image), target

    def __getitem__(self, key: Union[int, Tuple[int, int]]) -> Tuple[Any, Any, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        for skipped in range(len(self)):
            candidate = (index + skipped) % len(self)
            try:
                image, target = self.dataset[candidate]
            except UNREADABLE as e:
                if self.strict:
                    raise InputError(f'unreadable image {self.name(candidate)}: {e}') from e
                _logger.warning('skipping unreadable image %s: %s', self.name(candidate), e)
                continue
            with seeded(seed) if seed is not None else nullcontext():
                return (*self.prepare(candidate, image, target), skipped)
        raise InputError(f'none of the {len(self)} images of {self.source} could be read')


Batch = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def own_images(batch: Batch) -> Batch:
    """(images, targets, kept) of a `ReadableImages` batch without the stand-ins: the place of an unreadable
    image holds a second copy of the next readable one, which evaluation and prediction must count once.
    `kept` marks the batch places that hold their own image."""
    images, targets, skipped = batch
    kept = skipped == 0
    return images[kept], targets[kept], kept


def train_loader(
        dataset: Dataset,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        aug_repeats: int = 0,
        workers: int = 4,
        pin_memory: bool = False,
        collate_fn: Optional[Callable] = None,
) -> DataLoader:
    """Shuffled (under `seed`), distributed (one shard per process), optionally repeated-augmentation
    (`aug_repeats` > 1) batches; full batches only. Samples are `(index, seed)` keys, as `ReadableImages`
    takes them. `loader.sampler.set_epoch(epoch, start)` must be called before each epoch; `start` resumes
    the epoch at this process's `start`-th sample."""
    if aug_repeats > 1:
        inner = RepeatedAugmentationSampler(dataset, world_size, rank, repeats=aug_repeats, seed=seed)
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
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        drop_last=True,
        persistent_workers=workers > 0,
        # an own generator, so that starting an epoch leaves the global RNG (saved for resuming) untouched
        generator=torch.Generator(),
    )


def eval_loader(dataset: Dataset, batch_size: int, rank: int = 0, world_size: int = 1, workers: int = 4,
                pin_memory: bool = False, collate_fn: Optional[Callable] = None) -> DataLoader:
    """Batches in order, each process taking every world_size-th image (none twice, so counts are exact)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=range(rank, len(dataset), world_size),
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        generator=torch.Generator(),
    )


class Digits(NamedTuple):
    """scikit-learn's handwritten digits: 8x8 images of ink levels 0..16, their labels, and the fixed split."""
    images: np.ndarray
    targets: np.ndarray
    train: np.ndarray  # indices of the training split
    test: np.ndarray  # indices of the held-out split


def digits_split() -> Digits:
    """The 1,797 digits with their fixed stratified 80/20 train/test split (seeded, the same everywhere)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    train, test = train_test_split(
        np.arange(len(digits.target)), test_size=0.2, stratify=digits.target, random_state=0)
    return Digits(digits.images, digits.target, train, test)


def readable_files(files: Sequence[PathLike]) -> Iterator[Tuple[Path, str, torch.Tensor]]:
    """(path, `output_names` name, uint8 (C, H, W) image) of each readable file among `files`, in order, for
    what a prediction writes per image; an unreadable file is named in a warning and left out."""
    from torchvision.transforms.v2 import functional as F
    images = eval_loader(ReadableImages(ImageFiles(files), F.pil_to_tensor), batch_size=1, workers=0)
    for path, name, batch in zip(map(Path, files), output_names(files), images):
        own, _, _ = own_images(batch)
        if len(own):  # else unreadable: the next image stood in for it, and comes at its own turn
            yield path, name, own[0]
