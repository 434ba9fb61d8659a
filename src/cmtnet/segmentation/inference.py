"""Inference as the ADE20K protocol runs it: resize, whole-image or sliding-window logits, optional
flips and scales, scores at the original size.

`segment(model, image)` takes one image (3, H, W) in 0..1 at its own size and returns class scores
(K, H, W) at that size, which evaluation compares with the mask and prediction turns into labels:

- the image is resized, aspect kept, to fit the base scale 2048x512 (long, short side; the short side
  becomes 512 for ADE20K's images), times each ratio of `scales` (multi-scale testing: e.g.
  0.5, 0.75, ..., 1.75);
- the model runs on the whole resized image, or with `slide`, on `crop` x `crop` windows `stride` apart
  (mmseg's slide mode: 512 and 341), the logits of overlapping windows averaged;
- with `flip`, the mirrored image too;
- the logits are resized bilinearly to the original size and softmax scores averaged over the scales and
  flips (with one scale and no flip, the argmax is that of the logits).
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import BASE_SCALE, CROP_SIZE, rescaled_size

__all__ = ['SLIDE_STRIDE', 'segment', 'slide_logits']

SLIDE_STRIDE = 341  # mmseg's ADE20K slide stride for 512 crops


def _windows(length: int, crop: int, stride: int) -> range:
    """Start offsets of windows of `crop` along `length`, `stride` apart, the last one ending at `length`."""
    return range(max(length - crop + stride - 1, 0) // stride + 1)


def slide_logits(model: nn.Module, images: torch.Tensor, num_classes: int, crop: int = CROP_SIZE,
                 stride: int = SLIDE_STRIDE, window_batch: int = 8) -> torch.Tensor:
    """Logits (N, K, H, W) of `images` (N, 3, H, W) from `crop`-sized windows `stride` apart, overlaps
    averaged; every pixel is covered. Windows run `window_batch` at a time."""
    n, _, height, width = images.shape
    boxes = []
    for row in _windows(height, crop, stride):
        for col in _windows(width, crop, stride):
            y1, x1 = min(row * stride + crop, height), min(col * stride + crop, width)
            boxes.append((max(y1 - crop, 0), y1, max(x1 - crop, 0), x1))
    logits = images.new_zeros(n, num_classes, height, width)
    counts = images.new_zeros(1, 1, height, width)
    for i in range(0, len(boxes), window_batch):
        chunk = boxes[i:i + window_batch]
        crops = torch.cat([images[..., y0:y1, x0:x1] for y0, y1, x0, x1 in chunk])
        out = model(crops).float().split(n)
        for (y0, y1, x0, x1), window in zip(chunk, out):
            logits[..., y0:y1, x0:x1] += window
            counts[..., y0:y1, x0:x1] += 1
    return logits / counts


@torch.no_grad()
def segment(
        model: nn.Module,
        image: torch.Tensor,
        num_classes: int,
        *,
        scale: Optional[Tuple[int, int]] = BASE_SCALE,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        slide: bool = False,
        crop: int = CROP_SIZE,
        stride: int = SLIDE_STRIDE,
) -> torch.Tensor:
    """Class scores (K, H, W) of one image (3, H, W, values 0..1) at its own size; see the module docstring.
    `scale=None` runs the image at its own size (times `scales`)."""
    height, width = image.shape[-2:]
    total = None
    for ratio in scales:
        if scale is not None:
            size = rescaled_size(height, width, scale, ratio)
        else:
            size = (max(1, round(height * ratio)), max(1, round(width * ratio)))
        x = image[None]
        if size != (height, width):
            x = F.interpolate(x, size=size, mode='bilinear', align_corners=False)
        for flipped in ((False, True) if flip else (False,)):
            view = x.flip(-1) if flipped else x
            logits = slide_logits(model, view, num_classes, crop, stride) if slide else model(view).float()
            if flipped:
                logits = logits.flip(-1)
            logits = F.interpolate(logits, size=(height, width), mode='bilinear', align_corners=False)
            scores = logits.softmax(1)
            total = scores if total is None else total + scores
    return total[0] / (len(scales) * (2 if flip else 1))
