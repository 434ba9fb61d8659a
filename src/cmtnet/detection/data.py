"""COCO-format detection data: annotation files read and checked, images as torchvision's detectors take them.

`read_coco` reads an annotation file and checks it before any model is built. What cannot be used is an
error naming the file and the entry (a missing or malformed file, a missing field, a category table that
does not fit the run's), or a skip that is named and counted, and an error under `strict`:

- an image listed but absent from the image folder (the image and its annotations are left out);
- an annotation whose box has zero or negative size, whose category id is not in `categories`, or whose
  image id is not in `images` (the annotation is left out).

An image without annotations is kept: it is a negative example. An image that exists but cannot be read is
found when it is loaded: it is skipped with a warning and the next image takes its place (an error under
`strict`), by the engine's `ReadableImages`, as for classification. Crowd annotations (`iscrowd: 1`) are
scored by COCO evaluation but not trained on, as torchvision's detection references do.

Samples are read by torchvision's `CocoDetection` through the v2 transforms wrapper (boxes, labels and,
for Mask R-CNN, masks) and flipped horizontally at random under a per-sample seed; the engine's
`train_loader` and `eval_loader` batch them with `collate`. Category ids become labels in the order of
`categories`, counted as the detector counts them: 0..K-1 for RetinaNet and FCOS,
1..K for the R-CNNs (0 is their background); `CocoSet.category_ids` maps them back for evaluation and
prediction.

`data_paths` finds the images and annotation files a command was given: a COCO tree (`--data`), a pair
per split, or else the embedded set; `train_hflip` is the training flip probability that suits them.
"""
import contextlib
import io
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torchvision.datasets import CocoDetection, VisionDataset
from torchvision.transforms import v2
from torchvision.datasets import wrap_dataset_for_transforms_v2

from ..engine.data import ReadableImages
from ..errors import InputError, did_you_mean_path
from .synthetic import write_synthetic_coco

__all__ = ['CocoSet', 'DetectionSamples', 'coco_layout', 'collate', 'data_paths', 'read_coco', 'train_hflip']

_logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

# skips reported by name and count; `strict` makes each an error
_SKIPS = {
    'missing_image': 'image(s) listed but absent',
    'bad_box': 'annotation(s) with a box of zero or negative size',
    'bad_category': 'annotation(s) with a category id not in categories',
    'bad_image_id': 'annotation(s) of an image id not in images',
}
_NAMED = 3  # how many skipped entries a warning names

# the training flip probability when `--hflip` is not given: torchvision's detection references flip half
# the images; the embedded digits are not flipped, since a mirrored digit is another shape (or none)
HFLIP = 0.5
EMBEDDED_HFLIP = 0.0


def coco_layout(root: PathLike) -> Dict[str, Tuple[Path, Path]]:
    """{'train': (images, annotations), 'val': (...)} of a COCO 2017 tree: `ROOT/{train,val}2017/`,
    `ROOT/annotations/instances_{train,val}2017.json`."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f'--data {root}: no such folder; expected the COCO 2017 layout '
                         f'(annotations/, train2017/, val2017/){did_you_mean_path(root)}')
    return {s: (root / f'{s}2017', root / 'annotations' / f'instances_{s}2017.json') for s in ('train', 'val')}


def _given(o: Any, splits: Sequence[str]) -> Dict[str, Tuple[Optional[str], Optional[str]]]:
    return {s: (getattr(o, f'{s}_images', None), getattr(o, f'{s}_annotations', None)) for s in splits}


def _embedded(o: Any, given: Dict[str, Tuple[Optional[str], Optional[str]]]) -> bool:
    return getattr(o, 'data', None) is None and not any(v for pair in given.values() for v in pair)


def data_paths(o: Any, splits: Sequence[str] = ('train', 'val')) -> Dict[str, Tuple[Path, Path]]:
    """{split: (images, annotations)} from `--data`, the `--<split>-images/annotations` pairs, or else the
    embedded set (generated on first use)."""
    given = _given(o, splits)
    if o.data is not None:
        if any(v for pair in given.values() for v in pair):
            raise InputError('give either --data or the --train-/--val- images and annotations, not both')
        return {s: p for s, p in coco_layout(o.data).items() if s in splits}
    if _embedded(o, given):
        return {s: p for s, p in coco_layout(write_synthetic_coco()).items() if s in splits}
    for split, (images, annotations) in given.items():
        if images is None or annotations is None:
            raise InputError(f'--{split}-images and --{split}-annotations go together (or give --data ROOT)')
    return {s: (Path(i), Path(a)) for s, (i, a) in given.items()}


def train_hflip(o: Any) -> float:
    """The training flip probability: `o.hflip` where given, else 0.5, or 0 on the embedded digits."""
    if o.hflip is not None:
        return o.hflip
    return EMBEDDED_HFLIP if _embedded(o, _given(o, ('train', 'val'))) else HFLIP


@dataclass
class CocoSet:
    """A checked annotation file: the usable images and annotations as a pycocotools `COCO`, and the classes."""
    annotations: Path
    images: Path
    coco: Any  # pycocotools.coco.COCO of the kept images and annotations
    class_names: List[str]
    category_ids: List[int]  # label i (1..K) is category_ids[i - 1]
    image_ids: List[int]
    skipped: Dict[str, int] = field(default_factory=dict)
    negatives: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def describe(self) -> str:
        skips = ''.join(f', skipped {n} {_SKIPS[k]}' for k, n in self.skipped.items() if n)
        return (f'{self.annotations.name}: {len(self.image_ids)} images ({self.negatives} without objects), '
                f'{len(self.coco.anns)} objects of {self.num_classes} classes{skips}')


def _load_json(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise InputError(f'annotation file {path} does not exist{did_you_mean_path(path)}')
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f'annotation file {path} is not valid JSON: {e}') from e
    if not isinstance(data, dict):
        raise InputError(f'annotation file {path}: expected a COCO object with images, annotations and categories, '
                         f'got a {type(data).__name__}')
    for key in ('images', 'annotations', 'categories'):
        if not isinstance(data.get(key), list):
            raise InputError(f'annotation file {path}: no {key!r} list; expected a COCO object with images, '
                             f'annotations and categories')
    return data


def _entry(path: Path, kind: str, i: int, entry: Any, keys: Sequence[str]) -> Dict[str, Any]:
    if not isinstance(entry, dict) or any(k not in entry for k in keys):
        raise InputError(f'annotation file {path}: {kind}[{i}] must be an object with {", ".join(keys)}; '
                         f'got {entry!r:.200}')
    return entry


def _check_box(path: Path, i: int, ann: Dict[str, Any]) -> bool:
    box = ann['bbox']
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        raise InputError(f'annotation file {path}: annotations[{i}] (id {ann["id"]}) has bbox {box!r}; '
                         f'expected [x, y, width, height]')
    return box[2] > 0 and box[3] > 0


def read_coco(
        annotations: PathLike,
        images: PathLike,
        strict: bool = False,
        categories: Optional[Sequence[int]] = None,
        train: bool = False,
) -> CocoSet:
    """Read and check a COCO annotation file whose images are in the folder `images`.

    `categories`: the category ids the run was trained on (a val file and a checkpoint must agree with the
    train file). `train`: leave crowd annotations out. See the module docstring for what is checked.
    """
    from pycocotools.coco import COCO

    annotations, images = Path(annotations), Path(images)
    data = _load_json(annotations)
    if not images.is_dir():
        raise InputError(f'image folder {images} (for {annotations}) does not exist{did_you_mean_path(images)}')
    cats = [_entry(annotations, 'categories', i, c, ('id', 'name')) for i, c in enumerate(data['categories'])]
    category_ids = [int(c['id']) for c in cats]
    if not cats:
        raise InputError(f'annotation file {annotations}: the categories list is empty')
    if len(set(category_ids)) != len(category_ids):
        raise InputError(f'annotation file {annotations}: category ids repeat: {category_ids}')
    if categories is not None and sorted(category_ids) != sorted(categories):
        raise InputError(f'annotation file {annotations} has the category ids {sorted(category_ids)}; the model was '
                         f'trained on {sorted(categories)}')
    if categories is not None:
        category_ids = list(categories)  # the training order of labels

    problems: Dict[str, List[str]] = defaultdict(list)

    def skip(kind: str, what: str) -> None:
        if strict:
            raise InputError(f'annotation file {annotations}: {what} (--strict)')
        problems[kind].append(what)

    kept_images = {}
    for i, img in enumerate(data['images']):
        img = _entry(annotations, 'images', i, img, ('id', 'file_name'))
        if not (images / img['file_name']).is_file():
            skip('missing_image', f'image id {img["id"]} {img["file_name"]!r} is not in {images}')
        else:
            kept_images[img['id']] = img
    listed = {img['id'] for img in data['images'] if isinstance(img, dict)}
    known = set(category_ids)
    kept_anns = []
    for i, ann in enumerate(data['annotations']):
        ann = _entry(annotations, 'annotations', i, ann, ('id', 'image_id', 'category_id', 'bbox'))
        if ann['image_id'] not in listed:
            skip('bad_image_id', f'annotation id {ann["id"]} is of image id {ann["image_id"]}, not in images')
        elif ann['category_id'] not in known:
            skip('bad_category', f'annotation id {ann["id"]} has category id {ann["category_id"]}, not in categories '
                                 f'{sorted(known)}')
        elif not _check_box(annotations, i, ann):
            skip('bad_box', f'annotation id {ann["id"]} has a box of zero or negative size {ann["bbox"]}')
        elif ann['image_id'] in kept_images and not (train and ann.get('iscrowd', 0)):
            area = ann.get('area', ann['bbox'][2] * ann['bbox'][3])
            kept_anns.append(dict(ann, iscrowd=ann.get('iscrowd', 0), area=area))
    for kind, whats in problems.items():
        named = '; '.join(whats[:_NAMED]) + ('; ...' if len(whats) > _NAMED else '')
        _logger.warning('%s: skipped %d %s: %s', annotations, len(whats), _SKIPS[kind], named)
    if not kept_images:
        raise InputError(f'annotation file {annotations}: none of its {len(data["images"])} images is in {images}')

    coco = COCO()
    coco.dataset = dict(data, images=list(kept_images.values()), annotations=kept_anns, categories=cats)
    _quiet_index(coco)
    with_objects = {a['image_id'] for a in kept_anns}
    by_id = {c['id']: c['name'] for c in cats}
    return CocoSet(
        annotations=annotations, images=images, coco=coco, class_names=[str(by_id[c]) for c in category_ids],
        category_ids=category_ids, image_ids=sorted(kept_images), skipped={k: len(v) for k, v in problems.items()},
        negatives=len(kept_images) - len(with_objects & set(kept_images)))


def _quiet_index(coco: Any) -> None:
    """`coco.createIndex()` without its progress prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()


class _CocoImages(CocoDetection):
    """torchvision's CocoDetection over a checked `CocoSet` (rather than a file read again unchecked)."""

    def __init__(self, coco_set: CocoSet):
        VisionDataset.__init__(self, str(coco_set.images))
        self.coco = coco_set.coco
        self.ids = list(coco_set.image_ids)


class DetectionSamples(ReadableImages):
    """(image tensor in 0..1, target, skipped) samples of a `CocoSet` for torchvision's detectors.

    The target holds `boxes` (x1, y1, x2, y2), `labels` (`first_label` .. `first_label` + K - 1: 1 for
    the R-CNNs, whose label 0 is the background, else 0), `image_id` and, with `masks`, the instance masks.
    An index may come with a seed (`(index, seed)`, see `ResumableSampler`) for the random flip. An
    unreadable image is logged and replaced by the next readable one (`skipped` counts those passed over),
    as `ReadableImages` does. The engine's `train_loader` hands out indices with seeds, so that a resumed
    epoch sees the samples, flipped the same way, that the interrupted one would have.
    """

    def __init__(self, coco_set: CocoSet, masks: bool = False, hflip: float = 0.0, strict: bool = False,
                 first_label: int = 1):
        keys = {'image_id', 'boxes', 'labels'} | ({'masks'} if masks else set())
        flip = [v2.RandomHorizontalFlip(hflip)] if hflip > 0 else []
        super().__init__(wrap_dataset_for_transforms_v2(_CocoImages(coco_set), target_keys=keys),
                         v2.Compose([v2.ToImage(), *flip, v2.ToDtype(torch.float32, scale=True)]), strict)
        self.coco_set = coco_set
        self.source = str(coco_set.annotations)
        self.masks = masks
        self.label_of = {c: i + first_label for i, c in enumerate(coco_set.category_ids)}

    def name(self, index: int) -> str:
        image_id = self.coco_set.image_ids[index]
        return str(self.coco_set.images / self.coco_set.coco.imgs[image_id]['file_name'])

    def _target(self, index: int, image: Any, target: Dict[str, Any]) -> Dict[str, Any]:
        from torchvision import tv_tensors
        height, width = image.height, image.width
        if 'boxes' not in target:  # an image without objects: the wrapper gives its id alone
            target = dict(target, boxes=tv_tensors.BoundingBoxes(torch.zeros(0, 4), format='XYXY',
                                                                 canvas_size=(height, width)),
                          labels=torch.zeros(0, dtype=torch.int64))
            if self.masks:
                target['masks'] = tv_tensors.Mask(torch.zeros(0, height, width, dtype=torch.uint8))
        target['labels'] = torch.tensor([self.label_of[int(c)] for c in target['labels']], dtype=torch.int64)
        target['image_id'] = self.coco_set.image_ids[index]
        return target

    def prepare(self, index: int, image: Any, target: Dict[str, Any]) -> Tuple[torch.Tensor, Dict[str, Any]]:
        image, target = self.transform(image, self._target(index, image, target))
        target['boxes'] = target['boxes'].as_subclass(torch.Tensor).float()
        if self.masks:
            target['masks'] = target['masks'].as_subclass(torch.Tensor)
        return image.as_subclass(torch.Tensor), target


Batch = Tuple[List[torch.Tensor], List[Dict[str, Any]], List[int]]


def collate(batch: Sequence[Tuple[torch.Tensor, Dict[str, Any], int]]) -> Batch:
    """(images, targets, unreadable images each sample stands in for): lists, as images differ in size."""
    images, targets, skipped = zip(*batch)
    return list(images), list(targets), list(skipped)
