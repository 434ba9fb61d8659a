"""Prediction: the top-k classes of image files, and `cmtnet predict`.

    cmtnet predict --checkpoint runs/demo/model.safetensors digit.png more_digits/
    cmtnet predict --checkpoint cmt_small.pth --model cmt_s cat.jpg
    cmtnet predict --checkpoint cmt_s_int8.pt2 cat.jpg                 # an int8 program (cmtnet quantize)
    cmtnet predict --checkpoint runs/demo/model.safetensors --json digit.png   # a JSON line per image
    cmtnet predict --checkpoint runs/demo/model.safetensors --cam cams/ digit.png  # class activation maps

Labels are the class names stored with our weights (the dataset's folders), the ImageNet class names for
a 1000-class model without stored names, and class indices otherwise. `--json` prints, per image, the
Hugging Face Inference API's image-classification answer (`predictions_json`), exactly what `cmtnet serve`
answers for the same file.
"""
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from timm.data import ImageNetInfo

from ..engine.data import ImageFiles, ReadableImages, eval_loader, find_images, own_images
from ..errors import InputError
from ..runtime import amp_dtype, autocast, check_device, to_device
from .data import eval_transform
from .evaluate import load_for_inference
from .options import PredictOptions

__all__ = ['class_labels', 'predict', 'predict_command', 'predictions_json', 'top_classes']


def class_labels(num_classes: int, class_names: Optional[Sequence[str]] = None) -> List[str]:
    """Names for the classifier's outputs: the given ones, ImageNet's for 1000 classes, else indices."""
    if class_names is not None:
        return list(class_names)
    if num_classes == 1000:
        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(num_classes)]
    return [str(i) for i in range(num_classes)]


def top_classes(logits: torch.Tensor, labels: Sequence[str], top_k: int) -> List[List[Tuple[str, float]]]:
    """[(label, probability), ...] best first, the `top_k` of each row of `logits`."""
    probs, indices = logits.float().softmax(dim=-1).topk(min(top_k, len(labels)), dim=-1)
    return [[(labels[c], q) for c, q in zip(i, p)] for p, i in zip(probs.tolist(), indices.tolist())]


def predictions_json(top: Sequence[Tuple[str, float]]) -> List[Dict[str, Any]]:
    """One image's top classes as the Hugging Face Inference API answers image classification."""
    return [{'label': label, 'score': score} for label, score in top]


@torch.no_grad()
def predict(
        model: torch.nn.Module,
        paths: Sequence[Path],
        transform: Callable,
        labels: Sequence[str],
        top_k: int = 5,
        batch_size: int = 32,
        device: torch.device = torch.device('cpu'),
        amp: Optional[torch.dtype] = None,
        channels_last: bool = False,
) -> List[Tuple[Path, List[Tuple[str, float]]]]:
    """(path, [(label, probability), ...] best first) for each readable image; unreadable ones are left out
    with a warning."""
    model.eval()
    loader = eval_loader(ReadableImages(ImageFiles(paths), transform), batch_size, workers=0)
    results = []
    for start, batch in zip(range(0, len(paths), batch_size), loader):
        images, _, kept = own_images(batch)
        if not len(images):
            continue
        with autocast(device, amp):
            logits = model(to_device(images, device, channels_last))
        kept_paths = [p for p, k in zip(paths[start:start + batch_size], kept.tolist()) if k]
        results.extend(zip(kept_paths, top_classes(logits, labels, top_k)))
    return results


def predict_command(options: PredictOptions) -> List[Tuple[Path, List[Tuple[str, float]]]]:
    """`cmtnet predict`: print each image's path, then its top-k labels with probabilities (or, with `--json`,
    a JSON object per image); with `--cam DIR`, write each image's class activation map there."""
    if not options.inputs:
        raise InputError('give at least one image file or folder of images')
    if options.top_k < 1:
        raise InputError(f'--top-k must be at least 1, got {options.top_k}')
    paths = find_images(options.inputs)
    device = torch.device(check_device(options.device))
    setup = load_for_inference(options, device)
    labels = class_labels(setup['num_classes'], setup['class_names'])
    transform = eval_transform(setup['img_size'], setup['crop_pct'], setup['interpolation'])
    results = predict(setup['model'], paths, transform, labels, options.top_k, options.batch_size, device,
                      amp_dtype(options.amp, device), options.channels_last)
    for path, top in results:
        if options.json:
            print(json.dumps({'image': str(path), 'predictions': predictions_json(top)}))
            continue
        print(path)
        for label, prob in top:
            print(f'  {100 * prob:6.2f}%  {label}')
    if options.cam:
        from .cam import write_cams
        written = write_cams(options, [path for path, _ in results], setup, labels)
        if not options.json:
            print(f'{len(written)} class activation map(s) in {options.cam}')
    return results
