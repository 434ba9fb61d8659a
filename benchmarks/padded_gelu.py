"""The GELU inside CMT's edge-corrected convs: the input padded with the values the folded BatchNorm maps to
zero and the conv run unpadded with its GELU post-op, against the border correction and a separate GELU.

Per call of `EdgeCorrectedConv` at each cmt_s IRFFN hidden map (batch 16), and over the whole folded
cmt_s, in float32 and bfloat16: the same module with the padded path on and off (`pad` cleared), in turns.
With `--compiled`, the whole folded model also compiled both ways (inductor, freezing, static shapes), where
the graph pads the input itself and inductor takes the GELU into the conv. This is the measurement behind
`models.fast_path.PADDED_GELU_DTYPES` (the dtypes the padded path runs in).

    python benchmarks/padded_gelu.py --threads 2
    python benchmarks/padded_gelu.py --no-model --rounds 20
    python benchmarks/padded_gelu.py --threads 2 --compiled --rounds 15
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
from cmtnet.analysis.speed import torch_threads
from cmtnet.models import cpu_fast_path, fast_path
from cmtnet.models.fast_path import EdgeCorrectedConv
from timing import compiled_step, interleaved

# cmt_s: IRFFN hidden channels and map side per stage (224 input)
SHAPES = ((256, 56), (512, 28), (1024, 14), (2048, 7))


def padded_and_corrected(module: nn.Module) -> Dict[str, nn.Module]:
    """`module` with the padded path where its dtype allows it, and a copy with it off everywhere."""
    corrected = copy.deepcopy(module)
    for m in corrected.modules():
        if isinstance(m, EdgeCorrectedConv):
            m.pad = None
    return {'padded + GELU post-op': module, 'correction + separate GELU': corrected}


def _ms(module: nn.Module, x: torch.Tensor, warmup: int, rounds: int,
        backend: Optional[str] = None) -> Dict[str, float]:
    """Median ms of `module` on `x` both ways, in eager mode or compiled by `backend`."""
    modules = padded_and_corrected(module)
    steps = {name: (lambda m=m: m(x)) if backend is None else compiled_step(m, x, backend)
             for name, m in modules.items()}
    with torch.inference_mode():
        _, times = interleaved(steps, warmup, rounds)
    return {name: 1e3 * median(t) for name, t in times.items()}


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--threads', type=int, default=0, help='intra-op threads (0: as they are)')
    parser.add_argument('--shapes', type=int, nargs='+', metavar='C,H', default=None,
                        help='hidden maps as channels and side pairs, e.g. 256 56 512 28 (default: cmt_s)')
    parser.add_argument('--model', default='cmt_s', help='the folded model timed whole (default cmt_s)')
    parser.add_argument('--img-size', type=int, default=None, help="the model's input side (default: its own)")
    parser.add_argument('--no-model', action='store_true', help='the per-call table only')
    parser.add_argument('--compiled', action='store_true', help='the whole model compiled too')
    parser.add_argument('--backend', default='inductor', help="torch.compile's backend (default inductor)")
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=10)
    args = parser.parse_args(argv)
    shapes = SHAPES if args.shapes is None else tuple(zip(args.shapes[::2], args.shapes[1::2]))
    rows: List[Dict[str, object]] = []
    torch.manual_seed(0)
    saved = fast_path.PADDED_GELU_DTYPES
    fast_path.PADDED_GELU_DTYPES = (torch.float32, torch.bfloat16)  # both ways in both dtypes, for the comparison
    try:
        with torch_threads(args.threads):
            print('| what | dtype | correction + separate GELU (ms) | padded + GELU post-op (ms) | ratio |')
            print('|---|---|---:|---:|---:|')
            for chans, side in shapes:
                conv = nn.Conv2d(chans, chans, 3, padding=1, groups=chans)
                bn = nn.BatchNorm2d(chans).eval()
                with torch.no_grad():
                    bn.weight.uniform_(0.5, 1.5)
                    bn.bias.normal_()
                    module = EdgeCorrectedConv(conv, bn, gelu=True)
                x = torch.randn(args.batch_size, chans, side, side).contiguous(memory_format=torch.channels_last)
                for dtype in (torch.float32, torch.bfloat16):
                    rows.append(_report(f'{chans} x {side} x {side}', dtype, _ms(module.to(dtype), x.to(dtype),
                                                                                 args.warmup, args.rounds)))
            if not args.no_model:
                kwargs = {'img_size': args.img_size} if args.img_size else {}
                model = cpu_fast_path(reparameterize_model(timm.create_model(args.model, **kwargs).eval()))
                model = model.to(memory_format=torch.channels_last)
                size = args.img_size or model.pretrained_cfg['input_size'][-1]
                x = torch.randn(args.batch_size, 3, size, size).contiguous(memory_format=torch.channels_last)
                for dtype in (torch.float32, torch.bfloat16):
                    rows.append(_report(f'folded {args.model}, whole forward', dtype,
                                        _ms(model.to(dtype), x.to(dtype), args.warmup, args.rounds)))
                    if args.compiled:
                        rows.append(_report(f'folded {args.model}, compiled ({args.backend})', dtype,
                                            _ms(model, x.to(dtype), args.warmup, args.rounds, args.backend)))
    finally:
        fast_path.PADDED_GELU_DTYPES = saved
    return rows


def _report(what: str, dtype: torch.dtype, ms: Dict[str, float]) -> Dict[str, object]:
    old, new = ms['correction + separate GELU'], ms['padded + GELU post-op']
    print(f'| {what} | {str(dtype).replace("torch.", "")} | {old:.2f} | {new:.2f} | {old / new:.3f}x |', flush=True)
    return {'what': what, 'dtype': str(dtype), **ms}


if __name__ == '__main__':
    main()
