"""Evaluation: top-1 / top-5 accuracy, loss and a confusion matrix, and `cmtnet eval`.

Top-5 is left out for a classifier of 5 classes or fewer, where it would be 100% by construction.

    cmtnet eval --checkpoint runs/demo/model.safetensors                  # the digits test split
    cmtnet eval --checkpoint cmt_small.pth --model cmt_s --data /path/imagenet

Our exported weights carry the model name, input size and class names; a released checkpoint needs
`--model`. An int8 program written by `cmtnet quantize` loads as `--checkpoint` too (its metadata says the
rest); `--precision bf16` runs a float checkpoint folded, with its weights in bfloat16. Under torchrun each
process evaluates a shard and the counts are summed.
"""
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from timm.utils import accuracy

from ..checkpoints import checkpoint_info, create_model
from ..int8_program import is_quantized_file, load_quantized
from ..engine.data import ReadableImages, eval_loader, own_images
from ..errors import InputError, did_you_mean
from ..models.variants import VARIANT_ARGS, check_img_size, native_img_size
from ..runtime import all_reduce, amp_dtype, autocast, distributed, inference_model, inference_path, to_device
from .data import build_dataset, default_eval_split, eval_transform
from .options import EvalOptions, ModelOptions

__all__ = ['MAX_CONFUSION_CLASSES', 'eval_command', 'evaluate', 'format_confusion', 'has_top5', 'load_for_inference']

# a confusion matrix is printed for at most this many classes
MAX_CONFUSION_CLASSES = 20


def has_top5(num_classes: int) -> bool:
    """Whether top-5 accuracy says anything: with 5 classes or fewer every image is in its top 5."""
    return num_classes > 5


@torch.no_grad()
def evaluate(
        model: nn.Module,
        loader: DataLoader,
        num_classes: int,
        device: torch.device,
        amp: Optional[torch.dtype] = None,
        channels_last: bool = False,
) -> Dict[str, Any]:
    """Loss, top-1 and top-5 accuracy (in %; top-5 only where `has_top5`), image count and confusion matrix of
    `model` on `loader` (batches of `ReadableImages`: unreadable images are left out and counted as `skipped`).

    Under torch.distributed the sums are reduced over the processes, which must each hold a shard.
    """
    model.eval()
    top_k = min(5, num_classes)
    # float64 sums on the device: no sync per batch, and no rounding over a large validation set
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # loss, top-1, top-k, count, skipped
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    for batch in loader:
        sums[4] += batch[2].to(device).sum()
        images, targets, _ = own_images(batch)
        n = targets.shape[0]
        if n == 0:
            continue
        targets = targets.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(to_device(images, device, channels_last))
        logits = logits.float()
        acc1, acc_k = accuracy(logits, targets, topk=(1, top_k))
        sums[:4] += torch.stack([
            F.cross_entropy(logits, targets, reduction='sum').double(),
            acc1.double() * n / 100, acc_k.double() * n / 100,
            torch.tensor(n, dtype=torch.float64, device=device),
        ])
        confusion += torch.bincount(targets * num_classes + logits.argmax(1), minlength=num_classes ** 2)
    all_reduce(sums, confusion)
    loss, correct1, correct_k, count, skipped = sums.tolist()
    count = max(count, 1.)
    result = dict(
        loss=loss / count,
        top1=100 * correct1 / count,
        count=int(count),
        correct=int(round(correct1)),
        skipped=int(skipped),
        confusion=confusion.view(num_classes, num_classes).cpu(),
    )
    if has_top5(num_classes):
        result['top5'] = 100 * correct_k / count
    return result


def format_confusion(confusion: torch.Tensor, class_names: Sequence[str]) -> str:
    """A confusion matrix as text: a row per true class, a column per predicted class."""
    names = [str(n)[:8] for n in class_names]
    width = max(5, max(len(n) for n in names), len(str(int(confusion.max()))))
    lines = ['confusion matrix (rows: true class, columns: predicted class)',
             ' ' * width + ' ' + ' '.join(n.rjust(width) for n in names)]
    for name, row in zip(names, confusion.tolist()):
        lines.append(name.rjust(width) + ' ' + ' '.join(str(v).rjust(width) for v in row))
    return '\n'.join(lines)


def _load_quantized_for_inference(options: ModelOptions, device: torch.device) -> Dict[str, Any]:
    """`load_for_inference` of an int8 program: what the model is comes from the program's metadata, and
    what is fixed in it (model, input size, precision, device) cannot be asked otherwise."""
    path = options.checkpoint
    if options.precision != 'fp32':
        raise InputError(f'--precision {options.precision} does not apply to {path}: an int8 program runs at the '
                         f'precision it was quantized for (cmtnet quantize --mode int8-bf16 for bfloat16)')
    if device.type != 'cpu':
        raise InputError(f'{path} is an int8 program for the CPU (x86 kernels); pass --device cpu')
    model, meta = load_quantized(path, options.compile)
    for flag, asked, fixed in (('--model', options.model, meta['model']),
                               ('--img-size', options.img_size, meta['img_size'])):
        if asked is not None and asked != fixed:
            raise InputError(f'{flag} {asked}: {path} is {meta["model"]} at {meta["img_size"]}px, fixed when '
                             f'it was quantized')
    return dict(
        model=model,
        name=meta['model'],
        num_classes=meta['num_classes'],
        img_size=meta['img_size'],
        crop_pct=options.crop_pct or meta['crop_pct'],
        interpolation=options.interpolation or meta['interpolation'],
        class_names=meta['class_names'],
        path=f'{meta["mode"]} program' + ('' if options.compile else ' (its reference float ops)'),
    )


def load_for_inference(options: ModelOptions, device: torch.device) -> Dict[str, Any]:
    """The model of `--checkpoint` on `device` at `--precision`, with its name, input size, crop,
    interpolation, class names and how it runs (`path`, `runtime.inference_path`): the options first, then
    the checkpoint's metadata, then the model's native defaults. An int8 program (`cmtnet quantize`) comes as
    it was quantized."""
    if not options.checkpoint:
        raise InputError('--checkpoint is required (on the command line or in the --config file)')
    if is_quantized_file(options.checkpoint):
        return _load_quantized_for_inference(options, device)
    num_classes, meta = checkpoint_info(options.checkpoint)
    name = options.model or meta.get('model')
    if name is None:
        raise InputError(
            f'{options.checkpoint} does not say which model it holds; pass --model ({", ".join(VARIANT_ARGS)})')
    if name not in VARIANT_ARGS:
        raise InputError(f'unknown model {name!r}; expected one of {", ".join(VARIANT_ARGS)}'
                         f'{did_you_mean(name, VARIANT_ARGS)}')
    img_size = options.img_size or meta.get('img_size') or native_img_size(name)
    check_img_size(img_size, '--img-size')
    model = create_model(name, options.checkpoint, num_classes=num_classes, img_size=img_size)
    return dict(
        model=inference_model(model, device, options.precision, options.channels_last),
        name=name,
        num_classes=num_classes,
        img_size=img_size,
        crop_pct=options.crop_pct or meta.get('crop_pct', 0.875),
        interpolation=options.interpolation or meta.get('interpolation', 'bicubic'),
        class_names=meta.get('class_names'),
        path=inference_path(options.precision, device),
    )


def eval_command(options: EvalOptions) -> Dict[str, Any]:
    """`cmtnet eval`: evaluate and print the figures; the last line states the top-1 accuracy."""
    split = options.split or default_eval_split(options.data)
    with distributed(options.device) as processes:
        device = processes.device
        setup = load_for_inference(options, device)
        dataset = build_dataset(options.data, split, setup['img_size'])
        class_names: List[str] = list(dataset.classes)
        if setup['num_classes'] != len(class_names):
            raise InputError(
                f'{options.checkpoint} classifies {setup["num_classes"]} classes, the data has {len(class_names)}')
        if setup['class_names'] is not None and list(setup['class_names']) != class_names:
            raise InputError(f'the classes of {options.checkpoint} ({setup["class_names"][:5]}...) are not those '
                             f'of the data ({class_names[:5]}...)')
        images = ReadableImages(
            dataset, eval_transform(setup['img_size'], setup['crop_pct'], setup['interpolation']), options.strict)
        loader = eval_loader(images, options.batch_size, processes.rank, processes.world_size, options.workers,
                             device.type == 'cuda')
        result = evaluate(setup['model'], loader, len(class_names), device, amp_dtype(options.amp, device),
                          options.channels_last)
    if processes.is_main:
        source = f'{options.data}/{split}' if options.data else f'the digits {split} split'
        print(f'{setup["name"]} at {setup["img_size"]}px in {setup["path"]} ({options.checkpoint}) on {source}: '
              f'{result["count"]} images, loss {result["loss"]:.4f}')
        if result['skipped']:
            print(f'skipped {result["skipped"]} unreadable image(s)')
        for batch, seconds in getattr(setup['model'], 'compile_seconds', {}).items():
            print(f'compiling the int8 program for batches of {batch}: {seconds:.1f} s (its first call)')
        for batch, seconds in getattr(setup['model'], 'cache_seconds', {}).items():
            print(f'the int8 program for batches of {batch} came compiled from the cache '
                  f'({setup["model"].cache.parent}): {seconds:.1f} s (its first call)')
        if len(class_names) <= MAX_CONFUSION_CLASSES:
            print(format_confusion(result['confusion'], class_names))
        if 'top5' in result:
            print(f'top-5 accuracy: {result["top5"]:.2f}%')
        print(f'{split} accuracy (top-1): {result["top1"]:.2f}% ({result["correct"]}/{result["count"]} images)')
    return result
