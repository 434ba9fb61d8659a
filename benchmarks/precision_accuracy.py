"""Top-1 accuracy of trained CMT classifiers at each inference precision, and how far it falls from fp32.

For each checkpoint, on its held-out split (the digits test split, or the val/ split of `--eval`'s ImageFolder
root), the model runs as `cmtnet eval` runs it (fp32), with its weights in bfloat16 after folding for
inference (`cmtnet.runtime.inference_model(model, 'cpu', 'bf16')`, as `--precision bf16`), and int8-quantized
(`cmtnet.deploy.quantize`, calibrated on the first images of the train split, `int8` and `int8-bf16`).
Per precision it prints the top-1, its drop from fp32 in points (positive: worse) with its exact 95% interval
from the paired outcomes (`cmtnet.deploy.drop_check`), the share of images whose top-1 class is the one fp32
gives, and whether the drop and agreement meet the targets. Each int8 mode has two rows, as `cmtnet quantize`
makes them: every op quantized, then tuned to `--max-drop` (the ops it left in float counted):

    bf16: drop <= 0.2 point, agreement >= 99.5%      int8, int8-bf16: drop <= 1.0 point, agreement >= 98%

    python benchmarks/precision_accuracy.py                                     # runs/demo on the digits
    python benchmarks/precision_accuracy.py --eval runs/demo/model_ema.safetensors \
        --eval runs/photo_cls/best.safetensors runs/photo_cls_set                # and a photo model

The int8 programs compile first, which takes minutes a program on a small CPU; `--reference-ops` runs them
through the converted graph's reference ops instead, without compiling; those round otherwise than the int8
kernels, so their rows are close to the compiled ones, not equal (as `cmtnet quantize --no-compile`). The
photo set and its model: the commands in `photo_classification_set.py`'s docstring.
"""
import argparse
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from cmtnet.classification.data import build_dataset, default_eval_split, eval_transform
from cmtnet.classification.evaluate import load_for_inference
from cmtnet.classification.options import ModelOptions
from cmtnet.deploy.drop_check import PairedOutcomes
from cmtnet.engine.data import ReadableImages, eval_loader, own_images
from cmtnet.errors import InputError
from cmtnet.runtime import inference_model

PRECISIONS = ('fp32', 'bf16', 'int8', 'int8-bf16')
# precision -> (largest drop from fp32 in points, smallest agreement with fp32 in %)
TARGETS = {'bf16': (0.2, 99.5), 'int8': (1.0, 98.0), 'int8-bf16': (1.0, 98.0)}
DEFAULT_CHECKPOINT = 'runs/demo/model_ema.safetensors'


@dataclass
class Row:
    """The measures of one precision of one checkpoint."""
    precision: str
    top1: float
    drop: float  # points below fp32
    agreement: float  # % of images with fp32's top-1 class
    count: int
    interval: Tuple[float, float] = (0., 0.)  # the drop's exact 95% interval (cmtnet.deploy.drop_check)
    float_ops: int = 0  # int8 ops that the tuning returned to float
    float_op_names: Tuple[str, ...] = ()


@torch.inference_mode()
def predictions(model: Callable, loader) -> Tuple[torch.Tensor, torch.Tensor]:
    """(top-1 class, target) of every readable image of `loader`, in order."""
    classes, targets = [], []
    for batch in loader:
        images, labels, _ = own_images(batch)
        if len(images):
            classes.append(model(images).float().argmax(1))
            targets.append(labels)
    if not classes:
        raise InputError('no readable image to evaluate')
    return torch.cat(classes), torch.cat(targets)


def quantized_rows(checkpoint: str, mode: str, data: Optional[str], calibration: int, batch_size: int,
                   max_drop: float, reference_ops: bool = False, observer: str = 'histogram',
                   keep: Optional[Dict[str, Any]] = None) -> List[Row]:
    """The rows of `checkpoint` int8-quantized in `mode` as `cmtnet quantize` does it, calibrated on the first
    `calibration` images of the train split and checked on the held-out split: every op quantized, then
    tuned to `max_drop` (the same row again when no tuning was needed). Compiled to int8 kernels, or with
    `reference_ops` the program's reference ops, without the minutes inductor takes to compile on a small CPU
    (they round otherwise than the kernels). `observer` is the activation calibration (`--calibration`);
    `keep`, where given, takes `quantize_command`'s result under the mode's name."""
    from cmtnet.deploy.quantize import QuantizeOptions, quantize_command
    result = quantize_command(QuantizeOptions(
        checkpoint=checkpoint, output=Path('int8.pt2'), mode=mode, data=data, calibration_size=calibration,
        batch_size=batch_size, max_drop=max_drop, compile=not reference_ops, workers=0, calibration=observer),
        write=False)  # measured, not written
    if keep is not None:
        keep[mode] = result
    rows = []
    for name, measured in ((mode, result['untuned']), (f'{mode} tuned', result)):
        outcomes = PairedOutcomes(measured['count'], measured['lost'], measured['gained'])
        rows.append(Row(name, measured['quantized'], outcomes.drop, measured['agreement'], measured['count'],
                        outcomes.interval(), len(result['float_ops']) if measured is result else 0,
                        tuple(result['float_ops']) if measured is result else ()))
    return rows


@contextlib.contextmanager
def shared_calibration() -> Iterator[None]:
    """Within the block, `cmtnet quantize`'s calibration of one checkpoint (one model, the same first images)
    runs once per activation calibration and input size: its converted graph, the same for both int8 modes
    (the mode only says how the program runs), is reused; the rest of the command runs as it does."""
    from cmtnet.deploy import quantize
    original, graphs = quantize.calibrated_graph, {}

    def calibrated_graph(model, batches, img_size, fold=True, calibration=quantize.DEFAULT_CALIBRATION):
        key = (img_size, fold, calibration)
        if key not in graphs:
            graphs[key] = original(model, batches, img_size, fold, calibration)
        return graphs[key]
    quantize.calibrated_graph = calibrated_graph
    try:
        yield
    finally:
        quantize.calibrated_graph = original


def measure(checkpoint: str, data: Optional[str] = None, precisions: Sequence[str] = PRECISIONS,
            batch_size: int = 32, calibration: int = 256, reference_ops: bool = False,
            max_drop: float = TARGETS['int8'][0], observer: str = 'histogram',
            keep: Optional[Dict[str, Any]] = None) -> List[Row]:
    """A `Row` per precision of `checkpoint` on the held-out split of `data` (None: the digits); the int8
    ones calibrated with `observer`, their `quantize_command` results put in `keep` where given."""
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise InputError(f'unknown precisions {unknown}; expected some of {", ".join(PRECISIONS)}')
    setup = load_for_inference(ModelOptions(checkpoint=checkpoint), torch.device('cpu'))
    model = setup['model'].eval()
    dataset = build_dataset(data, default_eval_split(data), setup['img_size'])
    if setup['class_names'] is not None and list(setup['class_names']) != list(dataset.classes):
        raise InputError(f'the classes of {checkpoint} ({setup["class_names"][:5]}...) are not those of '
                         f'{data or "the digits"} ({list(dataset.classes)[:5]}...)')
    images = ReadableImages(dataset, eval_transform(setup['img_size'], setup['crop_pct'], setup['interpolation']))
    loader = eval_loader(images, batch_size, workers=0)
    reference, targets = predictions(model, loader)
    fp32_top1 = 100 * (reference == targets).double().mean().item()
    rows = []
    with shared_calibration():
        for precision in precisions:
            if precision.startswith('int8'):
                rows += quantized_rows(checkpoint, precision, data, calibration, batch_size, max_drop,
                                       reference_ops, observer, keep)
            else:
                classes = (reference if precision == 'fp32' else
                           predictions(inference_model(model, 'cpu', precision), loader)[0])
                top1 = 100 * (classes == targets).double().mean().item()
                reference_right, right = reference == targets, classes == targets
                outcomes = PairedOutcomes(len(targets), int((reference_right & ~right).sum()),
                                          int((~reference_right & right).sum()))
                rows.append(Row(precision, top1, fp32_top1 - top1,
                                100 * (classes == reference).double().mean().item(), len(targets),
                                outcomes.interval()))
            # the int8 rows compile first, which takes minutes on a CPU: show each row as it comes
            print(f'{checkpoint} {precision}: top-1 {rows[-1].top1:.2f}%', file=sys.stderr, flush=True)
    return rows


def meets_target(row: Row) -> str:
    """'yes' or 'no' for a precision with a target (`TARGETS`), '' for fp32."""
    precision = row.precision.replace(' tuned', '')
    if precision not in TARGETS:
        return ''
    drop, agreement = TARGETS[precision]
    return 'yes' if row.drop <= drop and row.agreement >= agreement else 'no'


def table(results: Sequence[Tuple[str, str, List[Row]]]) -> str:
    """A markdown table of the (checkpoint, data, rows) measured."""
    lines = ['| checkpoint | data (images) | precision | top-1 (%) | drop vs fp32 (points) | 95% interval | '
             'agreement with fp32 (%) | ops in float | meets target |', '|---|---|---|---:|---:|---|---:|---:|---|']
    for checkpoint, data, rows in results:
        for row in rows:
            lines.append(f'| {checkpoint} | {data} ({row.count}) | {row.precision} | {row.top1:.2f} | '
                         f'{row.drop:+.2f} | [{row.interval[0]:+.2f}, {row.interval[1]:+.2f}] | '
                         f'{row.agreement:.2f} | {row.float_ops} | {meets_target(row)} |')
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--eval', nargs='+', action='append', metavar=('CHECKPOINT', 'DATA'),
                        help='a classification checkpoint and, for an ImageFolder model, its root (repeatable; '
                             f'default: {DEFAULT_CHECKPOINT} on the digits)')
    parser.add_argument('--precisions', nargs='+', default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--calibration', type=int, default=256, help='int8 calibration images (train split)')
    parser.add_argument('--max-drop', type=float, default=TARGETS['int8'][0],
                        help='the tolerance the int8 programs are tuned to (cmtnet quantize --max-drop)')
    parser.add_argument('--reference-ops', action='store_true',
                        help='run the int8 programs through their reference ops instead of compiling them')
    args = parser.parse_args(argv)
    results = []
    for entry in args.eval or [[DEFAULT_CHECKPOINT]]:
        if len(entry) > 2:
            parser.error(f'--eval takes a checkpoint and at most one data root, got {entry}')
        checkpoint, data = entry[0], (entry[1] if len(entry) == 2 else None)
        rows = measure(checkpoint, data, args.precisions, args.batch_size, args.calibration, args.reference_ops,
                       args.max_drop)
        source = f'{data}/{default_eval_split(data)}' if data else 'digits test'
        results.append((checkpoint, source, rows))
    print(table(results))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
