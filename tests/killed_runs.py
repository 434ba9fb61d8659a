"""Runs of `python -m cmtnet ...` killed with SIGKILL once they have written a checkpoint, for the
resume tests of every task."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Sequence

from cmtnet.engine.state_files import load_state

# subprocesses: one thread each (reproducible sums, no oversubscription), and the same interpreter
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
TIMEOUT = 300


def kill_after_first_checkpoint(argv: Sequence[str], output: Path) -> Dict[str, Any]:
    """Start `python -m cmtnet ARGV --output OUTPUT`, SIGKILL it as soon as last.pth appears, and return the
    state it left; asserts it was killed in the middle of an epoch, before its final weights."""
    process = subprocess.Popen([sys.executable, '-m', 'cmtnet', *argv, '--output', str(output)],
                               env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
