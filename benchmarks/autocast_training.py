"""A CMT training step under CPU bf16 autocast, with and without the two rules of `cpu_autocast_training`
(models/autocast_training.py): the key/value reduction in float32, and the explicit attention instead of SDPA.

The `cmtnet bench` training step (forward, cross-entropy, backward, AdamW; channels_last) of one model in
float32, in bf16 autocast as shipped, and in bf16 autocast with both rules off (every op as autocast casts
it: the reduction in bfloat16 and SDPA's math path), in turns, median of the rounds. This is the
measurement behind the two rules.

    python benchmarks/autocast_training.py --threads 2
    python benchmarks/autocast_training.py --model cmt_ti --batch-size 32 --rounds 3
"""
import argparse
import tempfile
from statistics import median
from typing import Callable, Dict, Optional, Sequence

import torch

from cmtnet.analysis import speed
from cmtnet.analysis.speed import build_step, torch_threads
from cmtnet.models import VARIANT_ARGS
from timing import interleaved


def rules_off(step: Callable[[], Callable[[], object]]) -> Callable[[], object]:
    """`step`, built while `cpu_autocast_training` leaves every model as it is."""
    saved = speed.cpu_autocast_training
    speed.cpu_autocast_training = lambda model, device, amp: model
    try:
        return step()
    finally:
        speed.cpu_autocast_training = saved


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='cmt_s', choices=list(VARIANT_ARGS))
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--threads', type=int, default=0, help='intra-op threads (0: as they are)')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=5)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    with torch_threads(args.threads), tempfile.TemporaryDirectory() as workdir:
        def make(precision: str) -> Callable[[], object]:
            return build_step(args.model, 'train_cl', precision, args.batch_size, torch.device('cpu'), workdir,
                              args.threads)
        steps = {
            'fp32': make('fp32'),
            'bf16 autocast': make('bf16'),
            'bf16 autocast, rules off': rules_off(lambda: make('bf16')),
        }
        _, times = interleaved(steps, args.warmup, args.rounds)
    ms = {name: 1e3 * median(t) for name, t in times.items()}
    print(f'{args.model}, training step (channels_last, AdamW), batch {args.batch_size}, median of {args.rounds}')
    print('| step | ms | vs fp32 |')
    print('|---|---:|---:|')
    for name, value in ms.items():
        print(f'| {name} | {value:.0f} | {ms["fp32"] / value:.2f}x |')
    print(f'the rules: {ms["bf16 autocast, rules off"] / ms["bf16 autocast"]:.2f}x')
    return ms


if __name__ == '__main__':
    main()
