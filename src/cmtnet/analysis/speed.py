"""How fast CMT runs, in each way it can be run, beside its timm peers: `cmtnet bench` and its library.

Inference paths of a CMT variant: `eager` (the unfused model, NCHW: the baseline, which runs at the authors'
code's speed), `channels_last`, `fused` (`timm.utils.reparameterize_model`, models/fuse.py,
then on a CPU `cpu_fast_path`, models/fast_path.py, as the commands run it), `fused_cl` (fused,
channels_last), `fused_compiled` (fused, channels_last, inductor with freezing at static shapes),
`onnxruntime` (the folded model exported as in deploy/export.py). Peers run `eager`, `channels_last` and `compiled`
(reparameterized first where timm offers it). Training paths: `train_eager`, `train_cl`, `train_compiled`.

Each path runs at each `--precision` that applies to it: `fp32`; `bf16`, the weights and the input in
bfloat16 (the way `--precision bf16` runs inference, runtime.inference_model; every path but onnxruntime, and
for training paths bfloat16 autocast, as `cmtnet train --amp bf16`); `int8`, static post-training
quantization through torchao's PT2E flow, compiled (deploy/quantize.py; the compiled paths only, as int8
is fast only once inductor lowers it), calibrated on the run's own random batch (speed does not depend on
what calibration saw); `int8-bf16`, the same program with its float ops in bfloat16 (torchao's
int8-mixed-bf16).

Everything compared runs in one process, in turns, one step each per round after untimed warm-up steps
(the compile time is the warm-up's), so that a change in machine load hits all alike; the median round is
reported, as images per second, as a ratio to the baseline's images per second, and as achieved GFLOP/s
(2 x fvcore MACs) beside the machine's practical fp32 peak. Peak memory is measured in a child process
per model, whose peak resident set (CPU) or peak allocation (CUDA) is the model's alone.
"""
import contextlib
import dataclasses
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.utils import reparameterize_model

from ..engine.options import command_parser, option
from ..errors import CommandError, InputError, did_you_mean
from ..models import VARIANT_ARGS, cpu_fast_path, native_img_size, set_model_fused_attn
from ..models.autocast_training import cpu_autocast_training
from ..models.fast_path import applies_on
from ..models.variants import PUBLISHED
from .macs import count_macs
from .tables import Column, format_table
from .plots import new_figure, save_figure

__all__ = [
    'BenchCommandOptions', 'BenchOptions', 'DEFAULT_BASELINE', 'Result', 'bench_table', 'default_baseline',
    'interleaved', 'peak_memory', 'practical_peak_gflops', 'run_bench', 'torch_threads', 'add_parser']

CMT_PATHS = ('eager', 'channels_last', 'fused', 'fused_cl', 'fused_compiled', 'onnxruntime')
PRECISIONS = ('fp32', 'bf16', 'int8', 'int8-bf16')
# the baseline of a run that measures it: the unfused model at the authors' code's speed
DEFAULT_BASELINE = 'cmt_s:eager:fp32'
COMPILED_PATHS = ('compiled', 'fused_compiled', 'train_compiled')
PEER_PATHS = ('eager', 'channels_last', 'compiled')
TRAIN_PATHS = ('train_eager', 'train_cl', 'train_compiled')
PEERS = ('resnet50', 'convnext_tiny', 'swin_tiny_patch4_window7_224', 'deit_small_patch16_224', 'nextvit_small',
         'fastvit_sa24')
# published ImageNet-1k top-1 (%) of the weights timm ships by default, and of the released CMT checkpoints
TOP1 = {**{name: figures.released_top1 for name, figures in PUBLISHED.items()}, 'resnet50': 80.4,
        'convnext_tiny': 82.1, 'swin_tiny_patch4_window7_224': 81.2, 'deit_small_patch16_224': 79.9,
        'nextvit_small': 82.5, 'fastvit_sa24': 82.6}


def _seconds(step: Callable[[], object], device: torch.device) -> float:
    start = time.perf_counter()
    step()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def interleaved(
        steps: Dict[str, Callable[[], object]],
        warmup: int,
        rounds: int,
        device: torch.device = torch.device('cpu'),
        failures: Optional[Dict[str, str]] = None,
) -> Tuple[Dict[str, float], Dict[str, List[float]]]:
    """(warm-up seconds, [seconds per round]) of each step: `warmup` untimed steps, then `rounds` turns.

    With `failures`, a step that raises is left out from then on, its error recorded there under its name
    (a long run loses one row, not the whole table); without, the error propagates."""
    steps = dict(steps)

    def timed(name: str, step: Callable[[], object]) -> Optional[float]:
        if failures is None:
            return _seconds(step, device)
        try:
            return _seconds(step, device)
        except Exception as e:  # whatever a model's step raises is that row's alone
            failures[name] = _one_line(e)
            del steps[name]
            return None

    warmup_seconds: Dict[str, float] = {}
    for name, step in list(steps.items()):
        spent = [timed(name, step) for _ in range(warmup) if name in steps]
        if name in steps:
            warmup_seconds[name] = sum(spent)
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in list(steps.items()):
            seconds = timed(name, step)
            if seconds is not None:
                times[name].append(seconds)
    return warmup_seconds, {name: t for name, t in times.items() if name in steps}


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f'{type(error).__name__}: {lines[0] if lines else ""}'[:300]


@dataclass
class BenchOptions:
    """What `cmtnet bench` measures. Sizes: each CMT variant at its native size, peers at 224."""
    models: List[str] = option(default_factory=lambda: ['cmt_s', 'resnet50', 'fastvit_sa24'],
                               help=f'CMT variants and timm models (peers named in the docs: {", ".join(PEERS)})')
    paths: List[str] = option(default_factory=lambda: list(dict.fromkeys(CMT_PATHS + PEER_PATHS)),
                              help=f'CMT: {", ".join(CMT_PATHS)}; peers: {", ".join(PEER_PATHS)}; '
                                   f'training: {", ".join(TRAIN_PATHS)}')
    precision: List[str] = option(default_factory=lambda: ['fp32'], choices=list(PRECISIONS),
                                  help='precisions each path runs at, where they apply (see the docs)')
    baseline: Optional[str] = option(
        None, help='MODEL:PATH[:PRECISION] the ratios are relative to (fp32 if left out)',
        unset=f'{DEFAULT_BASELINE} where the run measures it, else the first model, path and precision asked for')
    batch_size: int = option(16, help='images per step')
    warmup: int = option(1, help='untimed steps first (compiling happens there)')
    rounds: int = option(5, help='timed interleaved rounds (median reported)')
    threads: int = option(0, help='torch (and onnxruntime) threads for the run; 0: as they are')
    device: str = option('cpu', help='cpu or cuda')
    peak_gflops: Optional[float] = option(  # None: measured (`practical_peak_gflops`)
        None, help='the machine\'s practical peak, for the GFLOP/s share',
        unset='measured first, as the best rate of its fastest GEMM paths')

    def __post_init__(self) -> None:
        known = set(CMT_PATHS) | set(PEER_PATHS) | set(TRAIN_PATHS)
        for path in self.paths:
            if path not in known:
                raise InputError(f'unknown path {path!r}; expected some of {", ".join(sorted(known))}'
                                 f'{did_you_mean(path, known)}')
        for name in self.models:
            if name not in VARIANT_ARGS and not timm.is_model(name):
                raise InputError(f'unknown model {name!r}: not a CMT variant nor a timm model'
                                 f'{did_you_mean(name, [*VARIANT_ARGS, *timm.list_models()])}')
        if self.baseline is None:
            self.baseline = default_baseline(self.models, self.paths, self.precision)
        if not 2 <= len(self.baseline.split(':')) <= 3:
            raise InputError(f'--baseline must be MODEL:PATH or MODEL:PATH:PRECISION, got {self.baseline!r}')
        if len(self.baseline.split(':')) == 2:
            self.baseline += ':fp32'
        for precision in self.precision:
            if precision not in PRECISIONS:
                raise InputError(f'unknown precision {precision!r}; expected some of {", ".join(PRECISIONS)}')
        if any(p.startswith('int8') for p in self.precision) and self.device != 'cpu':
            raise InputError(f'int8 runs on the CPU only (inductor\'s x86 lowering), not on --device {self.device}')
        if self.batch_size < 1 or self.rounds < 1 or self.warmup < 0:
            raise InputError(f'--batch-size and --rounds must be positive and --warmup not negative, got '
                             f'{self.batch_size}, {self.rounds}, {self.warmup}')
        if self.device != 'cpu' and 'onnxruntime' in self.paths:
            raise InputError(f'the onnxruntime path runs on the CPU only, not on --device {self.device}')


@dataclass
class Result:
    model: str
    path: str
    precision: str
    img_size: int
    batch_size: int
    seconds: List[float]
    warmup_seconds: float
    gmacs: float

    @property
    def images_per_second(self) -> float:
        return self.batch_size / statistics.median(self.seconds)

    @property
    def key(self) -> str:
        return f'{self.model}:{self.path}:{self.precision}'


def practical_peak_gflops(device: torch.device, dtype: torch.dtype = torch.float32, repeats: int = 10) -> float:
    """The machine's practical peak: the best rate (GFLOP/s, or GOP/s for int8) of its fastest GEMM paths,
    measured now. On a CPU those are a 1x1 conv in channels_last (oneDNN, as the fused CMT runs its
    projections) and `torch.mm` (`torch._int_mm` for int8); on a GPU, `torch.mm`. Best of `repeats` each."""
    def best(step: Callable[[], object], flop: float) -> float:
        step()
        return flop / min(_seconds(step, device) for _ in range(repeats)) / 1e9

    with torch.inference_mode():
        n = 4096 if device.type == 'cuda' else 1024
        if dtype == torch.int8:
            a, b = (torch.randint(-128, 127, (n, n), device=device, dtype=dtype) for _ in range(2))
            return best(lambda: torch._int_mm(a, b), 2 * n ** 3)
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        rates = [best(lambda: a @ b, 2 * n ** 3)]
        if device.type == 'cpu':
            conv = nn.Conv2d(256, 1024, 1, dtype=dtype)
            x = torch.randn(16, 256, 14, 14, dtype=dtype).contiguous(memory_format=torch.channels_last)
            rates.append(best(lambda: conv(x), 2 * x.numel() * 1024))
    return max(rates)


def img_size_of(name: str) -> int:
    return native_img_size(name) if name in VARIANT_ARGS else 224


def build_model(name: str, path: str) -> nn.Module:
    """The model `path` runs, in eval mode (train mode for training paths), on the CPU, fp32."""
    kwargs = dict(img_size=img_size_of(name)) if name in VARIANT_ARGS else {}
    model = timm.create_model(name, **kwargs)
    if path.startswith('train'):
        return model.train()
    model.eval()
    if path.startswith('fused') or path == 'onnxruntime' or (name not in VARIANT_ARGS and path != 'eager'):
        model = reparameterize_model(model)  # peers: where timm offers it (FastViT, MobileOne, ...)
    return model


def _onnx_step(model: nn.Module, x: torch.Tensor, workdir: str, threads: int) -> Callable[[], object]:
    import onnxruntime as ort
    from ..deploy.export import export_onnx
    path = Path(workdir) / f'{id(model)}.onnx'
    set_model_fused_attn(model, False)  # as `cmtnet export` exports a folded model
    export_onnx(model, path, x.shape[-1], dynamic=False)
    session_options = ort.SessionOptions()
    if threads:
        session_options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), session_options, providers=['CPUExecutionProvider'])
    images = x.numpy()
    return lambda: session.run(None, {'images': images})


def _int8_step(model: nn.Module, x: torch.Tensor, mode: str) -> Callable[[], object]:
    from ..deploy.quantize import compile_quantized, quantize_model
    # `model` is as its path runs it, folded or not (build_model)
    program = compile_quantized(quantize_model(model, [x], x.shape[-1], mode, fold=False), mode)

    def step() -> torch.Tensor:
        with torch.inference_mode():
            return program(x)
    return step


def _train_step(model: nn.Module, x: torch.Tensor, autocast_dtype: Optional[torch.dtype]) -> Callable[[], object]:
    model = cpu_autocast_training(model, x.device, autocast_dtype)  # as the trainer runs it
    optimizer = create_optimizer_v2(model, 'adamw', lr=1e-4, weight_decay=0.05)
    targets = torch.randint(0, 1000, (x.shape[0],), device=x.device)

    def step() -> None:
        with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = F.cross_entropy(model(x), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def build_step(name: str, path: str, precision: str, batch_size: int, device: torch.device, workdir: str,
               threads: int) -> Callable[[], object]:
    """A step running `path` of model `name` at `precision` on one synthetic batch (built, converted,
    quantized and compiled here)."""
    size = img_size_of(name)
    model = build_model(name, path).to(device)
    x = torch.randn(batch_size, 3, size, size, device=device)
    if path == 'onnxruntime':
        if name not in VARIANT_ARGS:
            raise InputError(f'the onnxruntime path is for CMT models (deploy/export.py), not {name}')
        return _onnx_step(model, x, workdir, threads)
    if path in ('channels_last', 'fused_cl', 'fused_compiled', 'train_cl', 'train_compiled') or (
            path == 'compiled' and name not in VARIANT_ARGS):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if path.startswith('train'):
        if path == 'train_compiled':
            model = torch.compile(model)
        return _train_step(model, x, torch.bfloat16 if precision == 'bf16' else None)
    if precision.startswith('int8'):
        return _int8_step(model, x, precision)
    if path.startswith('fused') and applies_on(device):
        model = cpu_fast_path(model)  # as the commands run a folded model there
    if precision == 'bf16':
        model, x = model.to(torch.bfloat16), x.to(torch.bfloat16)
    compiled = path in COMPILED_PATHS
    if compiled:
        model = torch.compile(model, dynamic=False)

    def step() -> torch.Tensor:
        with _freezing(compiled), torch.inference_mode():
            return model(x)
    return step


def _freezing(enabled: bool) -> contextlib.AbstractContextManager:
    """Inductor's freezing (the weights folded into the graph as constants, for inference) for the calls of a
    compiled step only: inductor compiles at the first call, so every call runs under the setting, and the
    process's own setting is left as it is."""
    if not enabled:
        return contextlib.nullcontext()
    import torch._inductor.config
    return torch._inductor.config.patch(freezing=True)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to `threads` (0: left as they are) inside the block, restored after it."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def default_baseline(models: Sequence[str], paths: Sequence[str], precisions: Sequence[str]) -> str:
    """`DEFAULT_BASELINE` where the run measures it, else the first model, path and precision it measures (the
    order `run_bench` builds them in), so that a run of other models still has ratios."""
    runs = [f'{m}:{p}:{q}' for m in models for p in paths for q in precisions if _applies(m, p, q)]
    return DEFAULT_BASELINE if DEFAULT_BASELINE in runs or not runs else runs[0]


def _applies(name: str, path: str, precision: str) -> bool:
    if precision.startswith('int8') and path not in ('compiled', 'fused_compiled'):
        return False
    if precision == 'bf16' and path == 'onnxruntime':
        return False
    if path in TRAIN_PATHS:
        return True
    return path in (CMT_PATHS if name in VARIANT_ARGS else PEER_PATHS)


# oneDNN's cache of primitives (a conv's kernel, built for its shapes and formats), in primitives: its default,
# 1,024, holds one model's convs, not those of every model and path of one interleaved run, whose steps then
# rebuild each other's evicted kernels at every call (docs/speed.md, section 4)
PRIMITIVE_CACHE = 16384


def roomy_primitive_cache() -> None:
    """Ask oneDNN for a primitive cache of `PRIMITIVE_CACHE` (unless ONEDNN_PRIMITIVE_CACHE_CAPACITY is set):
    oneDNN reads it when it builds its first primitive, so a process that ran a conv before keeps its own.
    It sets a process-wide environment variable, so only a command's entry point calls it (`cmtnet bench`,
    the benchmark scripts), never the library."""
    os.environ.setdefault('ONEDNN_PRIMITIVE_CACHE_CAPACITY', str(PRIMITIVE_CACHE))


def run_bench(options: BenchOptions, log: Callable[[str], None] = print,
              failures: Optional[Dict[str, str]] = None) -> List[Result]:
    """Build every (model, path) that applies, time them interleaved, and return one Result each.

    With `failures`, a step that fails to build or to run (a model that a compiler or the quantizer
    cannot take) is left out, its error recorded there under MODEL:PATH:PRECISION; without, it raises."""
    device = torch.device(options.device)
    steps, sizes, gmacs = {}, {}, {}
    with torch_threads(options.threads), tempfile.TemporaryDirectory() as workdir:
        for name in options.models:
            size = img_size_of(name)
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                gmacs[name] = count_macs(timm.create_model(name, **(
                    dict(img_size=size) if name in VARIANT_ARGS else {})).eval(), size) / 1e9
            for path in options.paths:
                for precision in options.precision:
                    if _applies(name, path, precision):
                        log(f'building {name} {path} {precision}')
                        try:
                            steps[(name, path, precision)] = build_step(
                                name, path, precision, options.batch_size, device, workdir, options.threads)
                        except CommandError:
                            raise
                        except Exception as e:
                            if failures is None:
                                raise
                            failures[f'{name}:{path}:{precision}'] = _one_line(e)
                        sizes[name] = size
        log(f'timing {len(steps)} steps: {options.warmup} warm-up + {options.rounds} interleaved rounds')
        warm, times = interleaved({':'.join(k): s for k, s in steps.items()}, options.warmup, options.rounds, device,
                                  failures)
    return [Result(n, p, q, sizes[n], options.batch_size, times[key], warm[key], gmacs[n])
            for (n, p, q) in steps if (key := f'{n}:{p}:{q}') in times]


def machine(threads: int = 0) -> str:
    """The processor, threads (`threads`, or else torch's now) and library versions, for a table's caption."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    load = ''
    try:
        load = f', load average {Path("/proc/loadavg").read_text().split()[0]}'
    except OSError:
        pass
    return (f'{cpu}, {threads or torch.get_num_threads()} threads{load}; torch {torch.__version__}, '
            f'timm {timm.__version__}')


def bench_table(results: Sequence[Result], options: BenchOptions, peaks: Optional[Dict[str, float]] = None) -> str:
    """A markdown table: images/s, ratio to the baseline's images/s, achieved GFLOP/s (GOP/s for int8) and
    its share of the practical peak at the row's precision (`peaks`; `options.peak_gflops` for fp32)."""
    base = next((r for r in results if r.key == options.baseline), None)
    peaks = {**(peaks or {}), **({'fp32': options.peak_gflops} if options.peak_gflops else {})}

    def gflops(r: Result) -> float:
        return 2 * r.gmacs * r.images_per_second * (3 if r.path in TRAIN_PATHS else 1)  # fwd + bwd ~ 3x

    def ms(seconds: float) -> str:
        return f'{seconds * 1e3:.0f}'

    columns = (
        Column('model', lambda r: r.model, right=False),
        Column('path', lambda r: r.path, right=False),
        Column('precision', lambda r: r.precision, right=False),
        Column('input', lambda r: str(r.img_size)),
        Column('img/s', lambda r: f'{r.images_per_second:.1f}'),
        Column('ms/batch (min-max)',
               lambda r: f'{ms(statistics.median(r.seconds))} ({ms(min(r.seconds))}-{ms(max(r.seconds))})'),
        Column('vs baseline', lambda r: f'{r.images_per_second / base.images_per_second:.2f}x' if base else '-'),
        Column('GFLOP/s', lambda r: f'{gflops(r):.0f}'),
        Column('of peak', lambda r: f'{gflops(r) / peaks[r.precision]:.0%}' if r.precision in peaks else '-'),
        Column('warm-up s', lambda r: f'{r.warmup_seconds:.1f}'),
    )
    return format_table(columns, results, markdown=True)


def _status_mib(field_name: str) -> float:
    status = Path('/proc/self/status').read_text()
    return int(next(line for line in status.splitlines() if line.startswith(field_name)).split()[1]) / 1024


def _peak_memory_child(name: str, path: str, precision: str, batch_size: int, device: str) -> float:
    """Peak memory (MiB) that building `path` of `name` at `precision` and running two steps adds to a fresh
    process."""
    idle = _status_mib('VmRSS') if device != 'cuda' else 0.
    with tempfile.TemporaryDirectory() as workdir:
        step = build_step(name, path, precision, batch_size, torch.device(device), workdir, 0)
        if device == 'cuda':
            torch.cuda.reset_peak_memory_stats()
        step()
        step()
    if device == 'cuda':
        return torch.cuda.max_memory_allocated() / 2 ** 20
    # VmHWM: this process's peak resident set since its exec (getrusage's maxrss carries the parent's over exec)
    return _status_mib('VmHWM') - idle


def peak_memory(name: str, path: str, batch_size: int, device: str = 'cpu', precision: str = 'fp32') -> float:
    """Peak memory (MiB) of one model, path and precision, measured in a child process of its own."""
    with multiprocessing.get_context('spawn').Pool(1) as pool:
        return pool.apply(_peak_memory_child, (name, path, precision, batch_size, device))


def plot_chart(results: Sequence[Result], path: Path, threads: int = 0) -> None:
    """Throughput against published ImageNet top-1, one point per model and inference path (PNG); `threads`:
    those of the run, for the caption (0: torch's now)."""
    fig, ax = new_figure((8, 5))
    markers = dict(zip(CMT_PATHS + PEER_PATHS[2:], 'o^sDPX*'))
    shown = [r for r in results if r.path not in TRAIN_PATHS and r.model in TOP1]
    for i, model in enumerate(dict.fromkeys(r.model for r in shown)):
        rows = sorted((r for r in shown if r.model == model), key=lambda r: r.images_per_second)
        color = f'C{i % 10}'
        ax.plot([r.images_per_second for r in rows], [TOP1[model]] * len(rows), color=color, alpha=0.4)
        for r in rows:
            ax.scatter(r.images_per_second, TOP1[model], color=color, marker=markers[r.path])
        ax.annotate(model, (rows[-1].images_per_second, TOP1[model]), fontsize=8, xytext=(6, -3),
                    textcoords='offset points', color=color)
    for way, marker in markers.items():  # one legend entry per path
        if any(r.path == way for r in shown):
            ax.scatter([], [], color='gray', marker=marker, label=way)
    ax.legend(fontsize=7, loc='center right')
    ax.set_xlabel('images / s (batch %d)' % results[0].batch_size)
    ax.set_ylabel('published ImageNet top-1 (%)')
    ax.set_title(machine(threads), fontsize=7)
    ax.grid(alpha=0.3)
    save_figure(fig, path, dpi=120)


@dataclass
class BenchCommandOptions(BenchOptions):
    """`cmtnet bench`: what it measures, and the extra measurements and outputs of the command."""
    latency: bool = option(False, flags=('--latency',), help='also batch-1 latency, in a second interleaved run')
    memory: bool = option(False, flags=('--memory',), help='also peak memory, in a child process each')
    chart: Optional[str] = option(None, help='write a PNG of images/s against published top-1')
    verbose: bool = option(False, flags=('--verbose', '-v'), help='say what is being built')


def _run(options: BenchCommandOptions) -> int:
    roomy_primitive_cache()  # before the peaks below run the first primitives
    log = (lambda msg: print(msg, flush=True)) if options.verbose else (lambda msg: None)
    dtypes = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'int8': torch.int8, 'int8-bf16': torch.int8}
    with torch_threads(options.threads):
        peaks = {precision: practical_peak_gflops(torch.device(options.device), dtypes[precision])
                 for precision in options.precision if not (precision == 'fp32' and options.peak_gflops)}
    peaks.update({'fp32': options.peak_gflops} if options.peak_gflops else {})
    failures: Dict[str, str] = {}
    results = run_bench(options, log, failures)
    print(f'{options.device}, batch {options.batch_size}; {machine(options.threads)}; {options.warmup} warm-up + '
          f'{options.rounds} interleaved rounds, median; baseline {options.baseline}; practical peak '
          + ', '.join(f'{p} {g:.0f} G{"OP" if p.startswith("int8") else "FLOP"}/s' for p, g in peaks.items()))
    print(bench_table(results, options, peaks))
    if options.latency:
        latency = run_bench(dataclasses.replace(
            options, batch_size=1, paths=[p for p in options.paths if p not in TRAIN_PATHS]), log, failures)
        print('\nbatch-1 latency (ms, median):')
        print('\n'.join(f'| {r.model} | {r.path} | {r.precision} | {statistics.median(r.seconds) * 1e3:.1f} |'
                        for r in latency))
    if options.memory:
        print('\npeak memory (MiB above an idle process, one process per model and path):')
        for r in results:
            mib = peak_memory(r.model, r.path, options.batch_size, options.device, r.precision)
            print(f'| {r.model} | {r.path} | {r.precision} | {mib:.0f} |')
    if options.chart:
        plot_chart(results, Path(options.chart), options.threads)
        print(f'wrote {options.chart}')
    if failures:
        print('\nnot measured (the step failed):', file=sys.stderr)
        print('\n'.join(f'{key}: {error}' for key, error in failures.items()), file=sys.stderr)
        return 1
    return 0


add_parser = command_parser(
    'bench', BenchCommandOptions, _run, description=__doc__.split('\n\n')[0],
    help='images/s of CMT in each inference path beside timm peers, interleaved in one run')
