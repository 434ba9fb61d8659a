"""The picture of `cmtnet serve`'s page in docs/serve.png: one image classified, its top classes beside its
class activation map.

    python benchmarks/serve_screenshot.py --checkpoint runs/demo/model_ema.safetensors --output docs/serve.png

Serves the checkpoint (`cmtnet serve` on a free port), opens the page at 1280x800 in headless Chromium
(Playwright driving the system's chromium), uploads the image, waits until the answer is drawn and writes the
screenshot, its colours reduced when the PNG would be over --max-kb. The image is --image, or by default a
held-out handwritten digit of the demo's test split (`--digit`, the split's index), drawn at 256 px as the
demo's data draws it, so that the demo's weights see what they were trained on.
"""
import argparse
import io
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from PIL import Image


def _digit(index: int, folder: Path) -> Path:
    from cmtnet.classification.data import DigitsDataset
    image, label = DigitsDataset('test', 256)[index]
    path = folder / f'digit_{label}.png'
    image.save(path)
    return path


def _port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f'cmtnet serve exited with {process.returncode}:\n{log.read_text()[-3000:]}')
        try:
            with urllib.request.urlopen(f'{url}/ready', timeout=5):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    raise SystemExit(f'cmtnet serve was not ready within {timeout_s:g} s')


def _screenshot(url: str, image: Path, chromium: str) -> bytes:
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_page(viewport={'width': 1280, 'height': 800})
        page.goto(url)
        page.wait_for_function("document.querySelector('#model').textContent.includes('·')")
        page.set_input_files('#file', str(image))
        page.wait_for_selector('#result[data-state=done], #result[data-state=error]', timeout=120_000)
        if page.get_attribute('#result', 'data-state') == 'error':
            raise SystemExit(f'the service answered an error: {page.text_content("#error")}')
        print(f'{image.name}: {page.text_content("#top-label")} {page.text_content("#top-score")}')
        shot = page.screenshot()
        browser.close()
    return shot


def _fitted(png: bytes, max_kb: int) -> bytes:
    """`png`, or the same picture in 256 colours when it is over `max_kb` KB."""
    if len(png) <= max_kb * 1024:
        return png
    buffer = io.BytesIO()
    few_colours = Image.open(io.BytesIO(png)).convert('RGB').quantize(256, dither=Image.Dither.NONE)
    few_colours.save(buffer, 'PNG', optimize=True)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--checkpoint', default='runs/demo/model_ema.safetensors', help='classification weights')
    parser.add_argument('--image', type=Path, help='the image to classify (default: a held-out digit)')
    parser.add_argument('--digit', type=int, default=3, help="index of the digit in the demo's test split")
    parser.add_argument('--output', type=Path, default=Path('docs/serve.png'))
    parser.add_argument('--max-kb', type=int, default=300, help='largest PNG written, in KB')
    parser.add_argument('--chromium', default=shutil.which('chromium') or '/usr/bin/chromium')
    args = parser.parse_args()
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f'no checkpoint at {args.checkpoint}: train the demo first (make demo) or pass --checkpoint')

    port = _port()
    url = f'http://127.0.0.1:{port}'
    with tempfile.TemporaryDirectory() as folder:
        image = args.image or _digit(args.digit, Path(folder))
        log = Path(folder) / 'serve.log'
        with open(log, 'wb') as out:
            server = subprocess.Popen([sys.executable, '-m', 'cmtnet', 'serve', '--checkpoint', args.checkpoint,
                                       '--port', str(port)], stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_ready(url, server, log, timeout_s=300)
            png = _fitted(_screenshot(url, image, args.chromium), args.max_kb)
        finally:
            server.terminate()
            server.wait(60)
    args.output.write_bytes(png)
    print(f'{args.output}: {len(png) / 1024:.0f} KB')


if __name__ == '__main__':
    main()
