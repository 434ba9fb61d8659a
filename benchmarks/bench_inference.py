"""Inference (and training) speed of CMT in each path beside its timm peers: `cmtnet bench` as a script.

A thin wrapper over cmtnet.analysis.speed, so that the benchmark and the command are one piece of code.
Everything compared runs interleaved in one process; ratios are to the baseline measured in the same run.

    python benchmarks/bench_inference.py --threads 2                        # cmt_s, resnet50, fastvit_sa24
    python benchmarks/bench_inference.py --threads 2 --precision fp32 bf16 int8 --paths eager fused_cl \\
        fused_compiled channels_last compiled --models cmt_s fastvit_sa24 resnet50 convnext_tiny nextvit_small \
        swin_tiny_patch4_window7_224
    python benchmarks/bench_inference.py --models cmt_s resnet50 convnext_tiny swin_tiny_patch4_window7_224 \\
        deit_small_patch16_224 nextvit_small fastvit_sa24 --latency --memory --chart speed.png
    python benchmarks/bench_inference.py --models cmt_s resnet50 --paths train_eager train_cl train_compiled \\
        --baseline cmt_s:train_eager --batch-size 8
    # on a GPU (bf16, batch 256; fits about ten minutes):
    python benchmarks/bench_inference.py --device cuda --precision bf16 --baseline cmt_s:eager:bf16 --batch-size 256 \\
        --rounds 5 \\
        --models cmt_s cmt_b swin_tiny_patch4_window7_224 convnext_tiny resnet50 \\
        --paths eager channels_last fused_cl fused_compiled compiled --memory
"""
import argparse
import sys
from typing import Optional, Sequence

from cmtnet.analysis import speed
from cmtnet.cli import run_reporting_errors


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='bench_inference.py')
    subparsers = parser.add_subparsers(dest='command')
    speed.add_parser(subparsers)
    args = parser.parse_args(['bench', *(sys.argv[1:] if argv is None else argv)])
    return run_reporting_errors('bench', lambda: args.func(args))


if __name__ == '__main__':
    sys.exit(main())
