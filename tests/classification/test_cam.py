"""Class activation maps: drawn from a stage whose map can show where the model looks, and written by
`cmtnet predict --cam DIR`, one overlay per image."""
import numpy as np
import pytest
import timm
import torch
from PIL import Image

import cmtnet  # noqa: F401  (registers the models)
from cmtnet.checkpoints import export_weights
from cmtnet.classification.cam import MIN_MAP, ActivationMaps, cam_stage
from cmtnet.classification.data import eval_transform
from cmtnet.cli import main


@pytest.mark.parametrize('img_size, stage', [(32, 1), (64, 2), (224, 3)])
def test_the_map_comes_from_the_deepest_stage_of_at_least_4_cells(img_size, stage):
    model = timm.create_model('cmt_ti', num_classes=3, img_size=img_size).eval()
    assert cam_stage(model, img_size) == stage
    with torch.no_grad():
        side = model.stages[:stage + 1](model.stem(torch.zeros(1, 3, img_size, img_size))).shape[-1]
    assert side >= MIN_MAP


def _checkpoint(path, img_size=64):
    torch.manual_seed(0)
    model = timm.create_model('cmt_ti', num_classes=3, img_size=img_size)
    export_weights(path, model.state_dict(), dict(model='cmt_ti', img_size=img_size, num_classes=3,
                                                  class_names=['a', 'b', 'c'], crop_pct=0.875,
                                                  interpolation='bicubic'))
    return model


def test_an_overlay_shows_the_input_tinted_by_where_the_model_looks(tmp_path):
    model = _checkpoint(tmp_path / 'm.safetensors').eval()
    maps = ActivationMaps(model, eval_transform(64), 64)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8))
    drawn = np.asarray(maps.overlay(image))
    assert drawn.shape == (224, 224, 3)  # a 64 px view drawn at 224 to be seen
    # a heat map of more than one value: the overlay is not the input under one flat tint
    heat = maps.cam(input_tensor=maps.transform(image)[None], targets=None)[0]
    assert heat.shape == (64, 64) and heat.max() > heat.min()


def test_predict_cam_writes_an_overlay_per_image(tmp_path, capsys):
    _checkpoint(tmp_path / 'm.safetensors')
    images = []
    for i, folder in enumerate(('x', 'y')):
        (tmp_path / folder).mkdir()
        images.append(tmp_path / folder / 'photo.jpg')
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(images[-1])
    assert main(['predict', '--checkpoint', str(tmp_path / 'm.safetensors'), '--cam', str(tmp_path / 'cams'),
                 *map(str, images)]) == 0
    written = sorted(p.name for p in (tmp_path / 'cams').iterdir())
    assert written == ['x_photo.png', 'y_photo.png']
    first, second = (np.asarray(Image.open(tmp_path / 'cams' / n)) for n in written)
    assert first.shape == second.shape == (224, 224, 3) and not np.array_equal(first, second)
    assert '2 class activation map(s) in' in capsys.readouterr().out
