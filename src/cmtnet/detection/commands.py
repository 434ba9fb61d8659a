"""`cmtnet detect train | eval | predict`: the command line of detection.

    cmtnet detect train --config configs/detect_demo.yaml                  # the embedded digits, on CPU
    cmtnet detect train --data /path/coco --model cmt_s --backbone-weights cmt_small.pth
    torchrun --nproc_per_node 8 -m cmtnet detect train --data /path/coco --detector maskrcnn
    cmtnet detect eval --checkpoint runs/detect/model.safetensors            # the twelve-line COCO summary
    cmtnet detect predict --checkpoint runs/detect/model.safetensors photos/ --output runs/detect/predict

A checkpoint carries the detector, variant, sizes and class names, so eval and predict need no other flag.
"""
import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Sequence

from ..classification.data import find_images  # image files and folders, read the same way for every task
from ..engine.checkpoint import atomic_write
from ..engine.options import HelpFormatter, add_option, add_run_options, resolve, track_defaults
from ..engine.trainer import fit
from ..errors import InputError
from ..models.variants import VARIANT_ARGS
from ..runtime import amp_dtype, distributed, is_main_process
from .backbone import BATCH_NORM_MODES
from .builders import DETECTORS, HAS_BACKGROUND
from .data import DetectionSamples, eval_loader, read_coco
from .evaluate import evaluate_detector
from .options import DetectEvalOptions, DetectOptions, DetectPredictOptions
from .predict import predict_files
from .task import DetectionTask, checkpoint_meta, data_paths, detector_from_checkpoint, iou_types

__all__ = ['add_parser', 'eval_command', 'parse_options', 'predict_command', 'train_command']


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `detect` with its `train`, `eval` and `predict` subcommands."""
    parser = subparsers.add_parser('detect', help='object detection and instance segmentation with a CMT backbone',
                                   description='RetinaNet, FCOS, Faster and Mask R-CNN (torchvision) on a CMT '
                                               'backbone, on COCO-format data.')
    commands = parser.add_subparsers(dest='detect_command', metavar='COMMAND', required=True)
    _add_train_parser(commands)
    _add_eval_parser(commands)
    _add_predict_parser(commands)


def parse_options(argv: Sequence[str]) -> DetectOptions:
    """The options of `cmtnet detect train ARGV`, with the config file applied."""
    parser = _add_train_parser(argparse.ArgumentParser(prog='cmtnet detect').add_subparsers())
    return resolve(parser, parser.parse_args(list(argv)), DetectOptions)


def _data_options(parser: argparse.ArgumentParser, options: type, splits: Sequence[str]) -> Any:
    g = parser.add_argument_group('data (COCO format; default: the embedded digits set)')
    add_option(g, options, '--data', metavar='ROOT',
               help='a COCO 2017 tree: annotations/instances_{train,val}2017.json, {train,val}2017/')
    for split in splits:
        add_option(g, options, f'--{split}-images', metavar='DIR', help=f'folder of the {split} images')
        add_option(g, options, f'--{split}-annotations', metavar='JSON',
                   help=f'COCO annotation file of the {split} images')
    add_option(g, options, '--strict', help='stop at an unusable entry (absent or unreadable image, bad box or '
                                            'category) instead of skipping it with a warning')
    add_option(g, options, '--workers', type=int, metavar='N', help='data loading processes per process')
    return g


def _add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        'train', help='train a detector', formatter_class=HelpFormatter,
        description='Train a torchvision detector on a CMT backbone on COCO-format data (default: the embedded '
                    'digits set), with the paper-era 1x schedule as the default. Every option can also be set in '
                    'a YAML file (--config); the command line wins. Several processes: torchrun '
                    '--nproc_per_node N -m cmtnet detect train ...')
    data = _data_options(parser, DetectOptions, ('train', 'val'))
    add_option(data, DetectOptions, '--hflip', type=float, metavar='P', help='horizontal flip probability')

    def opt(flag: str, **kwargs: Any) -> None:
        add_option(g, DetectOptions, flag, **kwargs)

    g = parser.add_argument_group('model')
    opt('--detector', choices=list(DETECTORS), help='torchvision detector')
    opt('--model', choices=list(VARIANT_ARGS), help='CMT variant of the backbone')
    opt('--backbone-weights', metavar='PATH', help='CMT weights for the backbone (a released checkpoint or ours)')
    opt('--trainable-stages', type=int, choices=range(5), metavar='N',
        help='CMT stages that train (0-4, from the last)')
    opt('--batch-norm', choices=list(BATCH_NORM_MODES),
        help="the backbone's BatchNorm (default: frozen with --backbone-weights, else train)")
    opt('--min-size', type=int, metavar='PX', help='shorter side the images are resized to')
    opt('--max-size', type=int, metavar='PX', help='longest side at most')
    opt('--anchor-sizes', type=float, nargs=5, metavar='PX',
        help="base anchor size per pyramid level (default: the detector's); RetinaNet adds x2^(1/3), x2^(2/3)")
    add_run_options(parser, DetectOptions)
    track_defaults(parser)
    parser.set_defaults(func=lambda args: train_command(resolve(parser, args, DetectOptions)))
    return parser


def _common(parser: argparse.ArgumentParser, options: type) -> None:
    def opt(flag: str, **kwargs: Any) -> None:
        add_option(parser, options, flag, **kwargs)

    opt('--checkpoint', metavar='PATH',
        help='weights a detection run wrote (required), e.g. runs/detect/model.safetensors')
    opt('--min-size', type=int, metavar='PX', help="shorter side (default: the checkpoint's)")
    opt('--max-size', type=int, metavar='PX', help="longest side (default: the checkpoint's)")
    opt('--device', help='torch device (default: cuda if available, else cpu)')
    opt('--amp', choices=['auto', 'none', 'bf16', 'fp16'], help='mixed precision: auto is bf16 on CUDA, off on CPU')
    opt('--config', metavar='YAML', help='YAML file of options (the command line wins)')


def _add_eval_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'eval', help="a checkpoint's COCO box (and mask) AP", formatter_class=HelpFormatter,
        description='COCO evaluation (pycocotools) of a detection checkpoint on val images: prints the standard '
                    'summary and writes the COCO results JSON.')
    _common(parser, DetectEvalOptions)
    _data_options(parser, DetectEvalOptions, ('val',))
    add_option(parser, DetectEvalOptions, '--batch-size', type=int, metavar='N', help='images per batch')
    add_option(parser, DetectEvalOptions, '--output', metavar='DIR',
               help="folder for coco_results.json (default: the checkpoint's)")
    track_defaults(parser)
    parser.set_defaults(func=lambda args: eval_command(resolve(parser, args, DetectEvalOptions)))


def _add_predict_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'predict', help='draw detections on image files', formatter_class=HelpFormatter,
        description='Detect objects in image files (and folders of them): a PNG per image with boxes, labels, '
                    'scores and masks drawn, and detections.json.')
    parser.add_argument('inputs', nargs='*', metavar='IMAGE_OR_FOLDER', help='image files and folders of images')
    _common(parser, DetectPredictOptions)
    add_option(parser, DetectPredictOptions, '--score-threshold', type=float, metavar='S',
               help='leave out detections scored below this')
    add_option(parser, DetectPredictOptions, '--output', metavar='DIR', help='folder for the drawn images and the JSON')
    track_defaults(parser)
    parser.set_defaults(func=lambda args: predict_command(resolve(parser, args, DetectPredictOptions)))


def train_command(options: DetectOptions) -> Dict[str, Any]:
    """Train as `options` say; the last epoch's metrics."""
    return fit(DetectionTask(options), options)


def _need_checkpoint(options: Any) -> Path:
    if options.checkpoint is None:
        raise InputError('--checkpoint is required: a weight file written by `cmtnet detect train`')
    return Path(options.checkpoint)


def eval_command(options: DetectEvalOptions) -> Dict[str, float]:
    """Print the COCO summary of a checkpoint on val images and write coco_results.json; the metrics."""
    o = options
    checkpoint = _need_checkpoint(o)
    images, annotations = data_paths(o, splits=('val',))['val']
    val_set = read_coco(annotations, images, strict=o.strict, categories=checkpoint_meta(checkpoint)['category_ids'])
    model, meta = detector_from_checkpoint(checkpoint, min_size=o.min_size, max_size=o.max_size)
    first_label = 1 if HAS_BACKGROUND[meta['detector']] else 0
    with distributed(o.device) as p:
        samples = DetectionSamples(val_set, strict=o.strict, first_label=first_label)
        loader = eval_loader(samples, o.batch_size, p.rank, p.world_size, o.workers)
        metrics, summary, results = evaluate_detector(
            model.to(p.device), loader, val_set, iou_types(meta['detector']), p.device, amp_dtype(o.amp, p.device),
            first_label)
        if p.is_main:
            output = Path(o.output) if o.output else checkpoint.parent
            output.mkdir(parents=True, exist_ok=True)
            atomic_write(output / 'coco_results.json', lambda f: f.write(json.dumps(results).encode()))
            print(f'{meta["detector"]} on {meta["model"]}, {checkpoint} on {val_set.describe()}')
            print(summary)
            print(f'COCO results: {output / "coco_results.json"}')
    return metrics


def predict_command(options: DetectPredictOptions) -> List[Dict[str, Any]]:
    """Draw the detections of each image and write detections.json; the detections."""
    o = options
    checkpoint = _need_checkpoint(o)
    if not o.inputs:
        raise InputError('give at least one image file or folder of images to predict')
    files = find_images(o.inputs)
    model, meta = detector_from_checkpoint(checkpoint, min_size=o.min_size, max_size=o.max_size)
    with distributed(o.device) as p:
        if not is_main_process():
            return []
        amp = amp_dtype(o.amp, p.device)
        found = predict_files(model, meta, files, Path(o.output), o.score_threshold, p.device, amp)
    for item in found:
        shown = ', '.join(f'{d["class"]} {d["score"]:.2f}' for d in item['detections'][:5]) or 'nothing'
        more = f' (+{len(item["detections"]) - 5})' if len(item['detections']) > 5 else ''
        print(f'{item["image"]}: {shown}{more}')
    print(f'drawn images and detections.json in {o.output}')
    return found
