"""Export a CMT for deployment: ONNX (checked against onnxruntime) or TorchScript, from the fused model.

The exported graph is the inference-folded model (`timm.utils.reparameterize_model`, models/fuse.py) built
with `dynamic_img_size`, so one file serves any batch and any input side that is a multiple of 32: the
position-bias resize stays in the graph. ONNX goes through the TorchScript-based exporter, traced at a size
other than the model's own so that the resize is recorded (at the model's own size it is then an exact
identity) and the batch, height and width axes are left dynamic; TorchScript is `torch.jit.script`, which
keeps the Python control flow. Every export is run back (onnxruntime, or the loaded TorchScript module) at
the model's own size and another, and compared with the unfused eager model.

    cmtnet export cmt_s --checkpoint run/best.safetensors --format onnx --output cmt_s.onnx
"""
import argparse
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.utils import reparameterize_model

from ..checkpoints import create_model
from ..engine.options import add_command, option
from ..errors import CommandError, InputError
from ..models import NET_STRIDE, check_img_size, native_img_size

__all__ = ['ExportOptions', 'export_model', 'export_onnx', 'export_torchscript', 'parity', 'add_parser']

FORMATS = ('onnx', 'torchscript')


@dataclass
class ExportOptions:
    """What `cmtnet export` does: which model and weights, which format, where, and how it is checked."""
    model: str = option(positional=True, help='CMT variant (cmt_ti, cmt_xs, cmt_s, cmt_b)')
    output: Path = option(flags=('--output', '-o'), help='file to write (.onnx or .pt)')
    format: str = option('onnx', choices=FORMATS, help='file format')
    checkpoint: Optional[Path] = option(None, help='weights: our .safetensors/.pth or a released checkpoint')
    fuse: bool = option(True, flags=('--no-fuse',), help='export the unfused model')
    opset: int = option(18, help='ONNX opset (17 or more)')
    check_sizes: List[int] = option(default_factory=list, help='input sides to check the export at',
                                    unset='the model\'s own and 32 less')
    batch_size: int = option(2, help='batch of the parity check')
    tolerance: float = option(1e-4, help='largest relative error accepted')

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise InputError(f'--format must be one of {", ".join(FORMATS)}, got {self.format!r}')
        if self.opset < 17:
            raise InputError(f'--opset must be 17 or more (LayerNormalization), got {self.opset}')
        for size in self.check_sizes:
            check_img_size(size, 'a --check-sizes entry')
        if self.batch_size < 1:
            raise InputError(f'--batch-size must be positive, got {self.batch_size}')


def _other_size(size: int) -> int:
    return size - NET_STRIDE if size > NET_STRIDE else size + NET_STRIDE


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


def export_model(options: ExportOptions) -> Tuple[Dict[int, float], nn.Module]:
    """Build (and fuse) the model, export it and check it: (relative error per checked size, the model)."""
    size = native_img_size(options.model)
    reference = create_model(options.model, options.checkpoint, dynamic_img_size=True).eval()
    model = reparameterize_model(reference) if options.fuse else reference
    options.output.parent.mkdir(parents=True, exist_ok=True)
    if options.format == 'onnx':
        export_onnx(model, options.output, size, options.opset)
    else:
        export_torchscript(model, options.output)
    sizes = options.check_sizes or [size, _other_size(size)]
    return parity(options.output, options.format, reference, sizes, options.batch_size), model


def _run(options: ExportOptions) -> int:
    errors, _ = export_model(options)
    for size, err in errors.items():
        print(f'{options.format} parity at {size}x{size}: max |diff| / max |logit| = {err:.2e}')
    worst = max(errors.values())
    if not worst <= options.tolerance:
        raise CommandError(f'{options.output} differs from the eager model by {worst:.2e} (relative), '
                           f'more than --tolerance {options.tolerance:g}')
    print(f'wrote {options.output}')
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return add_command(
        subparsers, 'export', ExportOptions, _run, description=__doc__.split('\n\n')[0],
        help='export a CMT (fused for inference) to ONNX or TorchScript, checked against eager')
