"""Segmentations of image files: a colour overlay and a label mask per image.

For each image, `DIR/overlays/<name>.png` is the image with every class's pixels tinted in its colour (one
fixed colour per class), and `DIR/masks/<name>.png` the predicted labels at the image's size: a
single-channel PNG (palette mode, the overlay's colours) whose value is the class index, as the masks of
the generic training layout are. Both carry the same name, made from the image's path below the folder
that holds all the inputs (`x.png` for `photos/x.jpg`; `a_x.png` and `b_x.png` for `a/x.jpg` and
`b/x.jpg`; see `engine.data.output_names`), so that no two images share one. An image that cannot be read
is named in a warning and left out; the others are segmented.

`predict_command` is `cmtnet segment predict`: a segmenter rebuilt from its exported weights, on image files.
With `--json` it prints, per image, the Hugging Face Inference API's image-segmentation answer
(`segments_json`: per class present, its mean score and its mask as a base64 PNG), exactly what `cmtnet serve`
answers for the same file.
"""
import base64
import colorsys
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch
import torch.nn as nn
from PIL import Image
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_segmentation_masks

from ..engine.data import find_images, readable_files
from ..errors import InputError
from ..runtime import amp_dtype, autocast, distributed, is_main_process
from .evaluate import Protocol
from .models import SEGMENTATION, segmenter_from_checkpoint, segmenter_in_precision
from .options import SegmentPredictOptions

__all__ = ['class_colours', 'overlay', 'predict_command', 'predict_files', 'segment_scores', 'segments_json']

_SHOWN = 3  # classes named per image in the printed line


def class_colours(num_classes: int) -> List[tuple]:
    """A distinct, fixed RGB colour per class: hues a golden-ratio step apart, two alternating lightnesses."""
    colours = []
    for c in range(num_classes):
        hue = (c * 0.618033988749895) % 1.0
        r, g, b = colorsys.hls_to_rgb(hue, 0.45 if c % 2 else 0.6, 0.85)
        colours.append((round(255 * r), round(255 * g), round(255 * b)))
    return colours


def overlay(image: torch.Tensor, labels: torch.Tensor, colours: Sequence[tuple], alpha: float = 0.5) -> torch.Tensor:
    """`image` (uint8, 3xHxW) with each class's pixels of `labels` (HxW) tinted in its colour."""
    present = labels.unique().tolist()
    masks = torch.stack([labels == c for c in present])
    return draw_segmentation_masks(image, masks, alpha=alpha, colors=[colours[c] for c in present])


def _label_png(labels: torch.Tensor, colours: Sequence[tuple]) -> Image.Image:
    mask = Image.fromarray(labels.to(torch.uint8).numpy()).convert('P')
    mask.putpalette([v for colour in colours for v in colour])
    return mask


@torch.no_grad()
def segment_scores(model: nn.Module, image: torch.Tensor, protocol: Protocol, num_classes: int,
                   device: torch.device, amp: Any = None) -> torch.Tensor:
    """Class scores (K, H, W, on the CPU) of a uint8 (3, H, W) image, at its size, under `protocol`."""
    with autocast(device, amp):
        scores = protocol.scores(model, F.to_dtype(image, torch.float32, scale=True).to(device), num_classes)
    return scores.float().cpu()


def _mask_png(mask: torch.Tensor) -> str:
    buffer = io.BytesIO()
    Image.fromarray(mask.to(torch.uint8).mul(255).numpy(), mode='L').save(buffer, format='PNG')
    return base64.b64encode(buffer.getvalue()).decode('ascii')


def segments_json(scores: torch.Tensor, names: Sequence[str]) -> List[Dict[str, Any]]:
    """One image's class scores (K, H, W) as the Hugging Face Inference API answers image segmentation: per
    class present in the labels (the argmax), most pixels first, its mean score over its pixels and its mask
    (a base64 PNG of the image's size, 255 on the class)."""
    labels = scores.argmax(0)
    counts = torch.bincount(labels.reshape(-1), minlength=len(names))
    segments = []
    for c in counts.argsort(descending=True, stable=True).tolist():
        if counts[c]:
            mask = labels == c
            segments.append({'label': names[c], 'score': float(scores[c][mask].mean()), 'mask': _mask_png(mask)})
    return segments


@torch.no_grad()
def predict_files(model: nn.Module, meta: Dict[str, Any], files: Sequence[Path], output: Path,
                  protocol: Protocol, device: torch.device, amp: Any = None,
                  as_json: bool = False) -> List[Dict[str, Any]]:
    """Segment each readable image file, writing `output`/overlays/<name>.png and `output`/masks/<name>.png;
    an unreadable file is named in a warning and left out. Returns, per image, the files written and the
    share of its pixels per class (and, `as_json`, its `segments_json` as 'predictions')."""
    num_classes, names = meta['num_classes'], meta['class_names']
    colours = class_colours(num_classes)
    (output / 'overlays').mkdir(parents=True, exist_ok=True)
    (output / 'masks').mkdir(parents=True, exist_ok=True)
    model = model.to(device).eval()
    found = []
    for path, name, image in readable_files(files):
        scores = segment_scores(model, image, protocol, num_classes, device, amp)
        labels = scores.argmax(0)
        F.to_pil_image(overlay(image, labels, colours)).save(output / 'overlays' / name)
        _label_png(labels, colours).save(output / 'masks' / name)
        counts = torch.bincount(labels.reshape(-1), minlength=num_classes)
        shares = {names[c]: float(counts[c]) / labels.numel() for c in counts.argsort(descending=True).tolist()
                  if counts[c]}
        found.append({'image': str(path), 'overlay': str(output / 'overlays' / name),
                      'mask': str(output / 'masks' / name), 'classes': shares})
        if as_json:
            found[-1]['predictions'] = segments_json(scores, names)
    return found


def predict_command(options: SegmentPredictOptions) -> List[Dict[str, Any]]:
    """Write the overlay and label mask of each image; per image, the files and the classes' shares."""
    o = options
    meta = SEGMENTATION.meta(o.checkpoint)  # a missing or foreign checkpoint is named before the images
    protocol = Protocol.of(meta, o.slide, o.flip, o.scales)
    if not o.inputs:
        raise InputError('give at least one image file or folder of images to segment')
    files = find_images(o.inputs)
    model, meta = segmenter_from_checkpoint(o.checkpoint)
    with distributed(o.device) as p:
        model = segmenter_in_precision(model, o.precision, p.device)
        if not is_main_process():
            return []
        found = predict_files(model, meta, files, Path(o.output), protocol, p.device, amp_dtype(o.amp, p.device),
                              as_json=o.json)
    for item in found:
        if o.json:
            print(json.dumps({'image': item['image'], 'predictions': item['predictions']}))
            continue
        shown = ', '.join(f'{c} {100 * share:.0f}%' for c, share in list(item['classes'].items())[:_SHOWN])
        print(f'{item["image"]}: {shown}')
    if not o.json:
        print(f'overlays in {Path(o.output) / "overlays"}, label masks in {Path(o.output) / "masks"}')
    return found
