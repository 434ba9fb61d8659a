"""`cmtnet serve` of detection and segmentation weights: the answers are those `detect predict --json` and
`segment predict --json` print for the same files, in the Hugging Face Inference API's formats."""
import base64
import io
import json
from pathlib import Path
from typing import List

import numpy as np
import pytest
from PIL import Image

from cmtnet.cli import main
from servers import (DETECTION_CLASSES, SEGMENTATION_CLASSES, detector_checkpoint, photo, segmenter_checkpoint,
                     serving)

pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning')


def _printed(capsys, command: str, checkpoint: Path, files: List[Path], *flags: str) -> dict:
    capsys.readouterr()
    assert main([command, 'predict', '--checkpoint', str(checkpoint), '--json', *flags, *map(str, files)]) == 0
    return {entry['image']: entry['predictions'] for entry in map(json.loads, capsys.readouterr().out.splitlines())}


@pytest.fixture(scope='module')
def files(tmp_path_factory) -> List[Path]:
    root = tmp_path_factory.mktemp('images')
    return [photo(root / f'{i}.png', 10 + i, size=(48 + 8 * (i % 2), 64)) for i in range(4)]


def test_detection_answers_are_detect_predict_json_with_boxes_in_the_input_pixels(tmp_path, files, capsys):
    checkpoint = detector_checkpoint(tmp_path / 'detector.safetensors')
    printed = _printed(capsys, 'detect', checkpoint, files, '--score-threshold', '0.05',
                       '--output', str(tmp_path / 'out'))
    with serving(checkpoint, tmp_path / 'serve.log') as server:
        with server.client() as c:
            info = c.get('/info').json()
            assert info['task'] == 'object-detection' and info['labels'] == DETECTION_CLASSES
            for path in files:
                served = c.post('/predict?threshold=0.05', files={'image': (path.name, path.read_bytes())}).json()
                assert served == printed[str(path)]
                height, width = np.asarray(Image.open(path)).shape[:2]
                assert served, 'the detector finds boxes'
                for d in served:
                    assert set(d) == {'label', 'score', 'box'} and d['label'] in DETECTION_CLASSES
                    assert d['score'] >= 0.05
                    box = d['box']
                    assert 0 <= box['xmin'] <= box['xmax'] <= width and 0 <= box['ymin'] <= box['ymax'] <= height
                fewer = c.post('/predict?threshold=0.9', files={'image': (path.name, path.read_bytes())}).json()
                assert fewer == [d for d in served if d['score'] >= 0.9]
            assert c.post('/cam', files={'image': ('x.png', files[0].read_bytes())}).status_code == 404


def test_segmentation_answers_are_segment_predict_json_with_masks_of_the_input_size(tmp_path, files, capsys):
    checkpoint = segmenter_checkpoint(tmp_path / 'segmenter.safetensors')
    printed = _printed(capsys, 'segment', checkpoint, files, '--output', str(tmp_path / 'out'))
    with serving(checkpoint, tmp_path / 'serve.log') as server:
        with server.client() as c:
            assert c.get('/info').json()['task'] == 'image-segmentation'
            for path in files:
                served = c.post('/predict', files={'image': (path.name, path.read_bytes())}).json()
                assert [s['label'] for s in served] == [s['label'] for s in printed[str(path)]]
                assert all(abs(a['score'] - b['score']) < 1e-5 for a, b in zip(served, printed[str(path)]))
                size = Image.open(path).size
                masks = [np.asarray(Image.open(io.BytesIO(base64.b64decode(s['mask'])))) for s in served]
                assert all(m.shape == size[::-1] and set(np.unique(m)) <= {0, 255} for m in masks)
                # the masks of the classes present cover the image once
                assert (sum((m == 255).astype(int) for m in masks) == 1).all()
                assert all(s['label'] in SEGMENTATION_CLASSES and 0 < s['score'] <= 1 for s in served)
