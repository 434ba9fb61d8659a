"""Training throughput of CMT-S at 224: eager vs --channels-last vs --compile, and beside ResNet-50.

Two tables, from one run:
1. the `cmtnet train` step (the Trainer built from those options: model, AdamW, schedule, mixup, EMA)
   in each variant, as a ratio to eager;
2. with `--against resnet50`, a plain training step (timm model, timm AdamW, cross-entropy, the same
   precision) of CMT-S and of each model named, as a ratio to the first of them; the plain step leaves
   out what only our Trainer does, so that the models are compared alike.
Every step is fed the same synthetic batch: the data pipeline is left out. The steps take turns, round by
round, after untimed warm-up steps (see timing.py).

    python benchmarks/train_throughput.py                         # CPU, batch 8 at 224, 2 warm-up + 3 rounds
    python benchmarks/train_throughput.py --against resnet50 --variants eager
    python benchmarks/train_throughput.py --device cuda --amp bf16 --batch-size 128 --against resnet50
"""
import argparse
import statistics
import tempfile
from functools import partial
from typing import Dict, List, Optional, Sequence

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.optim import create_optimizer_v2

from cmtnet.classification import ClassificationTask, TrainOptions
from cmtnet.engine import Trainer
from cmtnet.models import VARIANT_ARGS
from cmtnet.runtime import Processes, amp_dtype, autocast
from timing import interleaved

BASELINE = 'eager'
VARIANTS: Dict[str, Dict[str, bool]] = {
    BASELINE: {},
    'channels-last': dict(channels_last=True),
    'compile': dict(compile=True),
}


def build_trainer(variant: str, args: argparse.Namespace, output: str) -> Trainer:
    """The engine's run as `cmtnet train` builds it; the embedded digits stand in for data, which is not used."""
    options = TrainOptions(model=args.model, img_size=args.img_size, batch_size=args.batch_size, workers=0,
                           output=output, progress=False, amp=args.amp, **VARIANTS[variant])
    trainer = Trainer(ClassificationTask(options), options, Processes(torch.device(args.device)))
    trainer.model.train()
    return trainer


class PlainStep:
    """One training step of any timm model: forward and cross-entropy under autocast, backward, AdamW."""

    def __init__(self, name: str, img_size: int, device: torch.device, amp: Optional[torch.dtype]):
        size = dict(img_size=img_size) if name in VARIANT_ARGS else {}
        self.model: nn.Module = timm.create_model(name, **size).to(device).train()
        self.optimizer = create_optimizer_v2(self.model, 'adamw', lr=1e-3, weight_decay=0.05)
        self.device, self.amp = device, amp

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        with autocast(self.device, self.amp):
            loss = F.cross_entropy(self.model(images), targets)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def report(title: str, columns: str, warmup: Dict[str, float], times: Dict[str, List[float]], batch_size: int,
           baseline: str) -> None:
    print(title)
    print(f'{columns:<30} {"warm-up s":>9} {"s/step":>7} {"(min-max)":>13} {"img/s":>8} {"vs " + baseline:>12}')
    base = statistics.median(times[baseline])
    for name, t in times.items():
        median = statistics.median(t)
        print(f'{name:<30} {warmup[name]:>9.1f} {median:>7.3f} {f"({min(t):.3f}-{max(t):.3f})":>13} '
              f'{batch_size / median:>8.1f} {base / median:>11.2f}x')


def main(argv: Sequence[str] = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('--model', default='cmt_s', choices=list(VARIANT_ARGS))
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--amp', choices=['none', 'bf16', 'fp16'], default='none', help='mixed precision')
    parser.add_argument('--variants', nargs='*', choices=list(VARIANTS), default=list(VARIANTS),
                        help=f'Trainer variants to measure (the ratio is against {BASELINE}, always run if any is)')
    parser.add_argument('--against', nargs='*', default=[], metavar='MODEL',
                        help='timm models to compare the plain training step of --model with')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps first (compilation happens here)')
    parser.add_argument('--rounds', type=int, default=3, help='timed rounds (median reported)')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    where = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
    print(f'{where}; torch {torch.__version__}, timm {timm.__version__}; batch {args.batch_size} at '
          f'{args.img_size}x{args.img_size}, amp {args.amp}; {args.warmup} warm-up steps + {args.rounds} '
          f'interleaved rounds, median (min-max)')

    torch.manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    targets = torch.randint(0, 10, (args.batch_size,), device=device)
    variants = list(dict.fromkeys([BASELINE, *args.variants])) if args.variants else []
    if variants:
        with tempfile.TemporaryDirectory() as output:
            steps = {}
            for name in variants:
                trainer = build_trainer(name, args, output)
                steps[name] = partial(trainer.train_step, 0, (images, targets, torch.zeros(len(targets))))
            warmup, times = interleaved(steps, args.warmup, args.rounds, device)
        report(f'\n{args.model}: the cmtnet train step (AdamW, schedule, mixup/cutmix, EMA)', 'variant', warmup,
               times, args.batch_size, BASELINE)
        del steps, trainer
    if args.against:
        models = list(dict.fromkeys([*args.against, args.model]))
        amp = amp_dtype(args.amp, device)
        plain = {name: PlainStep(name, args.img_size, device, amp) for name in models}
        warmup, times = interleaved({n: partial(step, images, targets) for n, step in plain.items()},
                                    args.warmup, args.rounds, device)
        report('\nplain training step (timm AdamW, cross-entropy), eager', 'model', warmup, times,
               args.batch_size, args.against[0])


if __name__ == '__main__':
    main()
