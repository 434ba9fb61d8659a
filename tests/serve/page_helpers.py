"""What the page tests need besides one server: several servers started side by side, photos, and the page's
screenshots kept."""
import contextlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import numpy as np
from PIL import Image

from servers import Server, serving

SCREENSHOTS_VARIABLE = 'CMTNET_SCREENSHOTS'


def chromium() -> Optional[str]:
    """Debian's chromium, which Playwright drives in place of a browser of its own; None when there is none."""
    return shutil.which('chromium') or ('/usr/bin/chromium' if os.path.exists('/usr/bin/chromium') else None)


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
