"""Where a forward pass (or a training step) spends its time, by operator: torch.profiler's self CPU time of
one `cmtnet bench` step (the same model, path and precision `cmtnet bench` builds), summed over the
profiled rounds, the operators sorted by their share.

    python benchmarks/profile_forward.py --model cmt_s --path fused_cl --precision bf16 --threads 2
    python benchmarks/profile_forward.py --model convnext_tiny --path channels_last --precision bf16
    python benchmarks/profile_forward.py --model cmt_s --path train_cl --precision bf16 --rounds 2

Absolute times under the profiler run a few percent above unprofiled ones; the shares are what it is for.
"""
import argparse
import tempfile
from typing import List, Optional, Sequence, Tuple

import torch
from torch.profiler import ProfilerActivity, profile

from cmtnet.analysis.speed import CMT_PATHS, PEER_PATHS, PRECISIONS, TRAIN_PATHS, build_step, torch_threads


def profile_step(model: str, path: str, precision: str, batch_size: int, threads: int, rounds: int,
                 warmup: int) -> Tuple[float, List[Tuple[str, int, float]]]:
    """(ms per forward, [(operator, calls per forward, self ms per forward)], largest first)."""
    with torch_threads(threads), tempfile.TemporaryDirectory() as workdir:
        step = build_step(model, path, precision, batch_size, torch.device('cpu'), workdir, threads)
        for _ in range(warmup):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(rounds):
                step()
    rows = [(e.key, e.count // rounds, e.self_cpu_time_total / 1e3 / rounds) for e in prof.key_averages()]
    rows = sorted((r for r in rows if r[2] > 0), key=lambda r: -r[2])
    return sum(r[2] for r in rows), rows


def main(argv: Optional[Sequence[str]] = None) -> List[Tuple[str, int, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='cmt_s')
    paths = sorted({*CMT_PATHS, *PEER_PATHS, *TRAIN_PATHS} - {'onnxruntime'})
    parser.add_argument('--path', default='fused_cl', choices=paths,
                        help='a train_* path profiles one training step (forward, backward, AdamW; bf16: autocast)')
    parser.add_argument('--precision', default='bf16', choices=PRECISIONS)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--threads', type=int, default=0, help='intra-op threads (0: as they are)')
    parser.add_argument('--rounds', type=int, default=3, help='forwards profiled (averaged)')
    parser.add_argument('--warmup', type=int, default=2, help='forwards before profiling')
    parser.add_argument('--top', type=int, default=15, help='operators listed; the rest in one row')
    args = parser.parse_args(argv)
    total, rows = profile_step(args.model, args.path, args.precision, args.batch_size, args.threads,
                               args.rounds, args.warmup)
    print(f'{args.model}, {args.path}, {args.precision}, batch {args.batch_size}: {total:.1f} ms per step '
          f'(self CPU time under the profiler, mean of {args.rounds})')
    print('| operator | calls | ms | share |')
    print('|---|---:|---:|---:|')
    for name, calls, ms in rows[:args.top]:
        print(f'| `{name}` | {calls} | {ms:.1f} | {100 * ms / total:.1f}% |')
    rest = sum(ms for _, _, ms in rows[args.top:])
    if rest:
        print(f'| the other {len(rows) - args.top} | | {rest:.1f} | {100 * rest / total:.1f}% |')
    return rows


if __name__ == '__main__':
    main()
