"""A detector on CMT at `--precision bf16` against fp32, on the CPU: inference time per batch as the ratio to
the fp32 detector, measured in turns in one process.

The bf16 detector is what `cmtnet detect eval | predict --precision bf16` runs
(`detection.builders.detector_in_precision`): the CMT folded for inference in channels-last memory, the
backbone with its FPN and the heads in bfloat16, the transform, anchors, box decoding and NMS in float32.
The detector's weights are random (the speed does not depend on them; what bf16 does to the boxes of a
trained detector is checked by tests/detection/test_detect_run.py); what is timed is the whole detector.

    python benchmarks/detection_precision.py                                  # RetinaNet-CMT-S, 800x1333
    python benchmarks/detection_precision.py --detector maskrcnn --rounds 3
    python benchmarks/detection_precision.py --model cmt_ti --size 128 160 --rounds 1 --warmup 0   # quick
"""
import argparse
import statistics
import sys
from typing import Dict, List, Optional, Sequence

import torch

import cmtnet  # noqa: F401  (registers the models)
from cmtnet.analysis.speed import machine, torch_threads
from cmtnet.detection import build_detector
from cmtnet.detection.builders import DETECTORS, detector_in_precision
from timing import interleaved


def run(args: argparse.Namespace) -> Dict[str, float]:
    height, width = args.size
    model = build_detector(args.detector, args.model, args.num_classes, min_size=min(height, width),
                           max_size=max(height, width)).eval()
    fast = detector_in_precision(model, 'bf16', torch.device('cpu'))
    g = torch.Generator().manual_seed(0)
    images: List[torch.Tensor] = [torch.rand(3, height, width, generator=g) for _ in range(args.batch_size)]

    def step(detector: torch.nn.Module):
        def call():
            with torch.inference_mode():
                return detector(images)
        return call

    with torch_threads(args.threads):
        warm, times = interleaved({'fp32': step(model), 'bf16': step(fast)}, args.warmup, args.rounds)
    fp32, bf16 = statistics.median(times['fp32']), statistics.median(times['bf16'])
    return dict(fp32_s=fp32, bf16_s=bf16, ratio=fp32 / bf16, warmup_s=sum(warm.values()))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--detector', choices=list(DETECTORS), default='retinanet')
    parser.add_argument('--model', default='cmt_s')
    parser.add_argument('--num-classes', type=int, default=91)
    parser.add_argument('--size', type=int, nargs=2, default=[800, 1333], metavar=('H', 'W'))
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: as they are)')
    args = parser.parse_args(argv)
    result = run(args)
    print(f'{args.detector}-{args.model} at {args.size[0]}x{args.size[1]}, batch {args.batch_size}; '
          f'{machine(args.threads)}; {args.warmup} warm-up + {args.rounds} interleaved rounds, median')
    print('| precision | s/batch | vs fp32 |\n|:---|---:|---:|')
    print(f'| fp32 | {result["fp32_s"]:.2f} | 1.00x |')
    print(f'| bf16 | {result["bf16_s"]:.2f} | {result["ratio"]:.2f}x |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
