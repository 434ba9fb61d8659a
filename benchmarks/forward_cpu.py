"""CPU forward time of CMT-S beside ResNet-50 and Swin-T, as a ratio to ResNet-50.

CMT-S has about ResNet-50's MACs (4.1 vs 4.1 G) but more, smaller ops (depthwise convs, attention with a
position bias, many norms), so MACs alone mislead about speed. All models run in one process, in eval mode
under torch.inference_mode, on the same input; after a warm-up the models take turns, round by round, so
that drifting machine load hits each of them alike, and the median round is reported (see timing.py).

    python benchmarks/forward_cpu.py                      # batch 16 at 224, 1 warm-up + 5 rounds
    python benchmarks/forward_cpu.py --rounds 11 --threads 4
"""
import argparse
import statistics
from functools import partial
from typing import Sequence

import timm
import torch
import torch.nn as nn

import cmtnet  # noqa: F401  (registers the CMT models with timm)
from cmtnet.analysis.macs import count_macs
from timing import interleaved

BASELINE = 'resnet50'
DEFAULT_MODELS = ('cmt_s', BASELINE, 'swin_tiny_patch4_window7_224')


def build(name: str, img_size: int) -> nn.Module:
    """A timm model in eval mode for `img_size` inputs (fully convolutional ones need no resizing)."""
    model = timm.create_model(name)
    if hasattr(model, 'set_input_size'):
        model.set_input_size(img_size=img_size)
    return model.eval()


def main(argv: Sequence[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--models', nargs='+', default=list(DEFAULT_MODELS),
                        help=f'timm model names (the ratio is against {BASELINE}, which is always run)')
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--warmup', type=int, default=1, help='untimed forwards of each model first')
    parser.add_argument('--rounds', type=int, default=5, help='timed rounds (median reported)')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(dict.fromkeys([BASELINE, *args.models]))

    torch.manual_seed(0)
    models = {n: build(n, args.img_size) for n in names}
    gmacs = {n: count_macs(m, args.img_size) / 1e9 for n, m in models.items()}
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    with torch.inference_mode():
        _, times = interleaved({n: partial(m, x) for n, m in models.items()}, args.warmup, args.rounds)

    print(f'CPU forward, batch {args.batch_size} at {args.img_size}x{args.img_size}, eval + inference_mode, '
          f'{torch.get_num_threads()} threads, torch {torch.__version__}, timm {timm.__version__}; '
          f'{args.warmup} warm-up + {args.rounds} interleaved rounds, median (min-max)')
    base = statistics.median(times[BASELINE])
    print(f'{"model":<30} {"GMACs":>6} {"ms/batch":>9} {"(min-max)":>15} {"img/s":>7} {"time vs " + BASELINE:>17}')
    for name in names:
        t = times[name]
        median = statistics.median(t)
        spread = f'({min(t) * 1e3:.0f}-{max(t) * 1e3:.0f})'
        print(f'{name:<30} {gmacs[name]:>6.2f} {median * 1e3:>9.0f} {spread:>15} '
              f'{args.batch_size / median:>7.1f} {median / base:>16.2f}x')


if __name__ == '__main__':
    main()
