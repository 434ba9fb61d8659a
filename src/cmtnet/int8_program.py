"""The int8 runtime: a program written by `cmtnet quantize` (deploy/quantize.py), read back and run.

The file is a `torch.export` archive of the converted PT2E graph (int8 weights with their scales, quantize /
dequantize pairs around the float ops) with our metadata as an extra file. `load_quantized` reads it without
unpickling anything and refuses files that other torch or torchao versions wrote; `QuantizedProgram` runs it,
compiled by inductor to int8 oneDNN kernels. It sits beside checkpoints.py, below the tasks, so that
`cmtnet eval` and `predict` take such a file as `--checkpoint` like any other weight file.
"""
import contextlib
import hashlib
import importlib.metadata
import io
import json
import os
import re
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn

from .errors import InputError, did_you_mean_path

__all__ = ['QUANTIZED_FORMAT', 'QUANTIZED_META_FILE', 'QuantizedProgram', 'compile_cache_dir', 'is_quantized_file',
           'load_quantized', 'quantized_versions']

PathLike = Union[str, Path]

# the format tag of a `cmtnet quantize` program, and the archive's extra file that holds its metadata
QUANTIZED_FORMAT = 'cmtnet-quantized-pt2e/1'
QUANTIZED_META_FILE = 'cmtnet.json'


def quantized_versions() -> Dict[str, str]:
    """The torch and torchao versions a quantized program is written and read with: a `torch.export` archive
    and torchao's quantized ops are only known to load and lower correctly under the versions that made them."""
    return {'torch': torch.__version__, 'torchao': importlib.metadata.version('torchao')}


def compile_cache_dir() -> Path:
    """Where the compiled int8 programs are kept between runs: `$CMTNET_CACHE` (or ~/.cache/cmtnet)/int8."""
    return Path(os.environ.get('CMTNET_CACHE', Path.home() / '.cache' / 'cmtnet')) / 'int8'


def _cache_key(path: PathLike, mode: str) -> str:
    """The name of the program file `path`'s compiled packages in the cache (`<key>-b<batch>.pt2`): the file's
    content, the mode it runs in and the versions that compile it."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    digest.update(json.dumps([mode, quantized_versions()]).encode())
    return digest.hexdigest()[:32]


def _package_sizes(prefix: Path) -> List[int]:
    """The batch sizes of the packages `<prefix>-b<N>.pt2` on disk."""
    pattern = re.compile(rf'{re.escape(prefix.name)}-b(\d+)\.pt2')
    found = (pattern.fullmatch(p.name) for p in prefix.parent.glob(f'{prefix.name}-b*.pt2'))
    return sorted(int(m.group(1)) for m in found if m)


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

    With a `cache` (a path prefix, which `load_quantized` makes of the file's content), the program is
    compiled ahead of time by AOTInductor into a package `<cache>-b<N>.pt2` instead of through
    `torch.compile`: the same lowering, kept on disk, so that a later process loads the compiled program
    from there without tracing or compiling anything (`cache_seconds`, where `compile_seconds` is a compile).
    Any package there serves any batch: a smaller batch is padded to it, a larger one runs in pieces of its
    size; only a program with none compiles. A program that AOTInductor cannot compile runs through
    `torch.compile`, with a warning, and is not cached.
    """

    def __init__(self, program: nn.Module, mode: str, compile: bool = True, cache: Optional[Path] = None):
        super().__init__()
        self.program = program
        self.mode = mode
        self.training = False
        if compile:
            # imported for its side effect: it registers torchao's int8 fusion passes with inductor (and imports
            # inductor, which the reference ops do not need)
            import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401
        self.compiled = compile
        self.cache = cache if compile else None
        self._run = torch.compile(program) if compile and cache is None else program
        self._packages: Dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}  # batch size -> loaded package
        self._found: Optional[List[int]] = None  # the batch sizes of the packages in the cache, once looked up
        self.compiled_batch_sizes: List[int] = []  # the batch sizes compiled so far, ascending
        # batch sizes run as they come, never padded: a service's (`cmtnet serve` warms them up)
        self.own_sizes: Set[int] = set()
        # batch size -> seconds of the call that compiled for it, or that loaded it compiled from the cache
        self.compile_seconds: Dict[int, float] = {}
        self.cache_seconds: Dict[int, float] = {}

    def train(self, mode: bool = True) -> 'QuantizedProgram':
        if mode:
            raise RuntimeError('a quantized program is for inference only; train the float model and quantize it')
        return self

    def _padded(self, images: torch.Tensor) -> Tuple[torch.Tensor, bool]:
        """(`images` padded with zeros to the smallest batch size compiled that holds them, whether that is a
        compile): a batch larger than any compiled, or of one of `own_sizes`, is compiled for as it is."""
        n = images.shape[0]
        size = self._fitting(n, self.compiled_batch_sizes) or n
        if size not in self.compiled_batch_sizes:
            self.compiled_batch_sizes = sorted([*self.compiled_batch_sizes, size])
            return images, True
        return _pad_to(images, size), False

    def _bf16(self) -> contextlib.AbstractContextManager:
        return torch.autocast('cpu', torch.bfloat16) if self.mode == 'int8-bf16' else contextlib.nullcontext()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.cache is not None:
            return self._run_packaged(images)
        n = images.shape[0]
        compiles = False
        if self.compiled:
            images, compiles = self._padded(images)
        from torch._inductor import config
        start = time.perf_counter()
        with torch.no_grad(), config.patch(freezing=True), self._bf16():
            logits = self._run(images)[:n].float()
        if compiles:
            self.compile_seconds[images.shape[0]] = time.perf_counter() - start
        return logits

    def keep_as(self, path: PathLike) -> List[Path]:
        """Move the packages compiled so far into the cache, under the name of the program file `path` that
        this program was written to after they were compiled, so that the file's first run loads them; their
        new paths. Each move is atomic: the packages are on the cache's file system (`cmtnet quantize` compiles
        them in a staging folder inside the cache)."""
        if self.cache is None:
            return []
        key = compile_cache_dir() / _cache_key(path, self.mode)
        key.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        for size in _package_sizes(self.cache):
            kept.append(Path(f'{key}-b{size}.pt2'))
            os.replace(f'{self.cache}-b{size}.pt2', kept[-1])
        self.cache, self._found = key, None
        return kept

    def _package_size(self, n: int) -> int:
        """The batch size of the package that runs a batch of `n`: the smallest loaded or in the cache that
        holds it (the batch padded to it); else the largest there (the batch run in pieces of that size,
        which costs far less than a compile); else `n`, compiled for. One of `own_sizes` is always `n`."""
        if self._found is None:  # the packages in the cache when the first batch came
            self._found = _package_sizes(self.cache)
        sizes = {*self._packages, *self._found}
        return self._fitting(n, sizes) or max(sizes, default=n)

    def _fitting(self, n: int, sizes: Iterable[int]) -> Optional[int]:
        """The batch size that runs a batch of `n` among `sizes` (compiled): `n` itself for one of
        `own_sizes`, else the smallest that holds it, padded; None where none does."""
        if n in self.own_sizes:
            return n
        return min((b for b in sizes if b >= n), default=None)

    def _run_packaged(self, images: torch.Tensor) -> torch.Tensor:
        n = images.shape[0]
        size = self._package_size(n)
        start = time.perf_counter()
        new = size not in self._packages
        run, cached = self._packaged(size, images)
        pieces = []
        with torch.no_grad(), self._bf16():
            for i in range(0, n, size):
                piece = images[i:i + size]
                pieces.append(run(_pad_to(piece, size).contiguous())[:piece.shape[0]].float())
        if new:
            (self.cache_seconds if cached else self.compile_seconds)[size] = time.perf_counter() - start
        return torch.cat(pieces)

    def _packaged(self, size: int, images: torch.Tensor) -> Tuple[Callable[[torch.Tensor], torch.Tensor], bool]:
        """(the AOTInductor package compiled for batches of `size`, whether it came from the cache); compiled
        for `images` padded or cut to that size, and written to the cache, where it is not there or not
        readable."""
        if size in self._packages:
            return self._packages[size], False
        from torch._inductor import aoti_load_package
        path = Path(f'{self.cache}-b{size}.pt2')
        if path.is_file():
            try:
                self._packages[size] = aoti_load_package(str(path))
                return self._packages[size], True
            except Exception:  # a damaged or foreign package: compile it again
                pass
        try:
            self._package(_pad_to(images[:size], size), path)
            self._packages[size] = aoti_load_package(str(path))
        except Exception as e:  # AOTInductor cannot take this program: torch.compile runs it, without the cache
            warnings.warn(f'the int8 program could not be compiled ahead of time ({type(e).__name__}: {e}); '
                          f'it is compiled in this process instead, and not kept for the next')
            from torch._inductor import config
            self.cache, self._run = None, torch.compile(self.program)
            return config.patch(freezing=True)(self._run), False
        return self._packages[size], False

    def _package(self, images: torch.Tensor, path: Path) -> None:
        """Compile the program for the shape of `images` with AOTInductor (freezing, as `torch.compile` runs it
        here; under the bfloat16 autocast of int8-bf16) into the package `path`, written atomically."""
        from torch._inductor import aoti_compile_and_package
        with torch.no_grad(), self._bf16():
            exported = torch.export.export(self.program, (images.contiguous(),))
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f'.{os.getpid()}-{path.name}')
        try:
            aoti_compile_and_package(exported, package_path=str(partial), inductor_configs={'freezing': True})
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)


def _pad_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """`images` padded with zeros to a batch of `size` (at least theirs)."""
    n = images.shape[0]
    if n == size:
        return images
    padding = torch.zeros_like(images[:1]).expand(size - n, *images.shape[1:])
    return torch.cat([images, padding]).contiguous(memory_format=_memory_format(images))


def _memory_format(images: torch.Tensor) -> torch.memory_format:
    channels_last = images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last and not images.is_contiguous() else torch.contiguous_format


def load_quantized(path: PathLike, compile: bool = True, cache: bool = True
                   ) -> Tuple[QuantizedProgram, Dict[str, Any]]:
    """(runnable model, metadata) of a program written by `cmtnet quantize`; InputError for a file that is
    none, that holds pickled objects, or that another torch or torchao version wrote. Compiled with `cache`,
    each batch size is compiled once into `compile_cache_dir()` and loaded from there by later runs."""
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
    key = compile_cache_dir() / _cache_key(path, meta['mode']) if compile and cache else None
    return QuantizedProgram(program, meta['mode'], compile, key), meta
