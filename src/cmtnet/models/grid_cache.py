"""A small cache of tensors computed per token grid, for eager inference at changing input sizes.

A CMT at a size other than its native one needs, per stage, tensors that depend only on the token grid and
on the weights: the position bias resized to the grid above all (at 800x1344 the four resized biases of
CMT-S hold 132 million values, half a gigabyte in fp32, each made by a bicubic resize). Detection
inputs change size from batch to batch but come back to the same few grids, so the eager inference path
keeps the last few results.

The cache must never change what a graph computes: it is bypassed while scripting, tracing, compiling or
exporting (so those graphs keep the computation), and whenever autograd would record it (grad enabled
and a source requires grad: in training the resize stays in the graph so that the bias learns). An entry
is keyed on the caller's key (the grid), on each source tensor's identity, storage, shape and in-place
version counter (so new weights, loaded or stepped in place, are never served stale results), and on
device, dtype and inference mode. One model may serve several threads at once: the entries are read and
changed under a lock (a result is computed outside it, so two threads may compute the same one).
"""
import threading
import weakref
from collections import OrderedDict
from typing import Callable, Hashable, Optional, Sequence, Tuple

import torch

__all__ = ['GridCache', 'eager_inference', 'tensor_version']


def eager_inference(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether this is plain eager inference: no graph being recorded (scripting, tracing, compiling,
    exporting) and no gradient wanted through `tensors`. Only then may a shortcut that a graph or autograd
    would not see be taken: a cached result here, oneDNN's fused calls in models/onednn.py."""
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if torch.onnx.is_in_onnx_export():
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def tensor_version(t: torch.Tensor) -> int:
    """`t`'s in-place change counter; 0 for an inference tensor (one made under `torch.inference_mode`, such as
    the weights of a model converted there), which keeps none."""
    try:
        return t._version
    except RuntimeError:
        return 0


class GridCache:
    """Least-recently-used cache of at most `max_entries` tensors, each computed from `sources` for a key.

    Usage: `value = cache.get(grid, (weight,), lambda: resize(weight, grid))`. The cache holds no strong
    reference to its sources (a freed weight's entry can never match a new tensor that reuses its id), is
    not copied by `copy.deepcopy` (an EMA copy of a model starts empty) and is not pickled; it is safe to
    use from several threads.
    """

    def __init__(self, max_entries: int = 3):
        if max_entries < 1:
            raise ValueError(f'GridCache needs room for at least one entry, got max_entries={max_entries}')
        self.max_entries = max_entries
        self._entries: 'OrderedDict[Hashable, Tuple[Tuple[weakref.ref, ...], torch.Tensor]]' = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def get(
            self,
            key: Hashable,
            sources: Sequence[torch.Tensor],
            compute: Callable[[], torch.Tensor],
    ) -> torch.Tensor:
        """`compute()`, or its result cached for `key` and the present state of `sources`."""
        if not eager_inference(sources):
            return compute()
        full_key = (key, torch.is_inference_mode_enabled()) + tuple(
            (id(t), t.data_ptr(), tuple(t.shape), tensor_version(t), t.device, t.dtype) for t in sources)
        with self._lock:
            value = self._lookup(full_key, sources)
        if value is None:
            value = compute()
            refs = tuple(weakref.ref(t) for t in sources)
            with self._lock:
                self._entries[full_key] = (refs, value)
                self._entries.move_to_end(full_key)
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
        return value

    def _lookup(self, full_key: Hashable, sources: Sequence[torch.Tensor]) -> Optional[torch.Tensor]:
        entry = self._entries.get(full_key)
        if entry is None:
            return None
        refs, value = entry
        if any(r() is not t for r, t in zip(refs, sources)):  # an id reused by a new tensor
            del self._entries[full_key]
            return None
        self._entries.move_to_end(full_key)
        return value

    def __deepcopy__(self, memo: dict) -> 'GridCache':
        return GridCache(self.max_entries)

    def __getstate__(self) -> dict:
        return {'max_entries': self.max_entries}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state['max_entries'])

    def __repr__(self) -> str:
        return f'GridCache(max_entries={self.max_entries}, entries={len(self._entries)})'
