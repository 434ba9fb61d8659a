"""Semantic segmentation data: image and mask folders read and checked, samples augmented as mmseg does.

Two layouts:

- ADE20K's release (`--data ROOT`, ROOT being `ADEChallengeData2016` or the folder that holds it):
  `images/{training,validation}/*.jpg` and `annotations/{training,validation}/*.png`, 150 classes, mask
  value 0 unlabelled: values 1..150 become labels 0..149 and 0 becomes 255 (mmseg's `reduce_zero_label`).
- Generic folders: an image folder and a mask folder per split, single-channel PNG masks whose value is
  the class index (255: not labelled), an image and its mask paired by their path under the folder
  without the suffix (`a/x.jpg` with `a/x.png`). Class names come from a file (one per line) or are
  the numbers 0..N-1.

`read_mask_set` checks a split before any model is built. What cannot be used is named, skipped and
counted (an error under `strict`), as detection's `read_coco` does:

- an image without its mask;
- a mask that cannot be read or is not single-channel;
- a mask of another size than its image;
- a mask value outside the classes that is not 255.

An image that cannot be read is found when it is loaded and skipped by the engine's `ReadableImages`.

Training samples follow mmseg's ADE20K pipeline with torchvision's v2 transforms on the image and its mask
together (`tv_tensors.Mask`), under the sample's seed (see `engine.sampling`): random rescale within
0.5-2.0 times the base scale (aspect kept; ADE20K's 2048x512, else `--scale` or the train images' median size), a random crop of `crop_size` in which no class covers
more than 75% of the labelled pixels (10 tries, mmseg's `cat_max_ratio`), horizontal flip with
probability 0.5, photometric distortion (brightness, contrast, saturation, hue, each with probability 0.5),
and padding to the crop size (image 0, mask 255). Evaluation samples are the image and mask as they are:
`inference.segment` resizes the image as the protocol does and scores logits at the mask's size.
"""
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..engine.data import UNREADABLE, ReadableImages
from ..errors import InputError, did_you_mean_path
from .metrics import IGNORE_INDEX

__all__ = [
    'ADE20K_CLASSES', 'BASE_SCALE', 'DataSource', 'MaskSet', 'SegmentationSamples', 'ade20k_layout',
    'class_names', 'collate', 'data_paths', 'eval_transform', 'median_size', 'read_mask_set', 'train_transform',
]

_logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

BASE_SCALE = (2048, 512)  # (long side, short side) bounds of mmseg's ADE20K resize
CROP_SIZE = 512
_NAMED = 3  # how many skipped entries a warning names
_SINGLE_CHANNEL = ('L', 'P', 'I', 'I;16')

# skips reported by name and count; `strict` makes each an error
_SKIPS = {
    'missing_mask': 'image(s) without a mask',
    'bad_mask': 'mask(s) that cannot be read or are not single-channel',
    'size_mismatch': 'mask(s) of another size than their image',
    'bad_values': 'mask(s) with values outside the classes and not 255',
}

# ADE20K's 150 classes (SceneParsing benchmark), in label order 0..149
ADE20K_CLASSES = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane', 'grass', 'cabinet',
    'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain', 'chair', 'car', 'water',
    'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field', 'armchair', 'seat', 'fence', 'desk',
    'rock', 'wardrobe', 'lamp', 'bathtub', 'railing', 'cushion', 'base', 'box', 'column', 'signboard',
    'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace', 'refrigerator', 'grandstand',
    'path', 'stairs', 'runway', 'case', 'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge',
    'bookcase', 'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench', 'countertop', 'stove',
    'palm', 'kitchen island', 'computer', 'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus',
    'towel', 'light', 'truck', 'tower', 'chandelier', 'awning', 'streetlight', 'booth', 'television receiver',
    'airplane', 'dirt track', 'apparel', 'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle',
    'buffet', 'poster', 'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer', 'plaything',
    'swimming pool', 'stool', 'barrel', 'basket', 'waterfall', 'tent', 'bag', 'minibike', 'cradle', 'oven',
    'ball', 'food', 'step', 'tank', 'trade name', 'microwave', 'pot', 'animal', 'bicycle', 'lake',
    'dishwasher', 'screen', 'blanket', 'sculpture', 'hood', 'sconce', 'vase', 'traffic light', 'tray',
    'ashcan', 'fan', 'pier', 'crt screen', 'plate', 'monitor', 'bulletin board', 'shower', 'radiator', 'glass',
    'clock', 'flag',
)



def ade20k_layout(root: PathLike) -> Dict[str, Tuple[Path, Path]]:
    """{'train': (images, masks), 'val': (...)} of ADE20K's release, ROOT being `ADEChallengeData2016` or
    the folder that holds it."""
    root = Path(root)
    if (root / 'ADEChallengeData2016').is_dir():
        root = root / 'ADEChallengeData2016'
    if not (root / 'images').is_dir() or not (root / 'annotations').is_dir():
        raise InputError(f'--data {root}: expected ADE20K\'s release layout (ADEChallengeData2016/images/'
                         f'{{training,validation}} and ADEChallengeData2016/annotations/{{training,validation}})')
    return {s: (root / 'images' / folder, root / 'annotations' / folder)
            for s, folder in (('train', 'training'), ('val', 'validation'))}


class DataSource(NamedTuple):
    """Where a run's data is: {split: (images, masks)}, the class names if the layout fixes them, whether
    mask value 0 means unlabelled (ADE20K), the horizontal flip probability that suits its content
    (mmseg's 0.5 unless a layout's content is not symmetric), and the base scale
    if the layout fixes it (ADE20K's 2048x512; None: the train images' median size, `median_size`)."""
    splits: Dict[str, Tuple[Path, Path]]
    class_names: Optional[List[str]] = None
    reduce_zero_label: bool = False
    hflip: float = 0.5
    scale: Optional[Tuple[int, int]] = None


def data_paths(o: Any, splits: Sequence[str] = ('train', 'val')) -> DataSource:
    """The data of `--data` (ADE20K), the `--<split>-images/masks` pairs, or else the embedded set
    (generated on first use). `o` has the attributes `data`, `train_images`, `train_masks`, `val_images`
    and `val_masks` (None where not given)."""
    given = {s: (getattr(o, f'{s}_images', None), getattr(o, f'{s}_masks', None)) for s in splits}
    data = getattr(o, 'data', None)
    if data is not None:
        if any(v for pair in given.values() for v in pair):
            raise InputError('give either --data or the --train-/--val- images and masks, not both')
        layout = ade20k_layout(data)
        return DataSource({s: layout[s] for s in splits}, list(ADE20K_CLASSES), reduce_zero_label=True,
                          scale=BASE_SCALE)
    if not any(v for pair in given.values() for v in pair):
        from .synthetic import write_synthetic_masks
        root = write_synthetic_masks()
        names = (root / 'classes.txt').read_text().splitlines()
        return DataSource({s: (root / s / 'images', root / s / 'masks') for s in splits}, names)
    for split, (images, masks) in given.items():
        if images is None or masks is None:
            raise InputError(f'--{split}-images and --{split}-masks go together (or give --data ROOT)')
    return DataSource({s: (Path(i), Path(m)) for s, (i, m) in given.items()})


def class_names(classes_file: Optional[PathLike] = None, num_classes: Optional[int] = None,
                default: Optional[Sequence[str]] = None) -> List[str]:
    """The class names of a run: one per line of `classes_file`, else '0'..'N-1' for `num_classes`, else
    `default` (the layout's). Label i is the i-th name."""
    if classes_file is not None:
        path = Path(classes_file)
        if not path.is_file():
            raise InputError(f'--classes {path} does not exist (expected a text file, one class name per line)'
                             f'{did_you_mean_path(path)}')
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not names:
            raise InputError(f'--classes {path} names no class (expected one class name per line)')
        if len(set(names)) != len(names):
            repeated = sorted({n for n in names if names.count(n) > 1})
            raise InputError(f'--classes {path} names a class twice: {", ".join(repeated)}')
        if num_classes is not None and num_classes != len(names):
            raise InputError(f'--classes {path} names {len(names)} classes but --num-classes is {num_classes}')
    elif num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes <= 255:
            raise InputError(f'--num-classes must be an integer from 1 to 255, got {num_classes!r}')
        names = [str(i) for i in range(num_classes)]
    elif default is not None:
        names = list(default)
    else:
        raise InputError('mask folders need the classes: give --classes FILE (one name per line) or --num-classes N')
    if len(names) > 255:
        raise InputError(f'{len(names)} classes: masks hold at most 255 (value 255 marks unlabelled pixels)')
    return names



@dataclass
class MaskSet:
    """A checked split: the usable (image, mask) pairs and the classes."""
    images: Path
    masks: Path
    pairs: List[Tuple[Path, Path]]
    class_names: List[str]
    reduce_zero_label: bool = False
    skipped: Dict[str, int] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> str:
        skips = ''.join(f', skipped {self.skipped[k]} {what}' for k, what in _SKIPS.items() if self.skipped.get(k))
        return f'{self.images}: {len(self.pairs)} images with masks of {self.num_classes} classes{skips}'


def _files(folder: Path, suffixes: Sequence[str]) -> Dict[Path, Path]:
    """{path under `folder` without its suffix: file} of the files with one of `suffixes` (any case)."""
    return {p.relative_to(folder).with_suffix(''): p for p in sorted(folder.rglob('*'))
            if p.is_file() and p.suffix.lower() in suffixes}


def _mask_problem(image: Path, mask: Path, num_classes: int, reduce_zero_label: bool) -> Optional[Tuple[str, str]]:
    """(kind, what) of what makes the pair unusable, or None."""
    try:
        with Image.open(mask) as m:
            mode, size = m.mode, m.size
            values = np.asarray(m) if mode in _SINGLE_CHANNEL else None
    except UNREADABLE as e:
        return 'bad_mask', f'mask {mask} cannot be read: {e}'
    if values is None:
        return 'bad_mask', f'mask {mask} is {mode}, not single-channel (one class index per pixel)'
    try:
        with Image.open(image) as i:
            image_size = i.size
    except UNREADABLE:
        return None  # the image is reported, and skipped, when it is loaded
    if image_size != size:
        return 'size_mismatch', (f'mask {mask} is {size[0]}x{size[1]} but its image {image.name} is '
                                 f'{image_size[0]}x{image_size[1]}')
    highest = num_classes if reduce_zero_label else num_classes - 1  # ADE20K: 1..150 are classes, 0 unlabelled
    present = np.unique(values)
    bad = present[(present > highest) & (present != IGNORE_INDEX)]
    if len(bad):
        shown = ', '.join(str(int(v)) for v in bad[:5]) + (', ...' if len(bad) > 5 else '')
        first = 1 if reduce_zero_label else 0
        return 'bad_values', f'mask {mask} has values {shown}, outside {first}..{highest} and not {IGNORE_INDEX}'
    return None


def read_mask_set(images: PathLike, masks: PathLike, class_names: Sequence[str], *,
                  reduce_zero_label: bool = False, strict: bool = False) -> MaskSet:
    """Pair and check the images in `images` with the PNG masks in `masks` (see the module docstring)."""
    images, masks = Path(images), Path(masks)
    for kind, folder in (('image', images), ('mask', masks)):
        if not folder.is_dir():
            raise InputError(f'{kind} folder {folder} does not exist{did_you_mean_path(folder)}')
    image_files = _files(images, IMG_EXTENSIONS)
    if not image_files:
        raise InputError(f'image folder {images} holds no images ({", ".join(IMG_EXTENSIONS)})')
    mask_files = _files(masks, ('.png',))
    problems: Dict[str, List[str]] = defaultdict(list)
    pairs = []
    for key, image in image_files.items():
        mask = mask_files.get(key)
        problem = (('missing_mask', f'image {image} has no mask {key}.png in {masks}') if mask is None
                   else _mask_problem(image, mask, len(class_names), reduce_zero_label))
        if problem is None:
            pairs.append((image, mask))
            continue
        if strict:
            raise InputError(f'{problem[1]} (--strict)')
        problems[problem[0]].append(problem[1])
    for kind, whats in problems.items():
        named = '; '.join(whats[:_NAMED]) + ('; ...' if len(whats) > _NAMED else '')
        _logger.warning('%s: skipped %d %s: %s', images, len(whats), _SKIPS[kind], named)
    if not pairs:
        raise InputError(f'none of the {len(image_files)} images in {images} has a usable mask in {masks}')
    return MaskSet(images, masks, pairs, list(class_names), reduce_zero_label,
                   {k: len(v) for k, v in problems.items()})


def median_size(mask_set: MaskSet) -> Tuple[int, int]:
    """(long side, short side): the medians of the long and of the short sides of a split's images, the base
    scale that leaves an image of the typical size as it is."""
    sides = []
    for image, _ in mask_set.pairs:
        try:
            with Image.open(image) as i:
                sides.append(sorted(i.size, reverse=True))
        except UNREADABLE:
            continue  # reported, and skipped, when it is loaded
    if not sides:
        raise InputError(f'no image in {mask_set.images} can be read to find the base scale (give --scale LONG SHORT)')
    long_side, short_side = np.median(np.array(sides), axis=0)
    return int(round(long_side)), int(round(short_side))



def _labels(mask: np.ndarray, reduce_zero_label: bool) -> np.ndarray:
    """Mask values as labels: ADE20K's 1..150 -> 0..149 and 0 -> 255; 255 stays 255."""
    if not reduce_zero_label:
        return mask.astype(np.uint8)
    labels = mask.astype(np.int16) - 1
    labels[(labels < 0) | (labels == IGNORE_INDEX - 1)] = IGNORE_INDEX
    return labels.astype(np.uint8)


class RandomRescale(v2.Transform):
    """mmseg's `RandomResize(scale, ratio_range, keep_ratio=True)`: the image and mask rescaled by one
    factor, the largest that fits them in `scale` (long, short side) times a ratio drawn from `ratio_range`."""

    def __init__(self, scale: Tuple[int, int] = BASE_SCALE, ratio_range: Tuple[float, float] = (0.5, 2.0)):
        super().__init__()
        self.scale = scale
        self.ratio_range = ratio_range

    def make_params(self, flat_inputs: List[Any]) -> Dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        ratio = float(torch.empty(1).uniform_(*self.ratio_range))
        return {'size': list(rescaled_size(height, width, self.scale, ratio))}

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        return self._call_kernel(TF.resize, inpt, params['size'], antialias=True)


def rescaled_size(height: int, width: int, scale: Tuple[int, int] = BASE_SCALE, ratio: float = 1.0) -> Tuple[int, int]:
    """(height, width) rescaled, aspect kept, to fit within `scale` (long, short side) times `ratio`."""
    long_side, short_side = scale[0] * ratio, scale[1] * ratio
    factor = min(long_side / max(height, width), short_side / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


class BalancedRandomCrop(v2.Transform):
    """A random crop of `size` (or the whole side where the image is smaller) in which no class covers more
    than `cat_max_ratio` of the labelled pixels, drawn up to `tries` times (mmseg's RandomCrop)."""

    def __init__(self, size: int, cat_max_ratio: float = 0.75, tries: int = 10):
        super().__init__()
        self.size = size
        self.cat_max_ratio = cat_max_ratio
        self.tries = tries

    def make_params(self, flat_inputs: List[Any]) -> Dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        crop_h, crop_w = min(self.size, height), min(self.size, width)
        mask = next((x for x in flat_inputs if isinstance(x, tv_tensors.Mask)), None)
        for _ in range(self.tries):
            top = int(torch.randint(height - crop_h + 1, ()))
            left = int(torch.randint(width - crop_w + 1, ()))
            if mask is None or self.cat_max_ratio >= 1:
                break
            labels = mask[..., top:top + crop_h, left:left + crop_w].reshape(-1)
            counts = torch.bincount(labels[labels != IGNORE_INDEX].long())
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() < self.cat_max_ratio * counts.sum():
                break
        return {'top': top, 'left': left, 'height': crop_h, 'width': crop_w}

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        return self._call_kernel(TF.crop, inpt, **params)


class PadTo(v2.Transform):
    """Pad on the right and bottom to `size` x `size`: images with 0, masks with 255 (not labelled)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def make_params(self, flat_inputs: List[Any]) -> Dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        return {'padding': [0, 0, max(0, self.size - width), max(0, self.size - height)]}

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        fill = IGNORE_INDEX if isinstance(inpt, tv_tensors.Mask) else 0
        return self._call_kernel(TF.pad, inpt, params['padding'], fill=fill)


def photometric_distortion() -> v2.Transform:
    """mmseg's PhotoMetricDistortion in torchvision's terms: brightness (+-32/255, here a factor of
    1 +- 0.125), contrast and saturation (0.5-1.5), hue (+-18 of OpenCV's 180 hue steps: +-0.1), each applied
    with probability 0.5. Masks pass through unchanged."""
    return v2.Compose([v2.RandomApply([v2.ColorJitter(**{name: value})], p=0.5) for name, value in
                       (('brightness', 0.125), ('contrast', 0.5), ('saturation', 0.5), ('hue', 0.1))])


def train_transform(crop_size: int = CROP_SIZE, scale: Tuple[int, int] = BASE_SCALE,
                    ratio_range: Tuple[float, float] = (0.5, 2.0), hflip: float = 0.5) -> v2.Transform:
    """mmseg's ADE20K training pipeline on (image, mask): -> (float image 0..1, int64 labels), crop_size^2;
    `hflip` is the probability of the horizontal flip (mmseg's 0.5)."""
    return v2.Compose([
        RandomRescale(scale, ratio_range),
        BalancedRandomCrop(crop_size),
        *([v2.RandomHorizontalFlip(hflip)] if hflip > 0 else []),
        photometric_distortion(),
        PadTo(crop_size),
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
    ])


def eval_transform() -> v2.Transform:
    """(image, mask) as they are: float image 0..1, int64 labels at the image's size."""
    return v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True)



class _Pairs(Dataset):
    """(RGB image, labels array) of a `MaskSet`'s pairs; reading raises what PIL raises."""

    def __init__(self, mask_set: MaskSet):
        self.mask_set = mask_set
        self.names = [str(image) for image, _ in mask_set.pairs]

    def __len__(self) -> int:
        return len(self.mask_set.pairs)

    def __getitem__(self, index: int) -> Tuple[Image.Image, np.ndarray]:
        image_path, mask_path = self.mask_set.pairs[index]
        with Image.open(image_path) as image:
            image = image.convert('RGB')
        with Image.open(mask_path) as mask:
            labels = _labels(np.asarray(mask), self.mask_set.reduce_zero_label)
        return image, labels


class SegmentationSamples(ReadableImages):
    """(image tensor 0..1, labels tensor, skipped) samples of a `MaskSet`, transformed together.

    An index may come with a seed (`(index, seed)`, see `ResumableSampler`) for the augmentation. An
    unreadable image is logged and replaced by the next readable one (`skipped` counts those passed over).
    """

    def __init__(self, mask_set: MaskSet, transform: v2.Transform, strict: bool = False):
        super().__init__(_Pairs(mask_set), transform, strict)
        self.mask_set = mask_set
        self.source = str(mask_set.images)

    def prepare(self, index: int, image: Any, labels: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.transform(TF.to_image(image), tv_tensors.Mask(torch.from_numpy(labels)))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


def collate(batch: Sequence[Tuple[torch.Tensor, torch.Tensor, int]]) -> Tuple[List[torch.Tensor], List[torch.Tensor],
                                                                                List[int]]:
    """(images, labels, unreadable images each sample stands in for) as lists: evaluation images differ in
    size. Training batches (all `crop_size`) stack with the default collate."""
    images, labels, skipped = zip(*batch)
    return list(images), list(labels), list(skipped)
