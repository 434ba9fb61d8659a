"""A `cmtnet serve` process for the tests (its own free port, ready when returned, stopped after), and the
weights it serves: a classifier, a detector and a segmenter of their own."""
import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterator, Optional

import httpx
import numpy as np
import timm
import torch
from PIL import Image

from cmtnet.checkpoints import export_weights
import forked

CLASSES = ['cat', 'dog', 'owl']
DETECTION_CLASSES = ['a', 'b']
SEGMENTATION_CLASSES = ['sky', 'grass', 'road', 'wall']
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


def detector_checkpoint(path: Path, seed: int = 0) -> Path:
    """An FCOS on CMT-Ti at 64 px for the two `DETECTION_CLASSES`, as `cmtnet detect train` exports one; its
    heads' last layers are scaled up so that, untrained, it scores boxes over torchvision's floor of 0.2 and
    draws them with sides of some pixels."""
    from cmtnet.detection import build_detector
    torch.manual_seed(seed)
    model = build_detector('fcos', 'cmt_ti', len(DETECTION_CLASSES), min_size=64, max_size=64)
    scores, boxes = model.head.classification_head.cls_logits, model.head.regression_head.bbox_reg
    with torch.no_grad():
        scores.weight.mul_(40)
        scores.bias.zero_()
        boxes.weight.mul_(20)
        boxes.bias.fill_(1.0)
    export_weights(path, model.state_dict(), dict(
        task='detection', detector='fcos', model='cmt_ti', num_classes=len(DETECTION_CLASSES),
        class_names=DETECTION_CLASSES, category_ids=list(range(1, len(DETECTION_CLASSES) + 1)), min_size=64,
        max_size=64, anchor_sizes=None))
    return path


def segmenter_checkpoint(path: Path, seed: int = 0) -> Path:
    """A Semantic FPN on CMT-Ti for the `SEGMENTATION_CLASSES`, evaluated at 64 px, as `cmtnet segment train`
    exports one."""
    from cmtnet.segmentation import build_segmenter
    torch.manual_seed(seed)
    model = build_segmenter('fpn', 'cmt_ti', len(SEGMENTATION_CLASSES))
    export_weights(path, model.state_dict(), dict(
        task='segmentation', head='fpn', model='cmt_ti', num_classes=len(SEGMENTATION_CLASSES),
        class_names=SEGMENTATION_CLASSES, crop_size=64, scale=[64, 64], slide=False))
    return path


def photo(path: Path, seed: int, size=(48, 64)) -> Path:
    """A noisy picture of its own (PNG or JPEG by the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


class Server:
    """A running `cmtnet serve`; `log` is what it printed so far."""

    def __init__(self, process: forked.Child, url: str, log_path: Path):
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
    process = forked.shared().start('cmtnet', ['serve', '--checkpoint', str(checkpoint), '--port', str(port), *args],
                                    env=dict(os.environ, **(env or {})), output=log_path)
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
