"""A `cmtnet serve` process for the tests: its own free port, ready when returned, stopped after."""
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, Optional

import httpx
import numpy as np
import timm
import torch
from PIL import Image

from cmtnet.checkpoints import export_weights

CLASSES = ['cat', 'dog', 'owl']
START_TIMEOUT = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def classifier_checkpoint(path: Path, seed: int = 0) -> Path:
    """A CMT-Ti at 32 px for the three `CLASSES`, as `cmtnet train` exports one."""
    torch.manual_seed(seed)
    model = timm.create_model('cmt_ti', num_classes=len(CLASSES), img_size=32)
    export_weights(path, model.state_dict(), dict(model='cmt_ti', img_size=32, num_classes=len(CLASSES),
                                                  class_names=CLASSES, crop_pct=0.875, interpolation='bicubic'))
    return path


def photo(path: Path, seed: int, size=(48, 64)) -> Path:
    """A noisy picture of its own (PNG or JPEG by the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


class Server:
    """A running `cmtnet serve`; `log` is what it printed so far."""

    def __init__(self, process: subprocess.Popen, url: str, log_path: Path):
        self.process = process
        self.url = url
        self.log_path = log_path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors='replace')

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, **kwargs)


@contextlib.contextmanager
def serving(checkpoint: Path, log_path: Path, *args: str, env: Optional[Dict[str, str]] = None) -> Iterator[Server]:
    """`cmtnet serve --checkpoint CHECKPOINT ARGS` on a free port, until the block ends (SIGTERM)."""
    port = free_port()
    with open(log_path, 'wb') as log:
        process = subprocess.Popen(
            [sys.executable, '-m', 'cmtnet', 'serve', '--checkpoint', str(checkpoint), '--port', str(port), *args],
            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, **(env or {})))
    server = Server(process, f'http://127.0.0.1:{port}', log_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f'cmtnet serve exited with {process.returncode}:\n{server.log}')
            try:
                if httpx.get(server.url + '/ready', timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f'cmtnet serve was not ready in {START_TIMEOUT} s:\n{server.log}')
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
