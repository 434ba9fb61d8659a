"""CPU training throughput of CMT-S at 224: eager vs --channels-last vs --compile, as ratios to eager.

Each variant is the `cmtnet train` Trainer built from those options (model, AdamW, schedule, the training
step itself), fed the same synthetic batch. The first steps are untimed warm-up (torch.compile compiles
there); then the variants take turns, one step each per round, so that drifting machine load hits them
alike, and the median round is reported. The data pipeline is left out: this measures the model's step.

    python benchmarks/train_throughput.py                         # batch 8 at 224, 2 warm-up + 3 rounds
    python benchmarks/train_throughput.py --batch-size 16 --rounds 5 --threads 4
"""
import argparse
import statistics
import tempfile
import time
from typing import Dict, List, Sequence

import timm
import torch

from cmtnet.train import Trainer, parse_options

BASELINE = 'eager'
VARIANTS: Dict[str, List[str]] = {
    BASELINE: [],
    'channels-last': ['--channels-last'],
    'compile': ['--compile'],
}


def build(variant: str, model: str, img_size: int, batch_size: int, output: str) -> Trainer:
    """A Trainer as `cmtnet train` builds it; the embedded digits stand in for data, which is not used."""
    options = parse_options([
        '--model', model, '--img-size', str(img_size), '--batch-size', str(batch_size), '--workers', '0',
        '--output', output, '--no-progress', *VARIANTS[variant]])
    return Trainer(options, torch.device('cpu'))


def step_seconds(trainer: Trainer, images: torch.Tensor, targets: torch.Tensor) -> float:
    start = time.perf_counter()
    trainer.train_step(0, images, targets)
    return time.perf_counter() - start


def main(argv: Sequence[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='cmt_s')
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--variants', nargs='+', choices=list(VARIANTS), default=list(VARIANTS),
                        help=f'what to measure (the ratio is against {BASELINE}, which is always run)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps first (compilation happens here)')
    parser.add_argument('--rounds', type=int, default=3, help='timed rounds (median reported)')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(dict.fromkeys([BASELINE, *args.variants]))

    torch.manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    targets = torch.randint(0, 10, (args.batch_size,))
    with tempfile.TemporaryDirectory() as output:
        trainers = {n: build(n, args.model, args.img_size, args.batch_size, output) for n in names}
        warmup = {}
        for name, trainer in trainers.items():
            trainer.model.train()
            warmup[name] = sum(step_seconds(trainer, images, targets) for _ in range(args.warmup))
        times: Dict[str, List[float]] = {n: [] for n in names}
        for _ in range(args.rounds):
            for name, trainer in trainers.items():
                times[name].append(step_seconds(trainer, images, targets))

    print(f'CPU training step (forward, backward, AdamW) of {args.model}, batch {args.batch_size} at '
          f'{args.img_size}x{args.img_size}, {torch.get_num_threads()} threads, torch {torch.__version__}, '
          f'timm {timm.__version__}; {args.warmup} warm-up steps + {args.rounds} interleaved rounds, median (min-max)')
    base = statistics.median(times[BASELINE])
    print(f'{"variant":<15} {"warm-up s":>9} {"s/step":>7} {"(min-max)":>13} {"img/s":>7} {"vs " + BASELINE:>9}')
    for name in names:
        t = times[name]
        median = statistics.median(t)
        print(f'{name:<15} {warmup[name]:>9.1f} {median:>7.2f} {f"({min(t):.2f}-{max(t):.2f})":>13} '
              f'{args.batch_size / median:>7.2f} {base / median:>8.2f}x')


if __name__ == '__main__':
    main()
