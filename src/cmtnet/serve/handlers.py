"""What the service runs for each kind of checkpoint: the model, prepared once, and its three steps.

A handler is built from `--checkpoint` alone (its metadata says the task) and gives the service:
- `run(batch)`: the pictures of a batch (RGB, `uploads.decode_image`) as the model takes them (`prepare`),
  one forward over them (`run_prepared`), and each request's answer in the Hugging Face Inference API's
  JSON for the task. All of it runs on the model's one thread: torch work started from other threads
  would start thread teams of their own, which compete with the model's for the same cores;
- `info`: what the page and `/info` show (task, model, labels, whether activation maps can be drawn).

The preprocessing and the JSON are those of `cmtnet predict`, `detect predict` and `segment predict`
(the same functions), so that the service answers what those commands print with `--json`.
"""
import base64
import io
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from PIL import Image
from torchvision.transforms.v2 import functional as F

from ..checkpoints import checkpoint_info
from ..int8_program import is_quantized_file
from ..classification.data import eval_transform
from ..classification.evaluate import load_for_inference
from ..classification.options import ModelOptions
from ..classification.predict import class_labels, predictions_json, top_classes
from ..errors import InputError
from ..runtime import check_device, folded_for, prepare_model, to_device

__all__ = ['Handler', 'Params', 'load_handler']


@dataclass(frozen=True)
class Params:
    """A request's query parameters: `top_k` (classification) and `threshold` (detection)."""
    top_k: int = 5
    threshold: float = 0.5


@dataclass
class Handler:
    """A model prepared for serving one task; see the module docstring."""
    task: str
    model: nn.Module
    device: torch.device
    info: Dict[str, Any]
    max_batch_size: int
    extra: Dict[str, Any] = field(default_factory=dict)

    def prepare(self, image: Image.Image) -> torch.Tensor:
        if self.task == 'image-classification':
            return self.extra['transform'](image)
        return F.pil_to_tensor(image)

    @torch.inference_mode()
    def run(self, batch: Sequence[Tuple[Image.Image, Params]]) -> List[Any]:
        return self.run_prepared([(self.prepare(image), params) for image, params in batch])

    @torch.inference_mode()
    def run_prepared(self, batch: Sequence[Tuple[torch.Tensor, Params]]) -> List[Any]:
        if self.task == 'image-classification':
            return self._classify(batch)
        if self.task == 'object-detection':
            return self._detect(batch)
        return self._segment(batch)

    def _classify(self, batch: Sequence[Tuple[torch.Tensor, Params]]) -> List[Any]:
        logits = self.model(to_device(torch.stack([image for image, _ in batch]), self.device, channels_last=True))
        top = top_classes(logits, self.info['labels'], max(p.top_k for _, p in batch))
        return [predictions_json(t[:p.top_k]) for t, (_, p) in zip(top, batch)]

    def _detect(self, batch: Sequence[Tuple[torch.Tensor, Params]]) -> List[Any]:
        from ..detection.predict import detect, detection_entries, detections_json
        answers: List[Any] = [None] * len(batch)
        # images of one size share a forward: torchvision pads a batch to its largest image, which would
        # change the detections of the smaller ones
        by_size: Dict[Tuple[int, ...], List[int]] = {}
        for i, (image, _) in enumerate(batch):
            by_size.setdefault(tuple(image.shape), []).append(i)
        for indices in by_size.values():
            threshold = min(batch[i][1].threshold for i in indices)
            results = detect(self.model, [batch[i][0] for i in indices], threshold, self.device)
            for i, result in zip(indices, results):
                keep = result['scores'] >= batch[i][1].threshold
                result = {k: v[keep] for k, v in result.items()}
                answers[i] = detections_json(detection_entries(result, self.extra['meta']))
        return answers

    def _segment(self, batch: Sequence[Tuple[torch.Tensor, Params]]) -> List[Any]:
        from ..segmentation.predict import segment_scores, segments_json
        meta, protocol = self.extra['meta'], self.extra['protocol']
        return [segments_json(segment_scores(self.model, image, protocol, meta['num_classes'], self.device),
                              meta['class_names']) for image, _ in batch]

    def warm_up(self) -> None:
        """Run the sizes of batch the service will run once, so that the first requests wait for no
        one-time work (kernel choice, compilation)."""
        side = self.info['img_size'] or 64
        image = Image.new('RGB', (side, side), (124, 116, 104))
        for n in self.warm_up_sizes:
            self.run([(image, Params())] * n)

    @property
    def warm_up_sizes(self) -> List[int]:
        """The batch sizes `warm_up` runs: a single image and, for classification, a full batch."""
        return sorted({1, self.max_batch_size}) if self.task == 'image-classification' else [1]

    def activation_map(self, image: Image.Image) -> Dict[str, Any]:
        """The Grad-CAM overlay of `image`'s top class, as a base64 PNG data URL (classification)."""
        maps = self.extra.get('cam')
        if maps is None:
            raise InputError(self.info['cam_unavailable'])
        drawn = maps.overlay(image)
        buffer = io.BytesIO()
        drawn.save(buffer, format='PNG')
        return {'image': 'data:image/png;base64,' + base64.b64encode(buffer.getvalue()).decode('ascii')}


def _compiled(model: nn.Module) -> nn.Module:
    return torch.compile(model, dynamic=False)


def _classifier(options: Any, device: torch.device) -> Handler:
    checkpoint = options.checkpoint
    quantized = is_quantized_file(checkpoint)
    model_options = ModelOptions(checkpoint=checkpoint, model=options.model, img_size=options.img_size,
                                 precision=options.precision, compile=True)
    setup = load_for_inference(model_options, device)
    model = setup['model']
    if not quantized:
        if options.precision == 'fp32':  # bf16 comes folded (runtime.inference_model)
            model = folded_for(model, device)
        model = prepare_model(model, device, channels_last=True).eval()
        if options.compile:
            model = _compiled(model)
    labels = class_labels(setup['num_classes'], setup['class_names'])
    transform = eval_transform(setup['img_size'], setup['crop_pct'], setup['interpolation'])
    extra: Dict[str, Any] = dict(transform=transform)
    unavailable = None
    if quantized:
        unavailable = f'{checkpoint} is an int8 program: activation maps need the float weights'
    else:
        from ..classification.cam import ActivationMaps, float_classifier
        extra['cam'] = ActivationMaps(float_classifier(checkpoint, setup), transform, setup['img_size'])
    info = dict(task='image-classification', model=setup['name'], img_size=setup['img_size'], labels=labels,
                precision='int8' if quantized else options.precision, cam=not quantized,
                cam_unavailable=unavailable)
    handler = Handler('image-classification', model, device, info, options.max_batch_size, extra)
    if quantized:  # the sizes the warm-up compiles run unpadded: a lone request is not padded to a full batch
        model.own_sizes = set(handler.warm_up_sizes)
    return handler


def _dense(options: Any, device: torch.device, task: str) -> Handler:
    if options.compile:
        raise InputError('--compile applies to classification checkpoints only')
    if task == 'detection':
        from ..detection.builders import detector_from_checkpoint, detector_in_precision
        model, meta = detector_from_checkpoint(options.checkpoint)
        model, extra = detector_in_precision(model, options.precision, device), dict(meta=meta)
        kind = 'object-detection'
    else:
        from ..segmentation.evaluate import Protocol
        from ..segmentation.models import segmenter_from_checkpoint, segmenter_in_precision
        model, meta = segmenter_from_checkpoint(options.checkpoint)
        model = segmenter_in_precision(model, options.precision, device)
        extra = dict(meta=meta, protocol=Protocol.of(meta))
        kind = 'image-segmentation'
    info = dict(task=kind, model=meta['model'], img_size=None, labels=list(meta['class_names']),
                precision=options.precision, cam=False, cam_unavailable=f'activation maps are drawn for '
                                                                        f'classification, not {task}')
    return Handler(kind, model.to(device).eval(), device, info, options.max_batch_size, extra)


def load_handler(options: Any) -> Handler:
    """The handler of `--checkpoint`: classification weights (ours, released ones with `--model`, or an int8
    program), or a detection or segmentation run's exported weights."""
    if not options.checkpoint:
        raise InputError('--checkpoint is required: the weights to serve')
    device = torch.device(check_device(options.device))
    task: Optional[str] = None
    if not is_quantized_file(options.checkpoint):
        _, meta = checkpoint_info(options.checkpoint)
        task = meta.get('task')
    if task in ('detection', 'segmentation'):
        return _dense(options, device, task)
    return _classifier(options, device)
