"""Detections on image files: a PNG per image with boxes, labels, scores (and masks) drawn, and a JSON.

Drawing is torchvision's (`draw_bounding_boxes`, `draw_segmentation_masks`), one colour per class. The JSON
(`detections.json`) lists, per image, every detection at or above the score threshold: box
[x1, y1, x2, y2] in the image's pixels, class name, category id and score (and the mask's area).

Each drawing is named after its image's path below the folder that holds all the inputs (`x.png` for
`photos/x.jpg`; `a_x.png` and `b_x.png` for `a/x.jpg` and `b/x.jpg`; see `engine.data.output_names`), so
that no two images share one. An image that cannot be read is named in a warning and left out; the
others are drawn.

`predict_command` is `cmtnet detect predict`: a detector rebuilt from its exported weights, on image files.
With `--json` it prints, per image, the Hugging Face Inference API's object-detection answer
(`detections_json`), exactly what `cmtnet serve` answers for the same file.
"""
import json
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch
import torch.nn as nn
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from ..checkpoints import atomic_write
from ..engine.data import find_images, readable_files
from ..errors import InputError
from ..runtime import amp_dtype, autocast, distributed, is_main_process
from .builders import DETECTION, HAS_BACKGROUND, detector_from_checkpoint, detector_in_precision
from .options import DetectPredictOptions

__all__ = ['detect', 'detection_entries', 'detections_json', 'draw_detections', 'predict_command', 'predict_files']

_PALETTE = ['#e6194b', '#3cb44b', '#ffe119', '#4363d8', '#f58231', '#911eb4', '#46f0f0', '#f032e6', '#bcf60c',
            '#fabebe', '#008080', '#e6beff', '#9a6324', '#800000', '#aaffc3', '#808000', '#000075', '#808080']


def draw_detections(image: torch.Tensor, output: Dict[str, torch.Tensor], class_names: Sequence[str],
                    first_label: int) -> torch.Tensor:
    """`image` (uint8, 3xHxW) with the `output`'s masks, boxes and 'class score' labels drawn."""
    labels = output['labels'].tolist()
    colours = [_PALETTE[(label - first_label) % len(_PALETTE)] for label in labels]
    if 'masks' in output and len(labels):
        image = draw_segmentation_masks(image, output['masks'][:, 0] > 0.5, alpha=0.45, colors=colours)
    if len(labels):
        scores = output['scores'].tolist()
        text = [f'{class_names[label - first_label]} {score:.2f}' for label, score in zip(labels, scores)]
        width = max(1, round(max(image.shape[1:]) / 300))
        image = draw_bounding_boxes(image, output['boxes'], text, colors=colours, width=width)
    return image


@torch.no_grad()
def detect(model: nn.Module, images: Sequence[torch.Tensor], score_threshold: float, device: torch.device,
           amp: Any = None) -> List[Dict[str, torch.Tensor]]:
    """The detections (on the CPU, float32) scored at least `score_threshold` of uint8 (3, H, W) `images`, in
    one forward: images of one size batch exactly as each alone would run."""
    with autocast(device, amp):
        results = model([F.to_dtype(image, torch.float32, scale=True).to(device) for image in images])
    kept = []
    for result in results:
        keep = result['scores'] >= score_threshold
        kept.append({k: v[keep].float().cpu() if k != 'labels' else v[keep].cpu() for k, v in result.items()})
    return kept


def detection_entries(result: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One image's detections as detections.json lists them: box [x1, y1, x2, y2] in its pixels, class name,
    category id, score (and the mask's area)."""
    first_label = 1 if HAS_BACKGROUND[meta['detector']] else 0
    class_names, category_ids = meta['class_names'], meta['category_ids']
    entries = []
    for i, (box, label, score) in enumerate(zip(result['boxes'].tolist(), result['labels'].tolist(),
                                                result['scores'].tolist())):
        entry = {'box': [round(v, 1) for v in box], 'class': class_names[label - first_label],
                 'category_id': category_ids[label - first_label], 'score': round(score, 4)}
        if 'masks' in result:
            entry['mask_area'] = int((result['masks'][i, 0] > 0.5).sum())
        entries.append(entry)
    return entries


def detections_json(entries: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One image's `detection_entries` as the Hugging Face Inference API answers object detection."""
    return [{'label': e['class'], 'score': e['score'], 'box': dict(zip(('xmin', 'ymin', 'xmax', 'ymax'), e['box']))}
            for e in entries]


@torch.no_grad()
def predict_files(model: nn.Module, meta: Dict[str, Any], files: Sequence[Path], output: Path,
                  score_threshold: float, device: torch.device, amp: Any = None) -> List[Dict[str, Any]]:
    """Detect objects in each readable image file, writing `output`/<name>.png (a name of its own, see
    `output_names`) and `output`/detections.json; an unreadable file is named in a warning and left out."""
    if not 0 <= score_threshold <= 1:
        raise InputError(f'--score-threshold must be in [0, 1], got {score_threshold}')
    first_label = 1 if HAS_BACKGROUND[meta['detector']] else 0
    output.mkdir(parents=True, exist_ok=True)
    model = model.to(device).eval()
    found = []
    for path, drawn_name, image in readable_files(files):
        [result] = detect(model, [image], score_threshold, device, amp)
        drawn = draw_detections(image, result, meta['class_names'], first_label)
        name = output / drawn_name
        F.to_pil_image(drawn).save(name)
        found.append({'image': str(path), 'drawn': str(name), 'detections': detection_entries(result, meta)})
    atomic_write(output / 'detections.json', lambda f: f.write(json.dumps(found, indent=1).encode()))
    return found


def predict_command(options: DetectPredictOptions) -> List[Dict[str, Any]]:
    """Draw the detections of each image and write detections.json; the detections."""
    o = options
    DETECTION.meta(o.checkpoint)  # a missing or foreign checkpoint is named before the images are looked at
    if not o.inputs:
        raise InputError('give at least one image file or folder of images to predict')
    files = find_images(o.inputs)
    model, meta = detector_from_checkpoint(o.checkpoint, min_size=o.min_size, max_size=o.max_size)
    with distributed(o.device) as p:
        model = detector_in_precision(model, o.precision, p.device)
        if not is_main_process():
            return []
        amp = amp_dtype(o.amp, p.device)
        found = predict_files(model, meta, files, Path(o.output), o.score_threshold, p.device, amp)
    for item in found:
        if o.json:
            print(json.dumps({'image': item['image'], 'predictions': detections_json(item['detections'])}))
            continue
        shown = ', '.join(f'{d["class"]} {d["score"]:.2f}' for d in item['detections'][:5]) or 'nothing'
        more = f' (+{len(item["detections"]) - 5})' if len(item['detections']) > 5 else ''
        print(f'{item["image"]}: {shown}{more}')
    if not o.json:
        print(f'drawn images and detections.json in {o.output}')
    return found
