"""Runs of `python -m cmtnet ...` killed with SIGKILL once they have written a checkpoint, for the
resume tests of every task, and the runs they are compared with, made in the test's own process."""
import contextlib
import io
import os
import signal
import time
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

import torch

from cmtnet.cli import main
from cmtnet.engine.state_files import load_state
import forked

# subprocesses: one thread each (reproducible sums, no oversubscription), and the same interpreter
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
TIMEOUT = 300


def kill_after_first_checkpoint(argv: Sequence[str], output: Path) -> Dict[str, Any]:
    """Start `python -m cmtnet ARGV --output OUTPUT`, SIGKILL it as soon as last.pth appears, and return the
    state it left; asserts it was killed in the middle of an epoch, before its final weights."""
    process = forked.shared().start('cmtnet', [*argv, '--output', str(output)], env=ENV)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (output / 'last.pth').exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    state = load_state(output / 'last.pth')
    assert state['samples_in_epoch'] > 0  # killed in the middle of an epoch
    assert not (output / 'model.safetensors').exists()
    return state


def run_here(argv: Sequence[str]) -> Tuple[int, str]:
    """(exit status, stdout) of `cmtnet ARGV` run in this process on one torch thread, as the subprocesses
    (`ENV`) run, so that its sums are theirs bit for bit; without the start-up of a new interpreter."""
    threads, out = torch.get_num_threads(), io.StringIO()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(out):
            status = main(list(argv))
    finally:
        torch.set_num_threads(threads)
    return status, out.getvalue()
