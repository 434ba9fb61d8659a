"""Tiny generated ImageFolder trees for the training, data and command-line tests."""
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np
from PIL import Image

# class name -> mean colour: classes a small model tells apart in a few steps
COLOURS: Dict[str, Tuple[int, int, int]] = {'blue': (40, 60, 200), 'red': (200, 50, 40)}


def make_image_folder(
        root: Path,
        per_class: int = 8,
        splits: Sequence[str] = ('train', 'val'),
        size: int = 32,
        seed: int = 0,
) -> Path:
    """ROOT/<split>/<class>/<n>.png: noisy images around each class's colour, with a brighter square."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = np.clip(rng.normal(colour, 40, size=(size, size, 3)), 0, 255)
                y, x = rng.integers(0, size // 2, size=2)
                pixels[y:y + size // 3, x:x + size // 3] += 50
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f'{i}.png')
    return root


def corrupt(path: Path) -> Path:
    """Turn an image file into a truncated, undecodable one."""
    path.write_bytes(path.read_bytes()[:40])
    return path


def decompression_bomb(path: Path) -> Path:
    """A 30000x30000 PNG of about 0.1 MB: PIL refuses to open it (DecompressionBombError, not an OSError)."""
    Image.new('1', (30000, 30000)).save(path, optimize=True)
    assert path.stat().st_size < 1_000_000
    return path
