"""Export a CMT for deployment: ONNX (float32 or int8, checked with onnxruntime) or TorchScript, fused.

The exported graph is the inference-folded model (`timm.utils.reparameterize_model`, models/fuse.py) built
with `dynamic_img_size`, so one file serves any batch and any input side that is a multiple of 32: the
position-bias resize stays in the graph. ONNX goes through the TorchScript-based exporter, traced at a size
other than the model's own so that the resize is recorded (at the model's own size it is then an exact
identity) and the batch, height and width axes are left dynamic; TorchScript is `torch.jit.script`, which
keeps the Python control flow. Every export is run back (onnxruntime, or the loaded TorchScript module) at
the checkpoint's input size (the variant's own without one) and another, and compared with the unfused eager
model. The model name comes from the checkpoint where it records one (our .safetensors do).

An ONNX file carries what a client needs besides the graph, as its metadata (`metadata_props`, strings;
onnxruntime's `get_modelmeta().custom_metadata_map`): `model`, `img_size`, `crop_pct`, `interpolation`,
`mean` and `std` (JSON lists) and `class_names` (a JSON list, the labels `cmtnet predict` prints). An image
prepared as `classification.data.eval_transform` does with them gives the logits of `cmtnet predict`.

    cmtnet export --checkpoint run/best.safetensors --format onnx --output cmt_s.onnx
    cmtnet export cmt_s --checkpoint cmt_small.pth --output cmt_s.onnx       # a released checkpoint

`--quantize int8` writes instead the int8 form of that ONNX file: onnxruntime's static post-training
quantization in the QDQ format (QuantizeLinear / DequantizeLinear pairs on the inputs of every Conv and
MatMul, which onnxruntime's CPU provider runs as integer kernels; the classifier stays float), weights int8
per output channel (a fused conv's
channels carry their folded BatchNorm scales, which differ widely), activations uint8 with ranges measured
(min-max) on real images: `--calibration-images DIR`, the train/ split of `--data ROOT`, or the embedded
digits' train split, `--calibration-size` of them. The file is checked by running it on the next images of
the same source, held out from the calibration, against the eager model: an int8 model does not reproduce
the float logits, so the check is the top-1 agreement (`--min-agreement`) and the largest relative logit
error is reported beside it.

The int8 graph is fixed in height and width (the batch stays free), at the checkpoint's input size (the
variant's own without one). onnxruntime's pre-processing (symbolic shape inference, then constant folding)
fails on the graph with free height and width, and the activation ranges are measured at one size only; the
fixed graph also drops the position-bias resize.

    cmtnet export cmt_s --checkpoint run/best.safetensors --quantize int8 --data /path/imagenet -o cmt_s_int8.onnx
"""
import json
import tempfile
import warnings
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.utils import reparameterize_model

from ..checkpoints import atomic_write, checkpoint_info, create_model
from ..classification.predict import class_labels
from ..engine.options import command_parser, option
from ..errors import CommandError, InputError, did_you_mean
from ..models import NET_STRIDE, VARIANT_ARGS, check_img_size, native_img_size, set_model_fused_attn
from .quantize import calibration_batches, check_calibration_flags

__all__ = ['ExportOptions', 'Int8Check', 'agreement', 'export_int8', 'export_model', 'export_onnx',
           'export_torchscript', 'parity', 'quantize_onnx', 'add_parser', 'write_onnx_metadata']

FORMATS = ('onnx', 'torchscript')
QUANTIZATIONS = ('int8',)
# the ops whose inputs are quantized: the convolutions and the attention's products, which onnxruntime's CPU
# provider runs as integer kernels. Around the others (LayerNorm, Softmax, GELU, the adds) a QDQ pair would only
# round a float tensor on its way through; the classifier (Gemm) is a negligible share of the work, and its
# rounding goes straight into the logits
QUANTIZED_OPS = ('Conv', 'MatMul')
# images, after the calibration ones, that an int8 file is checked on
CHECK_IMAGES = 128


@dataclass
class ExportOptions:
    """What `cmtnet export` does: which model and weights, which format, where, and how it is checked."""
    model: Optional[str] = option(None, positional=True, help='CMT variant (cmt_ti, cmt_xs, cmt_s, cmt_b)',
                                  unset='the one named in the checkpoint')
    _: KW_ONLY  # the rest by keyword only, as `model` may be left out
    output: Path = option(flags=('--output', '-o'), help='file to write (.onnx or .pt)')
    format: str = option('onnx', choices=FORMATS, help='file format')
    checkpoint: Optional[Path] = option(None, help='weights: our .safetensors/.pth or a released checkpoint')
    fuse: bool = option(True, flags=('--no-fuse',), help='export the unfused model')
    opset: int = option(18, help='ONNX opset (17 or more)')
    check_sizes: List[int] = option(default_factory=list, help='input sides to check the export at',
                                    unset='the model\'s own and 32 less')
    batch_size: int = option(2, help='batch of the parity check of a float export')
    tolerance: float = option(1e-4, help='largest relative error of a float export accepted')
    quantize: Optional[str] = option(None, choices=QUANTIZATIONS, group='int8',
                                     help='quantize the ONNX file: int8 is onnxruntime\'s static QDQ quantization',
                                     unset='none, a float32 file')
    calibration_images: Optional[Path] = option(None, metavar='DIR', group='int8',
                                                help='images to calibrate on: any folder tree of images',
                                                unset='the digits\' train split')
    data: Optional[Path] = option(None, metavar='ROOT', group='int8',
                                  help='images to calibrate on: the train/ split of this ImageFolder root')
    calibration_size: int = option(256, metavar='N', group='int8', help='images to calibrate on')
    min_agreement: float = option(0.9, metavar='F', group='int8',
                                  help='smallest top-1 agreement of the int8 file with the eager model accepted')

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise InputError(f'--format must be one of {", ".join(FORMATS)}, got {self.format!r}')
        if self.quantize is not None:
            self._check_quantization()
        elif self.calibration_images is not None or self.data is not None:
            raise InputError('--calibration-images and --data are the calibration images of --quantize int8, '
                             'which is not given')
        if self.opset < 17:
            raise InputError(f'--opset must be 17 or more (LayerNormalization), got {self.opset}')
        for size in self.check_sizes:
            check_img_size(size, 'a --check-sizes entry')
        if self.batch_size < 1:
            raise InputError(f'--batch-size must be positive, got {self.batch_size}')

    def _check_quantization(self) -> None:
        if self.quantize not in QUANTIZATIONS:
            raise InputError(f'--quantize must be one of {", ".join(QUANTIZATIONS)}, got {self.quantize!r}')
        if self.format != 'onnx':
            raise InputError(f'--quantize {self.quantize} writes an onnxruntime QDQ model and needs --format onnx, '
                             f'not --format {self.format}')
        if self.check_sizes:
            raise InputError('--check-sizes does not apply to --quantize int8: its graph takes one input size, '
                             'at which it is checked')
        check_calibration_flags(self.calibration_images, self.data, self.calibration_size)
        if not 0 <= self.min_agreement <= 1:
            raise InputError(f'--min-agreement must be between 0 and 1, got {self.min_agreement}')


def _other_size(size: int) -> int:
    return size - NET_STRIDE if size > NET_STRIDE else size + NET_STRIDE


def _folded(model: nn.Module) -> nn.Module:
    """`model` folded for an exported graph (a copy): the attention explicit, matmuls and a softmax that
    onnxruntime and the int8 quantizer take op by op (SDPA with a float mask is one op to them)."""
    folded = reparameterize_model(model)
    set_model_fused_attn(folded, False)
    return folded


def export_onnx(model: nn.Module, path: Path, img_size: int, opset: int = 18, dynamic: bool = True) -> None:
    """Write `model` (eval) as ONNX. `dynamic`: any batch, height and width (the model must be built with
    dynamic_img_size); else only the batch is (the graph is for `img_size` squares, without the bias resize)."""
    other = _other_size(img_size) if dynamic else img_size  # not the own size: the resize is traced
    x = torch.randn(1, model.in_chans, img_size, other)
    axes = {'images': {0: 'batch', 2: 'height', 3: 'width'} if dynamic else {0: 'batch'}, 'logits': {0: 'batch'}}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the tracer's notes on Python conditions over shapes (checks)
        torch.onnx.export(
            model, (x,), str(path), dynamo=False, opset_version=opset,
            input_names=['images'], output_names=['logits'], dynamic_axes=axes,
        )


def export_torchscript(model: nn.Module, path: Path) -> None:
    """Write `model` as a scripted TorchScript module (any batch and input size it accepts in eager)."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # torch.jit is deprecated, not gone
        torch.jit.save(torch.jit.script(model), str(path))


def _runner(path: Path, fmt: str):
    if fmt == 'onnx':
        import onnxruntime as ort
        session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
        return lambda x: torch.from_numpy(session.run(None, {'images': x.numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)
        module = torch.jit.load(str(path))
    return lambda x: module(x)


def parity(path: Path, fmt: str, reference: nn.Module, sizes: Sequence[int], batch_size: int = 2) -> Dict[int, float]:
    """max |exported - reference| / max |reference| of the logits, per input side, on random images."""
    run = _runner(path, fmt)
    errors = {}
    generator = torch.Generator().manual_seed(0)
    for size in sizes:
        x = torch.randn(batch_size, reference.in_chans, size, size, generator=generator)
        with torch.no_grad():
            expected, got = reference(x), run(x)
        errors[size] = ((got - expected).abs().max() / expected.abs().max()).item()
    return errors


class _Batches:
    """onnxruntime's calibration data reader (its `get_next` protocol; onnxruntime is imported only where a
    file is quantized) over a sequence of image batches."""

    def __init__(self, batches: Sequence[torch.Tensor]):
        self._batches = iter(batches)

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        batch = next(self._batches, None)
        return None if batch is None else {'images': batch.numpy()}


def quantize_onnx(fp32: Path, path: Path, batches: Sequence[torch.Tensor]) -> None:
    """Write the int8 QDQ form of the ONNX file `fp32` (fixed height and width) to `path`, its activation
    ranges calibrated on `batches` (images as the model takes them)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    with tempfile.TemporaryDirectory(prefix='cmtnet-int8-') as tmp:
        prepared, quantized = Path(tmp) / 'prepared.onnx', Path(tmp) / 'int8.onnx'
        quant_pre_process(str(fp32), str(prepared))  # shapes for every tensor, constants folded
        quantize_static(
            str(prepared), str(quantized), _Batches(batches), quant_format=QuantFormat.QDQ,
            calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=list(QUANTIZED_OPS),
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        data = quantized.read_bytes()
    atomic_write(path, lambda f: f.write(data))


def agreement(path: Path, reference: nn.Module, images: torch.Tensor, batch_size: int = 32) -> Tuple[float, float]:
    """(share of `images` whose top-1 class the ONNX file at `path` and `reference` agree on,
    max |exported - reference| / max |reference| of the logits)."""
    run = _runner(path, 'onnx')
    got, expected = [], []
    for batch in images.split(batch_size):
        with torch.no_grad():
            expected.append(reference(batch))
        got.append(run(batch))
    got, expected = torch.cat(got), torch.cat(expected)
    same = (got.argmax(dim=1) == expected.argmax(dim=1)).float().mean().item()
    return same, ((got - expected).abs().max() / expected.abs().max()).item()


@dataclass
class Int8Check:
    """How an int8 file compares with the eager model, on images it was not calibrated on where there were
    more than the calibration took."""
    img_size: int
    images: int
    held_out: bool
    agreement: float
    rel_err: float


@dataclass
class _Source:
    """What is exported: the variant, and the input size, crop, interpolation and labels of its checkpoint's
    training (the variant's defaults without a checkpoint)."""
    model: str
    img_size: int
    crop_pct: float
    interpolation: str
    class_names: List[str]


def _source(options: ExportOptions) -> _Source:
    """The model name (given, or else the checkpoint's) and the checkpoint's input set-up; InputError where
    neither names a model."""
    num_classes, meta = checkpoint_info(options.checkpoint) if options.checkpoint is not None else (1000, {})
    name = options.model or meta.get('model')
    if name is None:
        where = (f'{options.checkpoint} does not record one' if options.checkpoint is not None
                 else 'there is no --checkpoint to read it from')
        raise InputError(f'give the model name, one of {", ".join(VARIANT_ARGS)} (`cmtnet export cmt_s ...`): {where}')
    if name not in VARIANT_ARGS:
        raise InputError(f'unknown model {name!r}; expected one of {", ".join(VARIANT_ARGS)}'
                         f'{did_you_mean(name, VARIANT_ARGS)}')
    size = meta.get('img_size', native_img_size(name))
    check_img_size(size, f'the input size of {options.checkpoint}')
    return _Source(name, size, meta.get('crop_pct', 0.875), meta.get('interpolation', 'bicubic'),
                   class_labels(num_classes, meta.get('class_names')))


def _onnx_metadata(source: _Source) -> Dict[str, str]:
    """The ONNX metadata of an export: what a client needs to prepare an image as `eval_transform` does (its
    normalisation is timm's ImageNet mean and std) and to name the classes."""
    return dict(model=source.model, img_size=str(source.img_size), crop_pct=str(source.crop_pct),
                interpolation=source.interpolation, mean=json.dumps(list(IMAGENET_DEFAULT_MEAN)),
                std=json.dumps(list(IMAGENET_DEFAULT_STD)), class_names=json.dumps(source.class_names))


def write_onnx_metadata(path: Path, metadata: Dict[str, str]) -> None:
    """Set the `metadata_props` of the ONNX file at `path`."""
    import onnx
    graph = onnx.load(str(path))
    onnx.helper.set_model_props(graph, metadata)
    data = graph.SerializeToString()
    atomic_write(path, lambda f: f.write(data))


def _shown_metadata(metadata: Dict[str, str]) -> str:
    """The metadata as `export` prints it: every entry, a long list of class names cut short."""
    names = json.loads(metadata['class_names'])
    shown = dict(metadata)
    if len(names) > 10:
        shown['class_names'] = json.dumps(names[:5])[:-1] + f', ... ({len(names)} names)]'
    return 'ONNX metadata: ' + '; '.join(f'{k} {v}' for k, v in shown.items())


def export_int8(options: ExportOptions) -> Tuple[Int8Check, nn.Module]:
    """Export the model (fused) as fp32 ONNX at one input size, quantize it to int8 on calibration images and
    check it on the images that follow them: (the check, the model)."""
    source = _source(options)
    size = source.img_size
    batches = list(calibration_batches(size, source.crop_pct, source.interpolation, options.calibration_images,
                                       options.data, limit=options.calibration_size + CHECK_IMAGES))
    if not batches:
        raise InputError(f'no readable calibration image in {options.calibration_images or options.data}')
    images = torch.cat(batches)
    calibration, held_out = images[:options.calibration_size], images[options.calibration_size:]
    reference = create_model(source.model, options.checkpoint, img_size=size, dynamic_img_size=True).eval()
    model = _folded(reference) if options.fuse else reference
    options.output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='cmtnet-export-') as tmp:
        fp32 = Path(tmp) / 'fp32.onnx'
        export_onnx(model, fp32, size, options.opset, dynamic=False)
        quantize_onnx(fp32, options.output, calibration.split(32))
    write_onnx_metadata(options.output, _onnx_metadata(source))
    checked = held_out if len(held_out) else calibration  # a folder too small to hold any out
    same, err = agreement(options.output, reference, checked)
    return Int8Check(size, len(checked), bool(len(held_out)), same, err), model


def export_model(options: ExportOptions) -> Tuple[Dict[int, float], nn.Module]:
    """Build (and fuse) the model at its checkpoint's input size, export it (ONNX with its metadata) and
    check it: (relative error per checked size, the model)."""
    source = _source(options)
    size = source.img_size
    reference = create_model(source.model, options.checkpoint, img_size=size, dynamic_img_size=True).eval()
    model = _folded(reference) if options.fuse else reference
    options.output.parent.mkdir(parents=True, exist_ok=True)
    if options.format == 'onnx':
        export_onnx(model, options.output, size, options.opset)
        write_onnx_metadata(options.output, _onnx_metadata(source))
    else:
        export_torchscript(model, options.output)
    sizes = options.check_sizes or [size, _other_size(size)]
    return parity(options.output, options.format, reference, sizes, options.batch_size), model


def _onnx_file_metadata(path: Path) -> Dict[str, str]:
    """The metadata an ONNX file holds."""
    import onnx
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _run_int8(options: ExportOptions) -> int:
    check, _ = export_int8(options)
    images = f'{check.images} {"held-out" if check.held_out else "calibration"} images'
    print(f'int8 check at {check.img_size}x{check.img_size} on {images}: top-1 agreement with the eager model '
          f'{check.agreement:.1%}, max |diff| / max |logit| = {check.rel_err:.2e}')
    if not check.agreement >= options.min_agreement:
        raise CommandError(f'{options.output} agrees with the eager model on {check.agreement:.1%} of the images, '
                           f'less than --min-agreement {options.min_agreement:g}')
    print(_shown_metadata(_onnx_file_metadata(options.output)))
    print(f'wrote {options.output}')
    return 0


def _run(options: ExportOptions) -> int:
    if options.quantize is not None:
        return _run_int8(options)
    errors, _ = export_model(options)
    for size, err in errors.items():
        print(f'{options.format} parity at {size}x{size}: max |diff| / max |logit| = {err:.2e}')
    worst = max(errors.values())
    if not worst <= options.tolerance:
        raise CommandError(f'{options.output} differs from the eager model by {worst:.2e} (relative), '
                           f'more than --tolerance {options.tolerance:g}')
    if options.format == 'onnx':
        print(_shown_metadata(_onnx_file_metadata(options.output)))
    print(f'wrote {options.output}')
    return 0


add_parser = command_parser(
    'export', ExportOptions, _run, description=__doc__.split('\n\n')[0],
    help='export a CMT (fused for inference) to ONNX, int8 ONNX or TorchScript, checked against eager')
