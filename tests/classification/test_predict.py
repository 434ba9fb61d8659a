"""`predict` on image files: unreadable ones (a decompression bomb among them) are named and left out."""
import logging

import timm
import torch

import cmtnet  # noqa: F401  (registers the models)
from cmtnet.classification.data import eval_transform
from cmtnet.classification.predict import predict
from image_folders import corrupt, decompression_bomb, make_image_folder


def test_unreadable_images_and_a_decompression_bomb_are_named_and_skipped(tmp_path, caplog):
    root = make_image_folder(tmp_path / 'images', per_class=2, splits=('val',))
    good = sorted((root / 'val').rglob('*.png'))
    bad = [corrupt(good.pop(0)), decompression_bomb(tmp_path / 'bomb.png')]
    torch.manual_seed(0)
    model = timm.create_model('cmt_ti', num_classes=2, img_size=32)
    paths = [bad[0], *good[:2], bad[1], good[2]]
    with caplog.at_level(logging.WARNING):
        results = predict(model, paths, eval_transform(32), ['blue', 'red'], top_k=1, batch_size=2)
    assert [path for path, _ in results] == [*good[:2], good[2]]
    assert all(len(top) == 1 and top[0][0] in ('blue', 'red') for _, top in results)
    for path in bad:
        assert f'skipping unreadable image {path}' in caplog.text
