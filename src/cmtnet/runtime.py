"""Where and how a command runs: device, mixed precision, inference precision, processes, memory format, seeds.

Every command (training, evaluation, prediction, detection, benchmarks) takes its device, autocast and
distributed set-up from here, so that `--device`, `--amp`, `--precision` and `--channels-last` mean the same
everywhere. `--amp` is autocast (float32 weights, chosen ops in bfloat16 or float16); `--precision bf16` runs
inference with the weights themselves in bfloat16, the model folded for inference first and, on a CPU, put on
the CPU fast path (`inference_model`, the one function every inference command gets its model from).
Under torchrun, `distributed()` joins the process group (NCCL on GPUs, gloo on CPU) and leaves it again.
"""
import contextlib
from dataclasses import dataclass
from typing import Any, ContextManager, Iterator, Optional, Sequence, Union

import torch
import torch.distributed as dist
import torch.nn as nn
from timm.utils import random_seed
from torch.utils._pytree import tree_map
from timm.utils.distributed import init_distributed_device_so

from .errors import InputError
from .models.fast_path import applies_on, cpu_fast_path

__all__ = [
    'PRECISIONS', 'InPrecision', 'Processes', 'all_reduce', 'amp_dtype', 'autocast', 'default_device',
    'distributed', 'folded_for', 'inference_model', 'inference_path', 'is_main_process', 'precision_dtype',
    'prepare_model',
    'random_seed', 'to_device',
]

# what `--precision` takes for a float model (an int8 model is a file of its own, written by `cmtnet quantize`)
PRECISIONS = {'fp32': torch.float32, 'bf16': torch.bfloat16}


def default_device() -> str:
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def amp_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for `--amp`: 'auto' is bfloat16 on CUDA (float16 where bfloat16 is unsupported)
    and full precision on CPU; float16 is for CUDA only."""
    if amp == 'auto':
        if device.type != 'cuda':
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == 'fp16' and device.type != 'cuda':
        raise InputError('--amp fp16 needs a CUDA device; on CPU use --amp bf16')
    return {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}[amp]


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> ContextManager:
    """Mixed precision in `dtype`, or nothing when `dtype` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class InPrecision(nn.Module):
    """`module` with its weights in `dtype`: floating-point inputs are cast to `dtype` on the way in, and
    floating-point outputs back to float32 on the way out (tensors, or lists, tuples and dicts of them), so
    that the code around it (losses, box decoding, metrics) keeps working in float32."""

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.module = module.to(dtype)
        self.dtype = dtype

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        def cast(dtype: torch.dtype) -> Any:
            return lambda t: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
        args, kwargs = tree_map(cast(self.dtype), (args, kwargs))
        return tree_map(cast(torch.float32), self.module(*args, **kwargs))


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype of `--precision`; InputError for a precision there is none of."""
    if precision not in PRECISIONS:
        raise InputError(f'--precision must be one of {", ".join(PRECISIONS)}, got {precision!r}')
    return PRECISIONS[precision]


def folded_for(model: nn.Module, device: Union[str, torch.device]) -> nn.Module:
    """A copy of `model` folded for inference (`timm.utils.reparameterize_model`, models/fuse.py), in eval mode,
    and put on the CPU fast path (models/fast_path.py) where `device` is a CPU."""
    from timm.utils import reparameterize_model
    folded = reparameterize_model(model.eval())
    return cpu_fast_path(folded) if applies_on(device) else folded


def inference_model(model: nn.Module, device: Union[str, torch.device], precision: str = 'fp32',
                    channels_last: bool = False, parts: Optional[Sequence[str]] = None) -> nn.Module:
    """`model` prepared for inference on `device` at `--precision`: for fp32, the model itself (its logits are
    the checkpoint's own); for bf16, `folded_for` the device, in channels-last memory, weights in bfloat16
    (`InPrecision`). On `device`, in channels-last memory if asked.

    `parts` (dotted names of submodules; those a model lacks are passed over) puts only those parts in
    bfloat16, each an `InPrecision`, and leaves the rest of the model in float32: a detector's or segmenter's
    input transform and its decoding of the outputs (boxes, resized logits), which must not round."""
    dtype = precision_dtype(precision)
    if dtype != torch.float32:
        model = folded_for(model, device).to(memory_format=torch.channels_last)
        if parts is None:
            model = InPrecision(model, dtype)
        for name in parts or ():
            try:
                part = model.get_submodule(name)
            except AttributeError:  # a part this model has not (RetinaNet has no RoI heads)
                continue
            model.set_submodule(name, InPrecision(part, dtype))
        model = model.eval()
    return prepare_model(model, torch.device(device), channels_last)


def inference_path(precision: str, device: Union[str, torch.device]) -> str:
    """How `inference_model` runs a model at `precision` on `device`, as a command's header says it:
    'fp32 unfolded' (the checkpoint's own model), 'bf16 folded', or on a CPU 'bf16 folded on the CPU fast path'."""
    if precision_dtype(precision) == torch.float32:
        return f'{precision} unfolded'
    return f'{precision} folded' + (' on the CPU fast path' if applies_on(device) else '')


def prepare_model(model: nn.Module, device: torch.device, channels_last: bool = False) -> nn.Module:
    """`model` on `device`, in channels-last memory if asked."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def to_device(images: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """An input batch on `device` (without waiting for the copy), in channels-last memory if asked."""
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes of a run (one, or several under torchrun)."""
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def check_device(device: Optional[str]) -> str:
    """`--device`, or the default; an InputError if it names CUDA where there is none."""
    device = device or default_device()
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise InputError(f'--device {device}: CUDA is not available here')
    return device


@contextlib.contextmanager
def distributed(device: Optional[str] = None) -> Iterator[Processes]:
    """Join the torchrun process group if there is one (else run as the only process) and leave it after.

    Yields the `Processes`: device (under torchrun, this process's GPU), rank and world size.
    """
    env = init_distributed_device_so(device=check_device(device))
    try:
        yield Processes(torch.device(env['device']), env['global_rank'], env['world_size'])
    finally:
        if env['distributed']:
            dist.destroy_process_group()


def is_main_process() -> bool:
    """True outside torchrun and in its first process."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def all_reduce(*tensors: torch.Tensor) -> None:
    """Sum each tensor over the processes, in place (nothing to do in a single process)."""
    if dist.is_available() and dist.is_initialized():
        for t in tensors:
            dist.all_reduce(t)
