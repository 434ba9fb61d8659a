"""The folded model compiled by inductor (freezing, static shapes) with its stem and first stage run in
micro-batches, as in eager mode, against the same model compiled with the batch whole.

`MicroBatched` splits a large CPU batch under `torch.compile` for static shapes (models/fast_path.py): the
unrolled micro-batches keep the early stages' maps in the last-level cache between inductor's kernels. The
"whole" copy has the `MicroBatched` wrappers taken off. Both run in turns with the unfused eager model in
float32 (the baseline of `cmtnet bench`); times are ms per batch, the median round, and ratios to the
baseline. This is the measurement behind compiling the micro-batches (docs/speed.md, section 3).

    python benchmarks/compiled_micro_batches.py --threads 2
    python benchmarks/compiled_micro_batches.py --model cmt_ti --precision bf16 --rounds 10
"""
import argparse
import copy
from statistics import median
from typing import Dict, List, Optional, Sequence

import timm
import torch
import torch.nn as nn
from timm.utils import reparameterize_model

import cmtnet  # noqa: F401  (registers the models)
from cmtnet.analysis.speed import roomy_primitive_cache, torch_threads
from cmtnet.models import cpu_fast_path
from cmtnet.models.fast_path import MicroBatched
from timing import compiled_step, interleaved

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16}


def whole(fused: nn.Module) -> nn.Module:
    """A copy of the folded `fused` whose micro-batched parts take the batch whole."""
    whole_copy = copy.deepcopy(fused)
    for module in list(whole_copy.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, MicroBatched):
                setattr(module, name, child.module)
    return whole_copy


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='cmt_s')
    parser.add_argument('--precision', nargs='+', choices=sorted(DTYPES), default=['fp32', 'bf16'])
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--img-size', type=int, default=None, help='input side (default: the model\'s)')
    parser.add_argument('--threads', type=int, default=0, help='intra-op threads (0: as they are)')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=7)
    parser.add_argument('--backend', default='inductor', help="torch.compile's backend (default inductor)")
    args = parser.parse_args(argv)
    roomy_primitive_cache()
    torch.manual_seed(0)
    model = timm.create_model(args.model, **({'img_size': args.img_size} if args.img_size else {})).eval()
    size = args.img_size or model.pretrained_cfg['input_size'][-1]
    x = torch.randn(args.batch_size, 3, size, size)
    fused = cpu_fast_path(reparameterize_model(model)).to(memory_format=torch.channels_last)
    if not any(isinstance(m, MicroBatched) for m in fused.modules()):
        parser.error(f'folded {args.model} has no micro-batched stage')
    steps = {'baseline': lambda: model(x)}
    for precision in args.precision:
        dtype = DTYPES[precision]
        x_cl = x.to(dtype).contiguous(memory_format=torch.channels_last)
        split = copy.deepcopy(fused).to(dtype)
        steps[f'{precision} micro-batched'] = compiled_step(split, x_cl, args.backend)
        steps[f'{precision} whole'] = compiled_step(whole(split), x_cl, args.backend)
    with torch_threads(args.threads), torch.inference_mode():
        warmup, times = interleaved(steps, args.warmup, args.rounds)
    ms = {name: 1e3 * median(t) for name, t in times.items()}
    print(f'{args.model}, batch {args.batch_size} at {size}, compiled by {args.backend} (freezing, static shapes); '
          f'baseline: unfused eager float32, {ms["baseline"]:.0f} ms')
    print('| precision | batch whole (ms) | micro-batched (ms) | gain | micro-batched vs baseline |')
    print('|---|---:|---:|---:|---:|')
    rows = []
    for precision in args.precision:
        old, new = ms[f'{precision} whole'], ms[f'{precision} micro-batched']
        print(f'| {precision} | {old:.0f} | {new:.0f} | {old / new:.3f}x | {ms["baseline"] / new:.2f}x |')
        rows.append({'precision': precision, 'whole_ms': old, 'micro_batched_ms': new,
                     'baseline_ms': ms['baseline'], 'warmup_s': warmup[f'{precision} micro-batched']})
    return rows


if __name__ == '__main__':
    main()
