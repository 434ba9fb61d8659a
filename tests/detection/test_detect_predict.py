"""`detect predict` on image files: one drawn file per input, unreadable files named and skipped."""
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cmtnet.detection import build_detector
from cmtnet.detection.predict import predict_files
from image_folders import corrupt, decompression_bomb

META = {'detector': 'fcos', 'class_names': ['a', 'b'], 'category_ids': [1, 3]}


@pytest.fixture(scope='module')
def detector() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_detector('fcos', 'cmt_ti', 2, min_size=64, max_size=64)


def _photo(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


def test_same_named_files_in_different_folders_get_their_own_drawing(detector, tmp_path):
    files = [_photo(tmp_path / 'in' / 'a' / 'x.jpg', 0), _photo(tmp_path / 'in' / 'b' / 'x.jpg', 1),
             _photo(tmp_path / 'in' / 'b' / 'x.png', 2)]
    found = predict_files(detector, META, files, tmp_path / 'out', 0.0, torch.device('cpu'))
    drawn = [Path(item['drawn']) for item in found]
    assert [item['image'] for item in found] == [str(f) for f in files]
    assert len(set(drawn)) == 3 and all(d.is_file() and d.parent == tmp_path / 'out' for d in drawn)
    assert [d.name for d in drawn] == ['a_x.png', 'b_x.png', 'b_x-2.png']
    # each drawing is of its own image (the same size, different pixels)
    pixels = [np.asarray(Image.open(d)) for d in drawn]
    assert all(p.shape == (48, 64, 3) for p in pixels) and not np.array_equal(pixels[0], pixels[1])
    assert json.loads((tmp_path / 'out' / 'detections.json').read_text()) == found
    # a single folder keeps the plain names, and the names are the same every time
    again = predict_files(detector, META, files[:1], tmp_path / 'one', 0.0, torch.device('cpu'))
    assert Path(again[0]['drawn']).name == 'x.png'


def test_unreadable_images_and_a_decompression_bomb_are_named_and_skipped(detector, tmp_path, caplog):
    files = [decompression_bomb(tmp_path / '0.png'), corrupt(_photo(tmp_path / '1.png', 1)),
             _photo(tmp_path / '2.png', 2), (tmp_path / '3.jpg'), _photo(tmp_path / '4.png', 4)]
    files[3].write_bytes(b'not an image')
    with caplog.at_level(logging.WARNING):
        found = predict_files(detector, META, files, tmp_path / 'out', 0.0, torch.device('cpu'))
    assert [item['image'] for item in found] == [str(files[2]), str(files[4])]
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['2.png', '4.png', 'detections.json']
    for bad in (files[0], files[1], files[3]):
        assert f'skipping unreadable image {bad}' in caplog.text
