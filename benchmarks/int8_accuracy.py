"""The int8 accuracy table of docs/int8-accuracy.md: what each precision and each int8 calibration costs a
trained CMT, and what each runs at beside compiled bf16.

For each checkpoint (and, for an ImageFolder model, its root), as `precision_accuracy.py` measures it on the
held-out split: fp32, bf16, and int8 and int8-bf16 as `cmtnet quantize` makes them (every op quantized, then
tuned to `--max-drop`: the ops it returned to float named), once per activation calibration (`--calibrations`,
histogram and minmax). Then, for the checkpoints timed (`--time`), the models run compiled on one batch in
turns (benchmarks/timing.py): bf16 as `cmtnet eval --precision bf16 --compile` runs it, and each int8 program
of the first calibration, every op quantized and tuned, compiled to its int8 kernels through torch.compile (the
lowering of the package `cmtnet eval` runs a `.pt2` with). The speed column is the time of compiled bf16 over
the row's (above 1: faster). With `--timing-lock FILE` the timing alone holds an
exclusive lock on FILE, so that timed runs on a shared machine do not overlap, while the accuracy checks and
the compiling run unlocked. The last line names the calibration of the higher int8 top-1 over every set and mode.

    python benchmarks/int8_accuracy.py --eval runs/demo/model_ema.safetensors \\
        --eval runs/photo_cls/best.safetensors runs/photo_cls_set \\
        --eval runs/held_out/best.safetensors runs/held_out_set --reference-ops --time first

The sets and their models: `photo_classification_set.py` (its `--set held-out` for the third).
`--reference-ops` checks the int8 accuracy on the programs' reference ops, without the minutes inductor takes
to compile each program for the check (they round otherwise than the int8 kernels); the timed programs are
compiled either way.

Where the time goes: per checkpoint and calibration, the calibration (the export, and 256 images through the
observed graph, whose histogram observers take about half of it), then one pass of the held-out split through
the reference ops per int8 mode (and per tuning trial); and for the timed checkpoint, inductor's compile of
each timed program. The calibration is made once per checkpoint and calibration and shared by the two int8
modes (`precision_accuracy.shared_calibration`: the converted graph is the same, the mode only says how it
runs). The checkpoints are independent: on a machine with cores to spare, one process per `--eval` is faster.
"""
import argparse
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from cmtnet.analysis.speed import roomy_primitive_cache, torch_threads
from cmtnet.classification.evaluate import load_for_inference
from cmtnet.classification.options import ModelOptions
from cmtnet.deploy.quantize import CALIBRATIONS, quantized_program
from cmtnet.int8_program import QuantizedProgram
from cmtnet.runtime import inference_model
from precision_accuracy import PRECISIONS, TARGETS, Row, measure
from timing import compiled_step, interleaved, locked

INT8 = ('int8', 'int8-bf16')


def speeds(checkpoint: str, results: Dict[str, Dict[str, Any]], batch_size: int, warmup: int, rounds: int,
           lock: Optional[str] = None) -> Dict[str, float]:
    """Compiled bf16's median time over each int8 program's ('int8', 'int8 tuned', ...: the tuned one only
    where the tuning left ops in float), timed in turns on one batch; `results` are `quantize_command`'s."""
    setup = load_for_inference(ModelOptions(checkpoint=checkpoint), torch.device('cpu'))
    size = setup['img_size']
    images = torch.randn(batch_size, 3, size, size)
    steps = {'bf16': compiled_step(inference_model(setup['model'], 'cpu', 'bf16'),
                                   images.contiguous(memory_format=torch.channels_last))}
    for mode, result in results.items():
        programs = {mode: quantized_program(result['graph'])}
        if result['float_ops']:
            programs[f'{mode} tuned'] = result['program']
        for name, program in programs.items():
            runnable = QuantizedProgram(program, mode)
            steps[name] = lambda run=runnable: run(images)
    warmup_seconds, _ = interleaved(steps, warmup, 0)  # compiling, unlocked: minutes a program
    with locked(lock):
        _, times = interleaved(steps, 0, rounds)
    print(f'{checkpoint}: compiling (first call) ' + ', '.join(f'{k} {v:.0f} s' for k, v in warmup_seconds.items()),
          file=sys.stderr, flush=True)
    median = {name: statistics.median(t) for name, t in times.items()}
    return {name: median['bf16'] / t for name, t in median.items()}


def _row_speed(row: Row, ratios: Dict[str, float]) -> str:
    name = 'bf16' if row.precision == 'bf16' else row.precision
    if row.precision.endswith(' tuned') and not row.float_ops:
        name = row.precision.replace(' tuned', '')
    return f'{ratios[name]:.2f}x' if name in ratios else ''


def table(results: Sequence[Tuple[str, str, str, List[Row], Dict[str, float]]]) -> str:
    """A markdown table of the (set, data, calibration, rows, speed ratios) measured."""
    lines = ['| set (images) | precision | calibration | top-1 (%) | drop (points) | 95% interval | agreement (%) '
             '| ops left in float | speed vs compiled bf16 |', '|---|---|---|---:|---:|---|---:|---|---:|']
    for name, data, calibration, rows, ratios in results:
        for row in rows:
            ops = (f'{row.float_ops}: {", ".join(row.float_op_names)}' if row.float_ops else
                   ('0' if row.precision.startswith('int8') else ''))
            lines.append(f'| {name} ({row.count}) | {row.precision} | '
                         f'{calibration if row.precision.startswith("int8") else ""} | {row.top1:.2f} | '
                         f'{row.drop:+.2f} | [{row.interval[0]:+.2f}, {row.interval[1]:+.2f}] | {row.agreement:.2f} | '
                         f'{ops} | {_row_speed(row, ratios)} |')
    return '\n'.join(lines)


def better_calibration(results: Sequence[Tuple[str, str, str, List[Row], Dict[str, float]]]) -> str:
    """Which calibration gave the higher int8 top-1 (every op quantized), summed over the sets and modes."""
    total: Dict[str, float] = {}
    for _, _, calibration, rows, _ in results:
        total[calibration] = total.get(calibration, 0.) + sum(r.top1 for r in rows if r.precision in INT8)
    if len(total) < 2:
        return ''
    ranked = sorted(total, key=total.get, reverse=True)
    return (f'calibration: {ranked[0]} {total[ranked[0]]:.2f} summed int8 top-1 points over the sets and modes, '
            f'{ranked[1]} {total[ranked[1]]:.2f}')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--eval', nargs='+', action='append', metavar=('CHECKPOINT', 'DATA'), required=True,
                        help='a classification checkpoint and, for an ImageFolder model, its root (repeatable)')
    parser.add_argument('--precisions', nargs='+', default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument('--calibrations', nargs='+', default=list(CALIBRATIONS), choices=CALIBRATIONS)
    parser.add_argument('--calibration-size', type=int, default=256, help='int8 calibration images (train split)')
    parser.add_argument('--max-drop', type=float, default=TARGETS['int8'][0],
                        help='the tolerance the int8 programs are tuned to (cmtnet quantize --max-drop)')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--reference-ops', action='store_true',
                        help='check the int8 accuracy on the programs\' reference ops instead of compiling them')
    parser.add_argument('--time', choices=('all', 'first', 'none'), default='all',
                        help='which checkpoints to time compiled (the first calibration\'s programs)')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=10)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--timing-lock', metavar='FILE', help='hold an exclusive lock on FILE while timing')
    args = parser.parse_args(argv)
    roomy_primitive_cache()
    results = []
    with torch_threads(args.threads):
        for index, entry in enumerate(args.eval):
            if len(entry) > 2:
                parser.error(f'--eval takes a checkpoint and at most one data root, got {entry}')
            checkpoint, data = entry[0], (entry[1] if len(entry) == 2 else None)
            name = Path(data).name if data else 'digits'
            for number, observer in enumerate(args.calibrations):
                kept: Dict[str, Dict[str, Any]] = {}
                precisions = [p for p in args.precisions if number == 0 or p in INT8]
                rows = measure(checkpoint, data, precisions, args.batch_size, args.calibration_size,
                               args.reference_ops, args.max_drop, observer, kept)
                timed = number == 0 and (args.time == 'all' or args.time == 'first' and index == 0)
                ratios = (speeds(checkpoint, kept, args.batch_size, args.warmup, args.rounds, args.timing_lock)
                          if timed and 'bf16' in precisions else {})
                results.append((name, data, observer, rows, ratios))
    print(table(results))
    print(better_calibration(results))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
