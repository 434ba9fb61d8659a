"""The int8 runtime: a program written by `cmtnet quantize` (deploy/quantize.py), read back and run.

The file is a `torch.export` archive of the converted PT2E graph (int8 weights with their scales, quantize /
dequantize pairs around the float ops) with our metadata as an extra file. `load_quantized` reads it without
unpickling anything and refuses files that other torch or torchao versions wrote; `QuantizedProgram` runs it,
compiled by inductor to int8 oneDNN kernels. It sits beside checkpoints.py, below the tasks, so that
`cmtnet eval` and `predict` take such a file as `--checkpoint` like any other weight file.
"""
import contextlib
import importlib.metadata
import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .errors import InputError, did_you_mean_path

__all__ = ['QUANTIZED_FORMAT', 'QUANTIZED_META_FILE', 'QuantizedProgram', 'is_quantized_file', 'load_quantized',
           'quantized_versions']

PathLike = Union[str, Path]

# the format tag of a `cmtnet quantize` program, and the archive's extra file that holds its metadata
QUANTIZED_FORMAT = 'cmtnet-quantized-pt2e/1'
QUANTIZED_META_FILE = 'cmtnet.json'


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
        if compile:
            # imported for its side effect: it registers torchao's int8 fusion passes with inductor (and imports
            # inductor, which the reference ops do not need)
            import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401
        self.compiled = compile
        self._run = torch.compile(program) if compile else program
        self.compiled_batch_sizes: List[int] = []  # the batch sizes compiled so far, ascending
        # batch size -> seconds of the call that compiled for it (inductor's caches make a later start shorter)
        self.compile_seconds: Dict[int, float] = {}

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
        compiles = self.compiled and not any(b >= n for b in self.compiled_batch_sizes)
        if self.compiled:
            images = self._padded(images)
        from torch._inductor import config
        start = time.perf_counter()
        with torch.no_grad(), config.patch(freezing=True), bf16:
            logits = self._run(images)[:n].float()
        if compiles:
            self.compile_seconds[images.shape[0]] = time.perf_counter() - start
        return logits


def _memory_format(images: torch.Tensor) -> torch.memory_format:
    channels_last = images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last and not images.is_contiguous() else torch.contiguous_format


def load_quantized(path: PathLike, compile: bool = True) -> Tuple[QuantizedProgram, Dict[str, Any]]:
    """(runnable model, metadata) of a program written by `cmtnet quantize`; InputError for a file that is
    none, that holds pickled objects, or that another torch or torchao version wrote."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f'quantized program {path} does not exist{did_you_mean_path(path)}')
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
