"""Weight files without the training engine: a model from a checkpoint, a checkpoint's metadata, exported
weights, atomic writes and a safe `torch.load`.

`cmtnet eval`, `predict`, `export` and the detectors load models through this module, and the engine
writes its files through it, so that loading a model never imports the training code.

- `create_model(name, checkpoint)`: `timm.create_model` with weights from any accepted file: our
  `.safetensors` / `.pth`, or the authors' released checkpoint.
- `checkpoint_info(path)`: the classifier's number of classes and our metadata (model name, input size,
  class names, ...) of such a file, read without building a model.
- `export_weights(path, state_dict, meta)`: weights alone as `.safetensors`, in timm's key names, with the
  metadata in the header. timm loads them as any other checkpoint.
- `atomic_write(path, write)`: every file is written to a temporary file, fsync'ed, then renamed over the
  old one, so that a crash at any moment leaves the old file or the new one, never a torn one.
- `safe_torch_load(path)`: `torch.load(weights_only=True)` after checking that the file can be a checkpoint
  at all; it never unpickles arbitrary objects.
- `load_quantized(path)` and `is_quantized_file(path)`: the int8 program that `cmtnet quantize` writes
  (deploy/quantize.py), a `torch.export` archive with our metadata, as a runnable module. Here rather than
  in deploy/ so that `cmtnet eval` and `predict` take it as `--checkpoint` like any other weight file.
"""
import argparse
import contextlib
import importlib.metadata
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Sequence, Tuple, Union

import safetensors
import safetensors.torch
import timm
import torch
import torch.nn as nn

from .errors import InputError
from .models.released import classifier_classes, not_a_checkpoint, unwrap_state_dict

__all__ = [
    'QUANTIZED_FORMAT', 'QUANTIZED_META_FILE', 'PathLike', 'QuantizedProgram', 'atomic_write', 'checkpoint_info',
    'create_model', 'export_weights', 'is_quantized_file', 'load_quantized', 'quantized_versions',
    'safe_torch_load', 'task_checkpoint_meta',
]

PathLike = Union[str, Path]

# where our metadata sits in a .safetensors header, as one JSON string
_META_KEY = 'cmtnet'

# the format tag of a `cmtnet quantize` program, and the archive's extra file that holds its metadata
QUANTIZED_FORMAT = 'cmtnet-quantized-pt2e/1'
QUANTIZED_META_FILE = 'cmtnet.json'


def atomic_write(path: PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Write a file through `write(file)` so that it appears whole or not at all."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    try:
        with open(tmp, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    # make the rename itself durable
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _check_checkpoint_file(path: Path) -> None:
    """Raise InputError, naming the problem, if `path` is missing or cannot be a checkpoint at all."""
    if not path.is_file():
        raise InputError(f'checkpoint {path} does not exist')
    problem = not_a_checkpoint(path)
    if problem:
        raise InputError(f'cannot load {path}: {problem}')


def safe_torch_load(path: PathLike) -> Any:
    """The contents of a `torch.save` file, tensors and plain containers only, on the CPU; InputError for a
    missing file, a file that is no checkpoint, or one that holds other objects."""
    path = Path(path)
    _check_checkpoint_file(path)
    try:
        # training checkpoints (the authors', timm's) often hold their options as an argparse.Namespace,
        # a plain attribute bag that timm's loader allows too
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # unpickling errors come in several types, all mean the same to the user
        raise InputError(f'{path} is not a checkpoint that can be loaded safely (weights only): {e}') from e


def export_weights(path: PathLike, state_dict: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> None:
    """Export weights as .safetensors, with `meta` (model, img_size, class_names, ...) in the header."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    data = safetensors.torch.save(tensors, metadata={'format': 'pt', _META_KEY: json.dumps(meta)})
    atomic_write(path, lambda f: f.write(data))


def checkpoint_info(path: PathLike) -> Tuple[int, Dict[str, Any]]:
    """(number of classes of the classifier, our metadata or {}) of a weight file of any accepted kind:
    our .safetensors / .pth, or a released checkpoint (a dict whose 'model' is the state_dict)."""
    path = Path(path)
    if path.suffix == '.safetensors':
        _check_checkpoint_file(path)
        try:
            with safetensors.safe_open(str(path), framework='pt') as f:
                meta = json.loads((f.metadata() or {}).get(_META_KEY, '{}'))
                shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
        except safetensors.SafetensorError as e:
            raise InputError(f'{path} is not a readable .safetensors file: {e}') from e
    else:
        checkpoint = safe_torch_load(path)
        if not isinstance(checkpoint, dict):
            raise InputError(f'{path} holds a {type(checkpoint).__name__}, not a state_dict')
        meta = checkpoint.get('meta', {})
        shapes = {k: tuple(v.shape) for k, v in unwrap_state_dict(checkpoint).items() if isinstance(v, torch.Tensor)}
    return classifier_classes(shapes), meta


def task_checkpoint_meta(path: Optional[PathLike], task: str, command: str) -> Dict[str, Any]:
    """The metadata of a weight file that a `task` run (`command`, e.g. 'cmtnet detect train') exported
    (`model.safetensors`, `best.safetensors`, ...); InputError if none is given, or the file is not one such
    a run wrote."""
    if path is None:
        raise InputError(f'--checkpoint is required: a weight file written by `{command}`')
    path = Path(path)
    if path.suffix != '.safetensors':
        raise InputError(f'--checkpoint {path}: expected a .safetensors file a {task} run wrote '
                         f'(model.safetensors, best.safetensors, model_ema.safetensors)')
    _, meta = checkpoint_info(path)
    if meta.get('task') != task:
        raise InputError(f'--checkpoint {path} was not written by `{command}` (no {task} metadata)')
    return meta


def create_model(name: str, checkpoint: Optional[PathLike] = None, **kwargs: Any) -> nn.Module:
    """`timm.create_model(name, **kwargs)`, with weights from `checkpoint` if given.

    The checkpoint loads through timm (`pretrained_cfg_overlay=dict(file=...)`) and the model's
    checkpoint filter, which resizes the position biases to the model's img_size. Its classifier is kept
    when `num_classes` matches it (the default) and reset otherwise.
    """
    if checkpoint is None:
        return timm.create_model(name, **kwargs)
    checkpoint_classes, _ = checkpoint_info(checkpoint)
    if kwargs.get('num_classes') is None:
        kwargs['num_classes'] = checkpoint_classes
    try:
        return timm.create_model(
            name, pretrained=True,
            pretrained_cfg_overlay=dict(file=str(checkpoint), num_classes=checkpoint_classes), **kwargs)
    except ValueError as e:  # the checkpoint filter names what does not fit
        raise InputError(f'cannot load {checkpoint} into {name}: {e}') from e


# --- int8 programs (`cmtnet quantize`) ---------------------------------------------------------------

def quantized_versions() -> Dict[str, str]:
    """The torch and torchao versions a quantized program is written and read with: a `torch.export` archive
    and torchao's quantized ops are only known to load and lower correctly under the versions that made them."""
    return {'torch': torch.__version__, 'torchao': importlib.metadata.version('torchao')}


def _archive_entry(names: Sequence[str], entry: str) -> Optional[str]:
    """The name of `entry` (a path inside the archive's root folder) among the zip's `names`, or None."""
    return next((n for n in names if n.split('/', 1)[-1] == entry), None)


def _quantized_meta(path: Path) -> Optional[Dict[str, Any]]:
    """Our metadata of a quantized program file, or None if `path` is not one (not a zip, or a zip without
    our extra file: a torch.save checkpoint is a zip too)."""
    from torch.export.pt2_archive.constants import EXTRA_DIR
    if not path.is_file() or not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        entry = _archive_entry(archive.namelist(), EXTRA_DIR + QUANTIZED_META_FILE)
        if entry is None:
            return None
        try:
            meta = json.loads(archive.read(entry))
        except ValueError:
            return None
    return meta if isinstance(meta, dict) and meta.get('format') == QUANTIZED_FORMAT else None


def is_quantized_file(path: PathLike) -> bool:
    """Whether `path` is a program written by `cmtnet quantize` (read without loading it)."""
    return _quantized_meta(Path(path)) is not None


def _check_no_pickles(path: Path) -> None:
    """Raise InputError unless every object of the archive loads without unpickling arbitrary objects.

    `torch.export.load` unpickles weights and constants flagged `use_pickle` (tensor subclasses, script
    and opaque objects) and falls back to an unrestricted `torch.load` for sample inputs it cannot read
    safely; a quantized CMT has none of these, so a file that has them is refused before loading it."""
    from torch.export.pt2_archive import constants as pt2
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        problems = []
        for config_name in (pt2.WEIGHTS_CONFIG_FILENAME_FORMAT, pt2.CONSTANTS_CONFIG_FILENAME_FORMAT):
            entry = _archive_entry(names, config_name.format('model'))
            config = json.loads(archive.read(entry)).get('config', {}) if entry else {}
            problems += [name for name, item in config.items() if item.get('use_pickle')
                         or config_name == pt2.CONSTANTS_CONFIG_FILENAME_FORMAT
                         and not item.get('path_name', '').startswith(pt2.TENSOR_CONSTANT_FILENAME_PREFIX)]
        if _archive_entry(names, f'{pt2.CONSTANTS_DIR}model.pt') is not None:
            problems.append('legacy constants')
        inputs = _archive_entry(names, pt2.SAMPLE_INPUTS_FILENAME_FORMAT.format('model'))
        if inputs is not None and archive.getinfo(inputs).file_size:
            try:
                torch.load(io.BytesIO(archive.read(inputs)), weights_only=True)
            except Exception:  # any failure means the loader would retry without weights_only
                problems.append('sample inputs')
    if problems:
        raise InputError(f'{path} holds pickled objects ({", ".join(problems[:3])}), which are not loaded; '
                         f'a file written by cmtnet quantize has none')


class QuantizedProgram(nn.Module):
    """A quantized program (the converted PT2E graph) as a model for inference.

    With `compile` the program runs through `torch.compile` (inductor lowers the quantize / dequantize pairs
    around convs and linears to int8 oneDNN kernels; without, the graph's reference ops run in float, slowly,
    and round otherwise than the kernels, so that their outputs are close to the compiled ones, not equal).
    Inductor's freezing (weight prepacking, which the int8 kernels need) is set around each call only, never
    process-wide. The `int8-bf16` mode runs under bfloat16 autocast, the
    int8-mixed-bf16 recipe of torchao. The outputs are float32. An exported graph cannot switch between
    train and eval: this module is for inference only and refuses `train()`.

    Compiled, a batch smaller than one already compiled for (the last batch of a val set, a batch short of
    unreadable images) is padded with zeros to that size and its outputs cut back: each image's logits do
    not depend on the others' (a batch of one can round otherwise than a larger one, by an int8 step here
    and there, padded or not), and computing the padding costs far less than inductor's compile for a new
    batch size, which takes minutes.
    """

    def __init__(self, program: nn.Module, mode: str, compile: bool = True):
        super().__init__()
        self.program = program
        self.mode = mode
        self.training = False
        # imported for its side effect: it registers torchao's int8 fusion passes with inductor
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401
        self.compiled = compile
        self._run = torch.compile(program) if compile else program
        self.compiled_batch_sizes: List[int] = []  # the batch sizes compiled so far, ascending

    def train(self, mode: bool = True) -> 'QuantizedProgram':
        if mode:
            raise RuntimeError('a quantized program is for inference only; train the float model and quantize it')
        return self

    def _padded(self, images: torch.Tensor) -> torch.Tensor:
        """`images` padded with zeros to the smallest batch size compiled that holds them; a larger batch
        is compiled for."""
        n = images.shape[0]
        size = next((b for b in self.compiled_batch_sizes if b >= n), None)
        if size is None:
            self.compiled_batch_sizes = sorted([*self.compiled_batch_sizes, n])
            return images
        if size == n:
            return images
        padding = torch.zeros_like(images[:1]).expand(size - n, *images.shape[1:])
        return torch.cat([images, padding]).contiguous(memory_format=_memory_format(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        bf16 = torch.autocast('cpu', torch.bfloat16) if self.mode == 'int8-bf16' else contextlib.nullcontext()
        n = images.shape[0]
        if self.compiled:
            images = self._padded(images)
        from torch._inductor import config
        with torch.no_grad(), config.patch(freezing=True), bf16:
            return self._run(images)[:n].float()


def _memory_format(images: torch.Tensor) -> torch.memory_format:
    channels_last = images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last and not images.is_contiguous() else torch.contiguous_format


def load_quantized(path: PathLike, compile: bool = True) -> Tuple[QuantizedProgram, Dict[str, Any]]:
    """(runnable model, metadata) of a program written by `cmtnet quantize`; InputError for a file that is
    none, that holds pickled objects, or that another torch or torchao version wrote."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f'quantized program {path} does not exist')
    meta = _quantized_meta(path)
    if meta is None:
        raise InputError(f'{path} is not a quantized program written by cmtnet quantize (no {QUANTIZED_FORMAT} '
                         f'metadata)')
    here = quantized_versions()
    written = {k: meta.get(k) for k in here}
    if written != here:
        raise InputError(f'{path} was written by torch {written["torch"]} and torchao {written["torchao"]}; this is '
                         f'torch {here["torch"]} and torchao {here["torchao"]}: quantize the checkpoint again here')
    _check_no_pickles(path)
    import torchao.quantization.pt2e  # noqa: F401  (registers the quantized_decomposed ops the graph calls)
    try:
        program = torch.export.load(str(path)).module()
    except Exception as e:  # a damaged archive fails in many ways, all mean the same to the user
        raise InputError(f'cannot load the quantized program {path}: {e}') from e
    return QuantizedProgram(program, meta['mode'], compile), meta
