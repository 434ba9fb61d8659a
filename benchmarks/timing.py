"""Timing shared by the benchmarks: what is compared runs in one process, in turns.

The timer lives in the package (cmtnet.analysis.speed, behind `cmtnet bench`); the scripts here import it
from this module. Each entry first runs its untimed warm-up steps (torch.compile compiles there; their
total time is reported). Then the entries take turns, one step each per round, so that a change in machine
load hits them alike; the median round is what the benchmarks report.
"""
import contextlib
import fcntl
from typing import Callable, Iterator, Optional

import torch
import torch._inductor.config
import torch.nn as nn

from cmtnet.analysis.speed import interleaved

__all__ = ['compiled_step', 'interleaved', 'locked']


def compiled_step(model: nn.Module, x: torch.Tensor, backend: str = 'inductor') -> Callable[[], torch.Tensor]:
    """A forward of `model` on `x` compiled by `backend` for static shapes, with inductor's freezing (the
    weights folded into the graph, as `cmtnet bench`'s compiled paths run), in inference mode."""
    compiled = torch.compile(model, backend=backend, dynamic=False)

    def step() -> torch.Tensor:
        with torch._inductor.config.patch(freezing=True), torch.inference_mode():
            return compiled(x)
    return step


@contextlib.contextmanager
def locked(path: Optional[str]) -> Iterator[None]:
    """An exclusive lock on the file `path` (none if None) for the block: timed runs that take the same file on a
    shared machine do not overlap, while what they build and compile before runs unlocked."""
    if path is None:
        yield
        return
    with open(path, 'a') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
