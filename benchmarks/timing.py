"""Timing shared by the benchmarks: what is compared runs in one process, in turns.

Each entry first runs its untimed warm-up steps (torch.compile compiles there; their total time is
reported). Then the entries take turns, one step each per round, so that a change in machine load hits
them alike; the median round is what the benchmarks report.
"""
import time
from typing import Callable, Dict, List, Tuple

import torch


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
) -> Tuple[Dict[str, float], Dict[str, List[float]]]:
    """(warm-up seconds, [seconds per round]) of each step: `warmup` untimed steps, then `rounds` turns."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    warmup_seconds = {name: sum(_seconds(step, device) for _ in range(warmup)) for name, step in steps.items()}
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(_seconds(step, device))
    return warmup_seconds, times
