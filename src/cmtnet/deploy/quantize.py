"""Int8 static post-training quantization of a CMT classifier (torchao PT2E), and `cmtnet quantize`.

    cmtnet quantize --checkpoint run/model.safetensors --output cmt_int8.pt2              # the digits
    cmtnet quantize --checkpoint run/best.safetensors --data /path/imagenet --output cmt_s_int8.pt2
    cmtnet eval --checkpoint cmt_s_int8.pt2 --data /path/imagenet                        # as any checkpoint

The flow is torchao's PT2E one for x86: the model is captured with `torch.export` (batch dimension
dynamic, input side fixed at the model's), `X86InductorQuantizer` annotates it (int8 activations per
tensor, weights per output channel, static scales), calibration images run through the observers, and
`convert_pt2e` leaves a graph of quantize / dequantize pairs around the float ops, which inductor lowers
to int8 oneDNN kernels when the graph is compiled with freezing (`compile_quantized`). Mode `int8-bf16`
(torchao's int8-mixed-bf16) is the same graph run under bfloat16 autocast: the ops left in float
(LayerNorm, GELU, softmax, the attention matmuls) run in bfloat16 instead of float32.

What is quantized is the inference-folded model (`timm.utils.reparameterize_model`, models/fuse.py), not
the unfused one. Captured by `torch.export` the folded model takes its plain-op graphs, and those suit
the quantizer better: CMT puts its BatchNorms after its GELUs, and the quantizer folds a BatchNorm only
into a conv before it, so in the unfused graph each stays a float pass between int8 ops, where the folded
graph has them inside the convs already (but the one before each zero-padded depthwise conv, which stays a
float pass); the unfused attention is one `scaled_dot_product_attention`, a float op the quantizer cannot
enter, where the folded one is made explicit matmuls and a softmax.

The attention matmuls are left in float (`QUANTIZE_ATTENTION`; the quantizer takes them through
`set_function_type_qconfig(torch.matmul, ...)`): each would need its softmax output and its keys and values
requantized, and the softmax's probabilities, mostly near zero, are what per-tensor int8 represents worst.

The file `save_quantized` writes (`.pt2`) is the `torch.export` archive of the converted program, with
our metadata (model, classes, input size and transform, mode, torch and torchao versions) as an extra
file; `int8_program.load_quantized` reads it back (refusing other versions' files and any pickled
object), so that `cmtnet eval` and `cmtnet predict` take it as `--checkpoint`.
"""
import contextlib
import copy
import io
import itertools
import json
import tempfile
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Iterable, Iterator, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.utils import reparameterize_model
from torch.utils.data import Dataset

from ..checkpoints import atomic_write
from ..classification.data import build_dataset, eval_transform
from ..classification.evaluate import load_for_inference
from ..classification.options import ModelOptions
from ..engine.data import ImageFiles, ReadableImages, eval_loader, find_images, own_images
from ..engine.options import command_parser, option
from ..errors import CommandError, InputError
from ..int8_program import (QUANTIZED_FORMAT, QUANTIZED_META_FILE, QuantizedProgram, compile_cache_dir,
                            is_quantized_file, quantized_versions)
from ..models import set_model_fused_attn
from ..models.variants import VARIANT_ARGS
from .drop_check import MAX_IMAGES, PairedOutcomes, decide
from .int8_fallback import fallback_search, leave_in_float, op_labels, sensitivities

__all__ = ['MODES', 'QuantizeOptions', 'add_parser', 'calibration_batches', 'check_calibration_flags',
           'compare', 'compile_quantized', 'quantize_command', 'quantize_model', 'save_quantized']

PathLike = Union[str, Path]

MODES = ('int8', 'int8-bf16')

# whether the attention's two matmuls are quantized too (see the module docstring)
QUANTIZE_ATTENTION = False

# how activations are calibrated, the observer of their per-tensor range: histogram, the x86 quantizer's own
# (HistogramObserver: the range that minimizes the quantization error of the values seen), or minmax (the
# values' extremes)
CALIBRATIONS = ('histogram', 'minmax')
DEFAULT_CALIBRATION = 'histogram'

# the calibration images the tuning measures each op's sensitivity on
SENSITIVITY_IMAGES = 32

# the largest batch the exported program accepts (torch.export needs a bound on a dynamic dimension)
MAX_BATCH = 4096

# what the metadata of a quantized program must say, besides its format, mode and versions
_META_KEYS = ('model', 'num_classes', 'img_size', 'crop_pct', 'interpolation', 'class_names')


def check_calibration_flags(calibration_images: Optional[PathLike], data: Optional[PathLike],
                            calibration_size: int) -> None:
    """The calibration flags every int8 command takes (`--calibration-images`, `--data`,
    `--calibration-size`), checked before any model is built."""
    if calibration_images is not None and data is not None:
        raise InputError('give the calibration images as --calibration-images DIR or as --data ROOT, not both')
    if calibration_size < 1:
        raise InputError(f'--calibration-size must be positive, got {calibration_size}')


def calibration_batches(
        img_size: int,
        crop_pct: float = 0.875,
        interpolation: str = 'bicubic',
        images: Optional[PathLike] = None,
        data: Optional[PathLike] = None,
        limit: int = 256,
        batch_size: int = 32,
) -> Iterator[torch.Tensor]:
    """Float batches, eval-transformed as the model sees them, of at most `limit` calibration images.

    From `images` (any folder tree of images), or `data` (an ImageFolder root: its train/ split), or, with
    neither, the embedded digits' train split; unreadable images are skipped with a warning. The first
    `limit` images in order are taken: the calibration is the same on every run.
    """
    if images is not None and data is not None:
        raise InputError('give calibration images either as a folder of images or as an ImageFolder root, not both')
    if limit < 1 or batch_size < 1:
        raise InputError(f'the calibration size and batch must be positive, got {limit} and {batch_size}')
    dataset = ImageFiles(find_images([images])) if images is not None else build_dataset(data, 'train', img_size)
    readable = ReadableImages(dataset, eval_transform(img_size, crop_pct, interpolation))
    left = limit
    for batch in eval_loader(readable, min(batch_size, limit), workers=0):
        own = own_images(batch)[0][:left]
        if len(own):
            left -= len(own)
            yield own
        if left <= 0:
            return


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise InputError(f'quantization mode must be one of {", ".join(MODES)}, got {mode!r}')


def _export(model: nn.Module, img_size: int) -> torch.export.ExportedProgram:
    """`model` captured for inputs of any batch at `img_size` squares."""
    example = torch.randn(2, 3, img_size, img_size)
    batch = torch.export.Dim('batch', min=1, max=MAX_BATCH)
    return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))


def _quantizer(calibration: str):
    """torchao's x86 quantizer: weights per output channel (min-max), activations per tensor with the
    observer `calibration` names."""
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    from torchao.quantization.pt2e.observer import MinMaxObserver
    config = x86.get_default_x86_inductor_quantization_config()
    if calibration == 'minmax':
        activation = replace(config.input_activation, observer_or_fake_quant_ctr=MinMaxObserver)
        config = replace(config, input_activation=activation, output_activation=activation)
    quantizer = x86.X86InductorQuantizer().set_global(config)
    if QUANTIZE_ATTENTION:
        quantizer.set_function_type_qconfig(torch.matmul, config)
    return quantizer


@torch.no_grad()
def calibrated_graph(model: nn.Module, batches: Iterable[torch.Tensor], img_size: int, fold: bool = True,
                     calibration: str = DEFAULT_CALIBRATION) -> torch.fx.GraphModule:
    """The converted PT2E graph of the float `model`, its activation scales calibrated on `batches`, its
    weights still float behind their quantize / dequantize pairs: what `quantized_program` makes programs
    of, with or without ops left in float (deploy/int8_fallback.py). `model` is folded first
    (`reparameterize_model`, on a copy) unless `fold` is False, for a model folded already: not every timm
    reparameterization takes a second pass (FastViT's RepMixer fails on one)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    if calibration not in CALIBRATIONS:
        raise InputError(f'calibration must be one of {", ".join(CALIBRATIONS)}, got {calibration!r}')
    folded = reparameterize_model(model.eval()) if fold else model.eval()
    set_model_fused_attn(folded, False)  # explicit matmuls and softmax, which the quantizer enters (SDPA: one op)
    prepared = prepare_pt2e(_export(folded, img_size).module(), _quantizer(calibration))
    seen = 0
    for batch in batches:
        prepared(batch)
        seen += len(batch)
    if not seen:
        raise InputError('no calibration image could be read')
    with _without_qat_conv_bn_folding():
        return convert_pt2e(prepared, fold_quantize=False)


@contextlib.contextmanager
def _without_qat_conv_bn_folding() -> Iterator[None]:
    """convert_pt2e without its folding of quantization-aware-training conv + BatchNorm patterns. A graph from
    prepare_pt2e (post-training) has none, its conv-bn pairs fused before calibration; but any BatchNorm left
    (CMT's stem and IRFFN keep those after a GELU) sends the pass through dozens of pattern exports, most of the
    conversion's time, for the same graph."""
    from torchao.quantization.pt2e import quantize_pt2e
    fold = quantize_pt2e._fold_conv_bn_qat
    quantize_pt2e._fold_conv_bn_qat = lambda graph: graph
    try:
        yield
    finally:
        quantize_pt2e._fold_conv_bn_qat = fold


def _drop_unused_tensors(graph: torch.fx.GraphModule) -> None:
    """Remove the parameters and buffers that no node reads: the float weights that int8 ones replaced stay
    registered otherwise, and an export would save them."""
    used = {n.target for n in graph.graph.nodes if n.op == 'get_attr'}
    for name, _ in [*graph.named_parameters(), *graph.named_buffers()]:
        if name not in used:
            owner, _, attr = name.rpartition('.')
            delattr(graph.get_submodule(owner), attr)


def quantized_program(graph: torch.fx.GraphModule, float_ops: Sequence[str] = ()) -> torch.fx.GraphModule:
    """The int8 program of a `calibrated_graph` (left unchanged): the ops `float_ops` (node names, see
    int8_fallback.quantized_ops) left in float, the other weights int8 constants with their scales."""
    # torchao's own rule of which quantize nodes convert_pt2e folds into int8 constants
    from torchao.quantization.pt2e.constant_fold import constant_fold
    from torchao.quantization.pt2e.quantize_pt2e import _quant_node_constraint
    program = leave_in_float(copy.deepcopy(graph), float_ops)
    constant_fold(program, _quant_node_constraint)
    _drop_unused_tensors(program)
    return program


def quantize_model(model: nn.Module, batches: Iterable[torch.Tensor], img_size: int, mode: str = 'int8',
                   fold: bool = True, calibration: str = DEFAULT_CALIBRATION) -> torch.fx.GraphModule:
    """The int8 program (converted PT2E graph with int8 weights, not compiled) of the float `model`, every op
    the quantizer takes quantized (`calibrated_graph`, `quantized_program`); `mode` only says how it will
    run (`compile_quantized`), the graph is the same."""
    _check_mode(mode)
    return quantized_program(calibrated_graph(model, batches, img_size, fold, calibration))


def compile_quantized(program: nn.Module, mode: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The fast runnable of a quantized program: compiled by inductor, with freezing around each call only,
    under bfloat16 autocast for `int8-bf16`; float32 logits out. The first call compiles, and so does the
    first of a larger batch; a smaller one is padded to a compiled size (`QuantizedProgram`)."""
    _check_mode(mode)
    return QuantizedProgram(program, mode)


def save_quantized(path: PathLike, program: nn.Module, meta: Dict[str, Any]) -> None:
    """Write the quantized `program` (`quantize_model`) as a `torch.export` archive, atomically, with `meta`
    (model, num_classes, img_size, crop_pct, interpolation, class_names, mode; the tuning adds calibration and
    float_ops) and the format and the torch and torchao versions in its extra file. The weights of the ops
    quantized are stored in int8 with their scales; the nodes' provenance (source lines, modules) is not kept."""
    missing = [k for k in (*_META_KEYS, 'mode') if k not in meta]
    if missing:
        raise ValueError(f'the metadata of a quantized program lacks {", ".join(missing)}')
    _check_mode(meta['mode'])
    extra = {QUANTIZED_META_FILE: json.dumps({**meta, 'format': QUANTIZED_FORMAT, **quantized_versions()})}
    exported = _export(program, meta['img_size'])
    _drop_provenance(exported.graph)
    archive = io.BytesIO()
    torch.export.save(exported, archive, extra_files=extra)
    atomic_write(path, lambda f: _deflate_json(archive, f))


# node metadata that says where an op came from (source lines, modules, the passes that made it): half of the
# serialized graph, which loading parses into Python objects, and nothing that running the program reads
_PROVENANCE = ('stack_trace', 'nn_module_stack', 'source_fn_stack', 'from_node', 'torch_fn')


def _drop_provenance(graph: torch.fx.Graph) -> None:
    for node in graph.nodes:
        for key in _PROVENANCE:
            node.meta.pop(key, None)


def _deflate_json(archive: io.BytesIO, out: BinaryIO) -> None:
    """Copy the zip `archive` to `out` with its JSON entries (the serialized graph, as large as the int8
    weights of a small model) deflated; `torch.export.load` reads deflated entries, the tensors stay stored."""
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(out, 'w') as target:
        for item in source.infolist():
            deflate = item.filename.endswith('.json')
            target.writestr(item.filename, source.read(item),
                            compress_type=zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED)


@dataclass
class QuantizeOptions:
    """What `cmtnet quantize` does: which weights, calibrated on which images, checked on which, written where."""
    checkpoint: str = option(metavar='PATH',
                             help='float weights: our .safetensors / .pth, or a released checkpoint (with --model)')
    output: Path = option(flags=('--output', '-o'), metavar='PATH', help='quantized program to write (.pt2)')
    model: Optional[str] = option(None, choices=list(VARIANT_ARGS), help='CMT variant',
                                  unset='the one named in the checkpoint')
    img_size: Optional[int] = option(None, metavar='N', help='input side, a multiple of 32 (fixed in the program)',
                                     unset='the checkpoint\'s, else the native size')
    mode: str = option('int8', choices=list(MODES),
                       help='int8, or int8-bf16: int8 kernels with the float ops in bfloat16')
    calibration_images: Optional[str] = option(None, metavar='DIR', help='calibration images (any folder tree)',
                                               unset='--data ROOT/train, else the digits train split')
    data: Optional[str] = option(None, metavar='ROOT',
                                 help='ImageFolder root: calibrate on ROOT/train, check the accuracy on ROOT/val')
    val_images: Optional[str] = option(
        None, metavar='DIR', help='labelled images to check the accuracy on (an ImageFolder of class folders)',
        unset='ROOT/val of --data; the digits test split without --data and --calibration-images')
    calibration_size: int = option(256, metavar='N', help='calibration images')
    max_drop: float = option(1.0, metavar='POINTS',
                             help='refuse to write the program if its top-1 is lower than the float model\'s '
                                  'by more than this (percentage points)')
    strict_drop: bool = option(False, help='refuse whenever the measured drop is above --max-drop; without, refuse '
                                           'only when its whole 95%% interval is, and say when the images are too '
                                           'few to decide')
    tune: bool = option(True, help='when the drop is above --max-drop, return the quantized ops that cost the most '
                                   'accuracy to float, the fewest that bring the drop within it; --no-tune writes '
                                   'or refuses the program with every op quantized')
    max_trials: int = option(10, metavar='N', help='programs the tuning builds and checks at most')
    calibration: str = option(DEFAULT_CALIBRATION, choices=list(CALIBRATIONS),
                              help='activation ranges: histogram (the range of least quantization error) or '
                                   'minmax (the extremes seen)')
    batch_size: int = option(32, metavar='N', help='images per batch')
    compile: bool = option(True, help='check the accuracy on the compiled program, the int8 kernels that cmtnet '
                                      'eval and predict run; --no-compile checks its reference float ops instead, '
                                      'without the minutes compiling takes, but they round differently')
    workers: int = option(2, metavar='N', help='data loading processes of the accuracy check')

    def __post_init__(self) -> None:
        check_calibration_flags(self.calibration_images, self.data, self.calibration_size)
        if self.batch_size < 1:
            raise InputError(f'--batch-size must be positive, got {self.batch_size}')
        if self.max_drop < 0:
            raise InputError(f'--max-drop must not be negative, got {self.max_drop}')
        if self.max_trials < 1:
            raise InputError(f'--max-trials must be positive, got {self.max_trials}')


def _val_set(options: QuantizeOptions, img_size: int) -> Tuple[Optional[Dataset], str]:
    """(the labelled images to check the accuracy on or None, what they are)."""
    if options.val_images is not None:
        folder = Path(options.val_images).resolve()
        return build_dataset(folder.parent, folder.name, img_size), str(options.val_images)
    if options.data is not None:
        return build_dataset(options.data, 'val', img_size), f'{options.data}/val'
    if options.calibration_images is None:
        return build_dataset(None, 'test', img_size), 'the digits test split'
    return None, ''


@torch.no_grad()
def compare(reference: nn.Module, quantized: nn.Module, loader: Iterable) -> Dict[str, float]:
    """Top-1 (in %) of the float `reference` and of `quantized` (or any other model of it), how often their
    top-1 agree (in %), and the paired outcomes: the images `lost` (the reference right, `quantized` wrong)
    and `gained` (the reverse), on the batches of a `ReadableImages` loader; both models are put in eval mode."""
    reference.eval(), quantized.eval()
    counts = torch.zeros(6, dtype=torch.int64)  # images, reference right, quantized right, agreeing, lost, gained
    for batch in loader:
        images, targets, _ = own_images(batch)
        if not len(images):
            continue
        a, b = reference(images).argmax(1), quantized(images).argmax(1)
        a_right, b_right = a == targets, b == targets
        counts += torch.stack([torch.tensor(len(images)), a_right.sum(), b_right.sum(), (a == b).sum(),
                               (a_right & ~b_right).sum(), (~a_right & b_right).sum()])
    n = max(int(counts[0]), 1)
    return dict(count=int(counts[0]), reference=100 * int(counts[1]) / n, quantized=100 * int(counts[2]) / n,
                agreement=100 * int(counts[3]) / n, lost=int(counts[4]), gained=int(counts[5]))


@dataclass
class _Check:
    """A program, the ops it leaves in float, and its check against the float model (`compare`)."""
    program: torch.fx.GraphModule
    runnable: nn.Module
    float_ops: Sequence[str]
    result: Dict[str, float]

    @property
    def drop(self) -> float:
        return self.result['reference'] - self.result['quantized']


def _seconds_per_batch(runnable: nn.Module, images: torch.Tensor, rounds: int = 5) -> float:
    """The median time of `rounds` calls of `runnable` on `images` (compiled for them already)."""
    times = []
    with torch.no_grad():
        for _ in range(rounds):
            start = time.perf_counter()
            runnable(images)
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _tune(graph: torch.fx.GraphModule, model: nn.Module, calibration: Sequence[torch.Tensor],
          check: Callable[[Sequence[str]], _Check], first: _Check, options: QuantizeOptions) -> _Check:
    """The program with the fewest ops left in float (deploy/int8_fallback.py) within --max-drop, else the
    checked one of the smallest drop, printing each trial and what the fallback costs in speed."""
    images = torch.cat(list(calibration))[:SENSITIVITY_IMAGES]
    scores = sensitivities(graph, model, images)
    ranked = sorted(scores, key=scores.get, reverse=True)
    labels = dict(zip(ranked, op_labels(graph, ranked)))
    top = ', '.join(f'{labels[op]} {100 * scores[op]:.1f}%' for op in ranked[:3])
    print(f'tuning: {len(ranked)} quantized ops ranked by the share of the logit error on {len(images)} '
          f'calibration images that leaving each alone in float removes; most sensitive: {top}')
    trials = [first]

    def within(ops: Sequence[str]) -> bool:
        trials.append(check(ops))
        r = trials[-1].result
        print(f'trial {len(trials) - 1}: {len(ops)} op(s) in float: top-1 {r["quantized"]:.2f}% '
              f'(drop {trials[-1].drop:.2f} points), agreement {r["agreement"]:.2f}%')
        return trials[-1].drop <= options.max_drop
    _, ran = fallback_search(ranked, within, options.max_trials)
    passing = [t for t in trials if t.drop <= options.max_drop]
    best = (min(passing, key=lambda t: len(t.float_ops)) if passing
            else min(trials, key=lambda t: (t.drop, len(t.float_ops))))
    names = ', '.join(labels[op] for op in best.float_ops) or 'none'
    print(f'tuning: {ran} trial(s), {"a program within" if passing else "none within"} --max-drop '
          f'{options.max_drop:g}; left in float ({len(best.float_ops)}): {names}')
    if best is not first:
        if options.compile:
            images = next(iter(calibration))
            full, tuned = (_seconds_per_batch(t.runnable, images) for t in (first, best))
            print(f'speed: {1000 * tuned:.1f} ms a batch of {len(images)} with the ops left in float, '
                  f'{1000 * full:.1f} ms with every op quantized ({tuned / full:.2f}x the time), timed in this run')
        else:
            print('speed of the fallback not measured: --no-compile runs the reference ops')
    return best


def _report_drop(result: Dict[str, float], options: QuantizeOptions) -> str:
    """Print the drop with its interval and whether the images can decide --max-drop; return `decide`'s verdict."""
    outcomes = PairedOutcomes(result['count'], result['lost'], result['gained'])
    low, high = outcomes.interval()
    print(f'drop {outcomes.drop:.2f} points, 95% interval [{low:.2f}, {high:.2f}] (exact, from the paired '
          f'outcomes: {outcomes.lost} image(s) lost, {outcomes.gained} gained)')
    if high - low > options.max_drop:
        needed = outcomes.images_needed(options.max_drop)
        about = (f'about {needed} would be needed' if needed else
                 f'no set of up to {MAX_IMAGES} images would narrow it enough')
        print(f'{outcomes.count} images are too few to decide --max-drop {options.max_drop:g}: the interval is '
              f'wider than that; {about} (at the same rates of lost and gained images)')
    return decide(outcomes, options.max_drop, options.strict_drop)


def quantize_command(options: QuantizeOptions, write: bool = True) -> Dict[str, Any]:
    """`cmtnet quantize`: quantize, check the accuracy where labelled images are given (tuning the program to
    --max-drop), write the program (unless `write` is False: for a caller that only measures). Returns the
    program (`program`), the calibrated graph (`graph`) and, where measured, the top-1 of both models, their
    agreement and the paired outcomes, those of the program with every op quantized (`untuned`), the ops left
    in float (`float_ops`) and the checked `runnable`.

    A program checked compiled and written is compiled ahead of time, into a staging folder in the compile
    cache (`compile_cache_dir`), whence the written program's packages move under the file's name: the
    file's first `cmtnet eval` loads them instead of compiling it again."""
    if not (write and options.compile):
        return _quantize(options, write, staging=None)
    compile_cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='.staging-', dir=compile_cache_dir()) as staging:
        return _quantize(options, write, Path(staging))


def _quantize(options: QuantizeOptions, write: bool, staging: Optional[Path]) -> Dict[str, Any]:
    if is_quantized_file(options.checkpoint):
        raise InputError(f'--checkpoint {options.checkpoint} is quantized already; give the float weights')
    setup = load_for_inference(ModelOptions(checkpoint=options.checkpoint, model=options.model,
                                            img_size=options.img_size), torch.device('cpu'))
    model, size = setup['model'].eval(), setup['img_size']
    val, source = _val_set(options, size)
    if val is not None and len(val.classes) != setup['num_classes']:
        raise InputError(f'{options.checkpoint} classifies {setup["num_classes"]} classes, {source} has '
                         f'{len(val.classes)}')
    # kept: the tuning measures each op's sensitivity on them
    calibration = list(calibration_batches(size, setup['crop_pct'], setup['interpolation'],
                                           options.calibration_images, options.data, options.calibration_size,
                                           options.batch_size))
    graph = calibrated_graph(model, calibration, size, calibration=options.calibration)
    float_ops: Sequence[str] = ()
    result: Dict[str, Any] = dict(graph=graph)
    if val is None:
        print('accuracy not measured: no labelled images (give --val-images or --data)')
        result['program'] = quantized_program(graph)
    else:
        transform = eval_transform(size, setup['crop_pct'], setup['interpolation'])
        loader = eval_loader(ReadableImages(val, transform), options.batch_size, workers=options.workers)
        trial = itertools.count()

        def check(ops: Sequence[str]) -> _Check:
            program = quantized_program(graph, ops)
            # compiled, the program is what eval and predict run; its reference ops round otherwise than the
            # kernels, and their top-1 can differ
            cache = staging / f'trial{next(trial)}' if staging else None
            runnable = QuantizedProgram(program, options.mode, compile=options.compile, cache=cache)
            return _Check(program, runnable, tuple(ops), compare(model, runnable, loader))
        chosen = first = check(())
        ran = 'int8 kernels' if options.compile else 'reference ops'
        print(f'on {source} ({first.result["count"]} images): top-1 fp32 {first.result["reference"]:.2f}%, '
              f'{options.mode} ({ran}) {first.result["quantized"]:.2f}% (drop {first.drop:.2f} points); '
              f'top-1 agreement {first.result["agreement"]:.2f}%')
        if options.tune and first.drop > options.max_drop:
            chosen = _tune(graph, model, calibration, check, first, options)
        float_ops = op_labels(graph, chosen.float_ops)
        result.update(chosen.result, program=chosen.program, runnable=chosen.runnable, untuned=first.result,
                      float_ops=float_ops)
        verdict = _report_drop(chosen.result, options)
        if verdict == 'beyond':
            surely = '' if options.strict_drop else ' and so is all of its 95% interval'
            raise CommandError(f'not written: the {options.mode} top-1 is {chosen.drop:.2f} points below fp32, more '
                               f'than --max-drop {options.max_drop:g}{surely}')
        if verdict == 'undecided':
            print(f'{"written" if write else "kept"} although the images cannot decide whether the drop is within '
                  f'--max-drop {options.max_drop:g} (--strict-drop refuses a measured drop above it)')
    if not write:
        return result
    meta = {k: setup[k] for k in ('num_classes', 'img_size', 'crop_pct', 'interpolation', 'class_names')}
    options.output.parent.mkdir(parents=True, exist_ok=True)
    save_quantized(options.output, result['program'], dict(meta, model=setup['name'], mode=options.mode,
                                                           calibration=options.calibration, float_ops=float_ops))
    print(f'wrote {options.output} ({setup["name"]} at {size}px, {options.mode})')
    if 'runnable' in result and result['runnable'].keep_as(options.output):
        print(f'kept compiled in {compile_cache_dir()}: its first cmtnet eval or predict starts without compiling')
    return result


add_parser = command_parser(
    'quantize', QuantizeOptions, quantize_command,
    help='int8 post-training quantization of a classifier (torchao PT2E, x86)',
    description='Quantize a classifier to int8 (static, per-channel weights), calibrated on images, checked '
                'against the float model on labelled images, and written as a program that cmtnet eval and '
                'cmtnet predict take as --checkpoint.')
