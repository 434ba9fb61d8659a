"""COCO evaluation with pycocotools: box (and mask) AP and AR, the standard summary, a results JSON.

`evaluate_detector` runs a torchvision detector over a loader of `DetectionSamples`, turns its outputs into
COCO results (boxes as [x, y, width, height] in the image's own pixels, labels back to category ids, masks
as RLE), gathers them to the first process under torchrun, and scores them there with `COCOeval`. The
metrics are COCO's twelve summary numbers per kind, named `bbox_AP`, `bbox_AP50`, ..., `segm_ARl`
(`metric_names`); as in COCO, a number is -1 where no ground-truth object falls in its area range.

`eval_command` is `cmtnet detect eval`: a detector rebuilt from its exported weights, scored on val images.
"""
import contextlib
import io
import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from ..checkpoints import atomic_write
from ..engine.data import eval_loader
from ..runtime import amp_dtype, autocast, distributed, inference_path
from .builders import DETECTION, HAS_BACKGROUND, detector_from_checkpoint, detector_in_precision
from .data import CocoSet, DetectionSamples, collate, data_paths, read_coco
from .options import DetectEvalOptions

__all__ = ['SUMMARY_NAMES', 'coco_evaluate', 'eval_command', 'evaluate_detector', 'gather_to_first', 'iou_types',
           'metric_names', 'to_coco_results']

SUMMARY_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')


def iou_types(detector: str) -> Tuple[str, ...]:
    """The kinds COCO scores for `detector`: boxes, and masks for Mask R-CNN."""
    return ('bbox', 'segm') if detector == 'maskrcnn' else ('bbox',)


def metric_names(iou_types: Iterable[str]) -> List[str]:
    """The metric names of the kinds `iou_types` ('bbox', 'segm'), in metrics.csv's order."""
    return [f'{kind}_{name}' for kind in iou_types for name in SUMMARY_NAMES]


def to_coco_results(outputs: Sequence[Dict[str, torch.Tensor]], image_ids: Sequence[int],
                    category_ids: Sequence[int], first_label: int = 1) -> List[Dict[str, Any]]:
    """A detector's outputs (one dict per image, labels from `first_label`) as COCO result entries; masks as RLE."""
    from pycocotools import mask as coco_mask

    results = []
    for output, image_id in zip(outputs, image_ids):
        boxes = output['boxes'].float().cpu()
        boxes[:, 2:] -= boxes[:, :2]
        scores, labels = output['scores'].float().cpu().tolist(), output['labels'].cpu().tolist()
        rles = None
        if 'masks' in output:
            binary = (output['masks'][:, 0] > 0.5).cpu().numpy().astype(np.uint8)
            rles = coco_mask.encode(np.asfortranarray(binary.transpose(1, 2, 0))) if len(binary) else []
        for i, (box, score, label) in enumerate(zip(boxes.tolist(), scores, labels)):
            entry = {'image_id': int(image_id), 'category_id': int(category_ids[label - first_label]),
                     'bbox': [round(v, 2) for v in box], 'score': round(score, 5)}
            if rles is not None:
                entry['segmentation'] = {'size': list(rles[i]['size']), 'counts': rles[i]['counts'].decode('ascii')}
            results.append(entry)
    return results


def gather_to_first(items: List[Any]) -> List[Any]:
    """All processes' lists joined on the first process (others get []); the list itself without torchrun."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    gathered: Optional[List[List[Any]]] = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(items, gathered, dst=0)
    return [x for part in gathered for x in part] if gathered is not None else []


def coco_evaluate(coco_gt: Any, results: List[Dict[str, Any]], iou_types: Sequence[str] = ('bbox',),
                  image_ids: Optional[Sequence[int]] = None) -> Tuple[Dict[str, float], str]:
    """(metrics, COCO's summary text: a heading and twelve lines per kind) of `results` against `coco_gt`,
    over `image_ids` (default: all of its images)."""
    from pycocotools.cocoeval import COCOeval

    metrics, text = {}, []
    for kind in iou_types:
        if not results:  # pycocotools cannot load an empty result list: no detections score 0
            metrics.update({f'{kind}_{n}': 0.0 for n in SUMMARY_NAMES})
            text.append(f'{kind}: no detections, every AP and AR is 0')
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            coco_dt = coco_gt.loadRes([dict(r) for r in results])  # loadRes adds fields to its entries
            evaluator = COCOeval(coco_gt, coco_dt, kind)
            if image_ids is not None:
                evaluator.params.imgIds = sorted(image_ids)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        lines = [line for line in out.getvalue().splitlines() if line.startswith(' Average')]
        text.append(f'{kind}:\n' + '\n'.join(lines))
        metrics.update({f'{kind}_{n}': float(v) for n, v in zip(SUMMARY_NAMES, evaluator.stats)})
    return metrics, '\n'.join(text)


@torch.no_grad()
def evaluate_detector(
        model: nn.Module,
        loader: Iterable,
        coco_set: CocoSet,
        iou_types: Sequence[str],
        device: torch.device,
        amp: Optional[torch.dtype] = None,
        first_label: int = 1,
) -> Tuple[Dict[str, float], str, List[Dict[str, Any]]]:
    """(metrics, summary text, COCO results) of `model` over `loader`, the same on every process.

    Each process predicts its shard; the results are gathered and scored on the first process and the
    metrics and summary broadcast back (the results themselves stay on the first process).
    """
    was_training = model.training
    model.eval()
    results, seen = [], []
    for images, targets, skipped in loader:
        keep = [i for i, s in enumerate(skipped) if not s]  # a stand-in is scored at its own turn
        if not keep:
            continue
        with autocast(device, amp):
            outputs = model([images[i].to(device, non_blocking=True) for i in keep])
        ids = [targets[i]['image_id'] for i in keep]
        results += to_coco_results(outputs, ids, coco_set.category_ids, first_label)
        seen += ids
    model.train(was_training)
    results, seen = gather_to_first(results), gather_to_first(seen)
    payload: List[Any] = [None]
    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        payload = [coco_evaluate(coco_set.coco, results, iou_types, image_ids=seen)]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(payload, src=0)
    metrics, summary = payload[0]
    return metrics, summary, results


def eval_command(options: DetectEvalOptions) -> Dict[str, float]:
    """Print the COCO summary of a checkpoint on val images and write coco_results.json; the metrics."""
    o = options
    categories = DETECTION.meta(o.checkpoint)['category_ids']
    checkpoint = Path(o.checkpoint)
    images, annotations = data_paths(o, splits=('val',))['val']
    val_set = read_coco(annotations, images, strict=o.strict, categories=categories)
    model, meta = detector_from_checkpoint(checkpoint, min_size=o.min_size, max_size=o.max_size)
    first_label = 1 if HAS_BACKGROUND[meta['detector']] else 0
    with distributed(o.device) as p:
        model = detector_in_precision(model, o.precision, p.device)
        samples = DetectionSamples(val_set, strict=o.strict, first_label=first_label)
        loader = eval_loader(samples, o.batch_size, p.rank, p.world_size, o.workers, collate_fn=collate)
        metrics, summary, results = evaluate_detector(
            model.to(p.device), loader, val_set, iou_types(meta['detector']), p.device, amp_dtype(o.amp, p.device),
            first_label)
        if p.is_main:
            output = Path(o.output) if o.output else checkpoint.parent
            output.mkdir(parents=True, exist_ok=True)
            atomic_write(output / 'coco_results.json', lambda f: f.write(json.dumps(results).encode()))
            print(f'{meta["detector"]} on {meta["model"]} in {inference_path(o.precision, p.device)}, {checkpoint} on '
                  f'{val_set.describe()}')
            print(summary)
            print(f'COCO results: {output / "coco_results.json"}')
    return metrics
