"""What the page tests need besides one server: detection and segmentation weights of their own, several
servers started side by side, photos, and the page's screenshots kept."""
import contextlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from cmtnet.checkpoints import export_weights
from servers import Server, serving

DETECTION_CLASSES = ['a', 'b']
SEGMENTATION_CLASSES = ['sky', 'grass', 'road', 'wall']
SCREENSHOTS_VARIABLE = 'CMTNET_SCREENSHOTS'


def chromium() -> Optional[str]:
    """Debian's chromium, which Playwright drives in place of a browser of its own; None when there is none."""
    return shutil.which('chromium') or ('/usr/bin/chromium' if os.path.exists('/usr/bin/chromium') else None)


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


@contextlib.contextmanager
def serving_together(runs: Sequence[Sequence]) -> Iterator[List[Server]]:
    """`servers.serving(*run)` for each run, started side by side (each loads and warms up its model while the
    others do), stopped together when the block ends."""
    contexts = [serving(*run) for run in runs]
    with ThreadPoolExecutor(len(contexts)) as pool:
        starting = [pool.submit(context.__enter__) for context in contexts]
    started, failure = [], None
    for context, future in zip(contexts, starting):
        try:
            started.append((context, future.result()))
        except Exception as e:  # the others still stop below
            failure = failure or e
    try:
        if failure is not None:
            raise failure
        yield [server for _, server in started]
    finally:
        with ThreadPoolExecutor(max(1, len(started))) as pool:
            list(pool.map(lambda pair: pair[0].__exit__(None, None, None), started))


def sample_photo(path: Path, name: str = 'chelsea', side: int = 160) -> Path:
    """One of scikit-image's bundled photos (`skimage.data.<name>`), its longer side `side` pixels."""
    from skimage import data
    image = Image.fromarray(np.asarray(getattr(data, name)()))
    image.thumbnail((side, side), Image.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def wait_for_result(page, timeout_s: float = 90) -> str:
    """The state the page's result settles in ('done' or 'error') once the answer is drawn."""
    page.wait_for_selector('#result[data-state=done], #result[data-state=error]', timeout=timeout_s * 1000)
    return page.get_attribute('#result', 'data-state')


def keep_screenshot(page, tmp_path: Path, name: str) -> Path:
    """A screenshot of the whole page, in the test's folder and, when CMTNET_SCREENSHOTS names a folder, there."""
    path = tmp_path / f'{name}.png'
    page.screenshot(path=str(path), full_page=True)
    folder = os.environ.get(SCREENSHOTS_VARIABLE)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(folder) / path.name)
    return path
