"""Evaluation: top-1 / top-5 accuracy, loss and a confusion matrix, and the `cmtnet eval` command.

    cmtnet eval --checkpoint runs/demo/model.safetensors                  # the digits test split
    cmtnet eval --checkpoint cmt_small.pth --model cmt_s --data /path/imagenet

Our exported weights carry the model name, input size and class names; a released checkpoint needs
`--model`. Under torchrun each process evaluates a shard and the counts are summed.
"""
import argparse
import contextlib
from functools import partial
from typing import Any, ContextManager, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from timm.utils import accuracy
from timm.utils.distributed import init_distributed_device_so

from .checkpointing import checkpoint_info, create_model
from .cmt import VARIANT_ARGS
from .data import ReadableImages, build_dataset, default_eval_split, eval_loader, eval_transform
from .options import HelpFormatter, InputError, resolve, run_reporting_errors, track_defaults

__all__ = ['add_model_options', 'add_parser', 'amp_dtype', 'autocast', 'default_device', 'evaluate', 'format_confusion', 'model_setup']

# a confusion matrix is printed for at most this many classes
MAX_CONFUSION_CLASSES = 20


def default_device() -> str:
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def amp_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for `--amp`: 'auto' is bfloat16 on CUDA (float16 where bfloat16 is unsupported)
    and full precision on CPU; float16 is for CUDA only."""
    if amp == 'auto':
        if device.type != 'cuda':
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == 'fp16' and device.type != 'cuda':
        raise InputError('--amp fp16 needs a CUDA device; on CPU use --amp bf16')
    return {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}[amp]


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> ContextManager:
    """Mixed precision in `dtype`, or nothing when `dtype` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _all_reduce(*tensors: torch.Tensor) -> None:
    if dist.is_available() and dist.is_initialized():
        for t in tensors:
            dist.all_reduce(t)


@torch.no_grad()
def evaluate(
        model: nn.Module,
        loader: DataLoader,
        num_classes: int,
        device: torch.device,
        amp: Optional[torch.dtype] = None,
        channels_last: bool = False,
) -> Dict[str, Any]:
    """Loss, top-1 and top-5 accuracy (in %), image count and confusion matrix of `model` on `loader`
    (batches of `ReadableImages`: unreadable images are left out and counted as `skipped`).

    Under torch.distributed the sums are reduced over the processes, which must each hold a shard.
    """
    model.eval()
    top_k = min(5, num_classes)
    # float64 sums on the device: no sync per batch, and no rounding over a large validation set
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # loss, top-1, top-k, count, skipped
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    for images, targets, skipped in loader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        skipped = skipped.to(device)
        sums[4] += skipped.sum()
        # an unreadable image's place holds a second copy of the next readable one: count each image once
        keep = skipped == 0
        logits, targets = logits[keep], targets[keep]
        n = targets.shape[0]
        if n == 0:
            continue
        acc1, acc_k = accuracy(logits, targets, topk=(1, top_k))
        sums[:4] += torch.stack([
            F.cross_entropy(logits, targets, reduction='sum').double(),
            acc1.double() * n / 100, acc_k.double() * n / 100,
            torch.tensor(n, dtype=torch.float64, device=device),
        ])
        confusion += torch.bincount(targets * num_classes + logits.argmax(1), minlength=num_classes ** 2)
    _all_reduce(sums, confusion)
    loss, correct1, correct_k, count, skipped = sums.tolist()
    count = max(count, 1.)
    return dict(
        loss=loss / count,
        top1=100 * correct1 / count,
        top5=100 * correct_k / count,
        count=int(count),
        correct=int(round(correct1)),
        skipped=int(skipped),
        confusion=confusion.view(num_classes, num_classes).cpu(),
    )


def format_confusion(confusion: torch.Tensor, class_names: Sequence[str]) -> str:
    """A confusion matrix as text: a row per true class, a column per predicted class."""
    names = [str(n)[:8] for n in class_names]
    width = max(5, max(len(n) for n in names), len(str(int(confusion.max()))))
    lines = ['confusion matrix (rows: true class, columns: predicted class)',
             ' ' * width + ' ' + ' '.join(n.rjust(width) for n in names)]
    for name, row in zip(names, confusion.tolist()):
        lines.append(name.rjust(width) + ' ' + ' '.join(str(v).rjust(width) for v in row))
    return '\n'.join(lines)


def model_setup(options: argparse.Namespace) -> Dict[str, Any]:
    """Model name, input size, crop, interpolation and class names for eval / predict: the options first,
    then the checkpoint's metadata, then the model's native defaults."""
    if not options.checkpoint:
        raise InputError('--checkpoint is required (on the command line or in the --config file)')
    num_classes, meta = checkpoint_info(options.checkpoint)
    name = options.model or meta.get('model')
    if name is None:
        raise InputError(
            f'{options.checkpoint} does not say which model it holds; pass --model ({", ".join(VARIANT_ARGS)})')
    if name not in VARIANT_ARGS:
        raise InputError(f'unknown model {name!r}; expected one of {", ".join(VARIANT_ARGS)}')
    img_size = options.img_size or meta.get('img_size') or VARIANT_ARGS[name]['img_size']
    if img_size % 32:
        raise InputError(f'--img-size must be a multiple of 32, got {img_size}')
    return dict(
        model=name,
        num_classes=num_classes,
        img_size=img_size,
        crop_pct=options.crop_pct or meta.get('crop_pct', 0.875),
        interpolation=options.interpolation or meta.get('interpolation', 'bicubic'),
        class_names=meta.get('class_names'),
    )


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by eval and predict: which weights, at which size, on which device."""
    parser.add_argument('--checkpoint', metavar='PATH',
                        help='weights (required): our .safetensors / .pth, or a released checkpoint (with --model)')
    parser.add_argument('--model', choices=list(VARIANT_ARGS),
                        help='CMT variant (default: the one named in the checkpoint)')
    parser.add_argument('--img-size', type=int, metavar='N',
                        help='input side, a multiple of 32 (default: the checkpoint\'s, else the native size)')
    parser.add_argument('--crop-pct', type=float, help='centre-crop fraction (default: the checkpoint\'s, else 0.875)')
    parser.add_argument('--interpolation', choices=['bicubic', 'bilinear'],
                        help='resize interpolation (default: the checkpoint\'s, else bicubic)')
    parser.add_argument('--batch-size', type=int, default=64, metavar='N', help='images per batch')
    parser.add_argument('--device', help='torch device (default: cuda if available, else cpu)')
    parser.add_argument('--amp', choices=['auto', 'none', 'bf16', 'fp16'], default='auto',
                        help='mixed precision: auto is bf16 on CUDA and off on CPU')
    parser.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=False,
                        help='channels-last memory format')
    parser.add_argument('--config', metavar='YAML', help='YAML file of options (the command line wins)')


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `eval` subcommand."""
    parser = subparsers.add_parser(
        'eval', help='top-1 / top-5 accuracy of a checkpoint on a dataset', formatter_class=HelpFormatter,
        description='Top-1 / top-5 accuracy (and, for up to %d classes, the confusion matrix) of a checkpoint '
                    'on a split of an ImageFolder tree, or on the test split of the embedded digits.'
                    % MAX_CONFUSION_CLASSES)
    add_model_options(parser)
    parser.add_argument('--data', metavar='DIR',
                        help='ImageFolder root (ROOT/<split>/<class>/<image>); default: the embedded digits')
    parser.add_argument('--split', help='split to evaluate (default: val, or test for the digits)')
    parser.add_argument('--workers', type=int, default=2, metavar='N', help='data loading processes')
    parser.add_argument('--strict', action=argparse.BooleanOptionalAction, default=False,
                        help='stop at an unreadable image instead of skipping it')
    track_defaults(parser)
    parser.set_defaults(func=partial(run, parser=parser))
    return parser


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    return run_reporting_errors('eval', lambda: eval_command(resolve(parser, args)))


def eval_command(options: argparse.Namespace) -> Dict[str, Any]:
    """`cmtnet eval`: evaluate and print the figures; the last line states the top-1 accuracy."""
    setup = model_setup(options)
    split = options.split or default_eval_split(options.data)
    dataset = build_dataset(options.data, split, setup['img_size'])
    class_names: List[str] = list(dataset.classes)
    if setup['num_classes'] != len(class_names):
        raise InputError(
            f'{options.checkpoint} classifies {setup["num_classes"]} classes, the data has {len(class_names)}')
    if setup['class_names'] is not None and list(setup['class_names']) != class_names:
        raise InputError(f'the classes of {options.checkpoint} ({setup["class_names"][:5]}...) are not those '
                         f'of the data ({class_names[:5]}...)')
    env = init_distributed_device_so(device=options.device or default_device())
    device, rank, world = torch.device(env['device']), env['global_rank'], env['world_size']
    try:
        model = create_model(setup['model'], options.checkpoint, num_classes=setup['num_classes'],
                             img_size=setup['img_size']).to(device)
        if options.channels_last:
            model = model.to(memory_format=torch.channels_last)
        images = ReadableImages(
            dataset, eval_transform(setup['img_size'], setup['crop_pct'], setup['interpolation']), options.strict)
        loader = eval_loader(images, options.batch_size, rank, world, options.workers, device.type == 'cuda')
        result = evaluate(model, loader, len(class_names), device, amp_dtype(options.amp, device),
                          options.channels_last)
    finally:
        if env['distributed']:
            dist.destroy_process_group()
    if rank == 0:
        source = f'{options.data}/{split}' if options.data else f'the digits {split} split'
        print(f'{setup["model"]} at {setup["img_size"]}px ({options.checkpoint}) on {source}: '
              f'{result["count"]} images, loss {result["loss"]:.4f}')
        if result['skipped']:
            print(f'skipped {result["skipped"]} unreadable image(s)')
        if len(class_names) <= MAX_CONFUSION_CLASSES:
            print(format_confusion(result['confusion'], class_names))
        print(f'top-{min(5, len(class_names))} accuracy: {result["top5"]:.2f}%')
        print(f'{split} accuracy (top-1): {result["top1"]:.2f}% ({result["correct"]}/{result["count"]} images)')
    return result
