"""Prediction: the top-k classes of image files, and the `cmtnet predict` command.

    cmtnet predict --checkpoint runs/demo/model.safetensors digit.png more_digits/
    cmtnet predict --checkpoint cmt_small.pth --model cmt_s cat.jpg

Labels are the class names stored with our weights (the dataset's folders), the ImageNet class names for
a 1000-class model without stored names, and class indices otherwise.
"""
import argparse
from functools import partial
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from timm.data import ImageNetInfo

from .checkpointing import create_model
from .data import ImageFiles, ReadableImages, eval_loader, eval_transform, find_images
from .evaluate import add_model_options, amp_dtype, autocast, default_device, model_setup
from .options import HelpFormatter, InputError, resolve, run_reporting_errors, track_defaults

__all__ = ['add_parser', 'class_labels', 'predict']


def class_labels(num_classes: int, class_names: Optional[Sequence[str]] = None) -> List[str]:
    """Names for the classifier's outputs: the given ones, ImageNet's for 1000 classes, else indices."""
    if class_names is not None:
        return list(class_names)
    if num_classes == 1000:
        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(num_classes)]
    return [str(i) for i in range(num_classes)]


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
) -> List[Tuple[Path, List[Tuple[str, float]]]]:
    """(path, [(label, probability), ...] best first) for each readable image; unreadable ones are left out
    with a warning."""
    model.eval()
    top_k = min(top_k, len(labels))
    loader = eval_loader(ReadableImages(ImageFiles(paths), transform), batch_size, workers=0)
    results = []
    for start, (images, _, skipped) in zip(range(0, len(paths), batch_size), loader):
        # an unreadable image's place holds a copy of the next readable one: leave it out
        keep = skipped == 0
        if not keep.any():
            continue
        with autocast(device, amp):
            logits = model(images[keep].to(device))
        probs, indices = logits.float().softmax(dim=-1).topk(top_k, dim=-1)
        kept = [p for p, k in zip(paths[start:start + batch_size], keep.tolist()) if k]
        for path, p, i in zip(kept, probs.tolist(), indices.tolist()):
            results.append((path, [(labels[c], q) for c, q in zip(i, p)]))
    return results


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `predict` subcommand."""
    parser = subparsers.add_parser(
        'predict', help='top-k classes of image files', formatter_class=HelpFormatter,
        description='Print the top-k classes, with probabilities, of image files and of the images in folders.')
    parser.add_argument('inputs', nargs='*', metavar='IMAGE_OR_FOLDER', help='image files and folders of images')
    add_model_options(parser)
    parser.add_argument('--top-k', type=int, default=5, metavar='K', help='classes to show per image')
    track_defaults(parser)
    parser.set_defaults(func=partial(run, parser=parser))
    return parser


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    return run_reporting_errors('predict', lambda: predict_command(resolve(parser, args)))


def predict_command(options: argparse.Namespace) -> List[Tuple[Path, List[Tuple[str, float]]]]:
    """`cmtnet predict`: print each image's path, then its top-k labels with probabilities."""
    if not options.inputs:
        raise InputError('give at least one image file or folder of images')
    if options.top_k < 1:
        raise InputError(f'--top-k must be at least 1, got {options.top_k}')
    paths = find_images(options.inputs)
    setup = model_setup(options)
    device = torch.device(options.device or default_device())
    model = create_model(setup['model'], options.checkpoint, num_classes=setup['num_classes'],
                         img_size=setup['img_size']).to(device)
    if options.channels_last:
        model = model.to(memory_format=torch.channels_last)
    labels = class_labels(setup['num_classes'], setup['class_names'])
    transform = eval_transform(setup['img_size'], setup['crop_pct'], setup['interpolation'])
    results = predict(model, paths, transform, labels, options.top_k, options.batch_size, device,
                      amp_dtype(options.amp, device))
    for path, top in results:
        print(path)
        for label, prob in top:
            print(f'  {100 * prob:6.2f}%  {label}')
    return results
