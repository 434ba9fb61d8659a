"""Timing shared by the benchmarks: what is compared runs in one process, in turns.

The timer lives in the package (cmtnet.analysis.speed, behind `cmtnet bench`); the scripts here import it
from this module. Each entry first runs its untimed warm-up steps (torch.compile compiles there; their
total time is reported). Then the entries take turns, one step each per round, so that a change in machine
load hits them alike; the median round is what the benchmarks report.
"""
from cmtnet.analysis.speed import interleaved

__all__ = ['interleaved']
