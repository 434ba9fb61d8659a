"""Protocol inference: sliding windows cover every pixel and agree with whole-image logits where the model
sees pixels alone, flips and scales average scores, and scores come back at the image's size."""
import pytest
import torch
import torch.nn as nn

from cmtnet.segmentation import build_segmenter
from cmtnet.segmentation.inference import segment, slide_logits


class PixelModel(nn.Module):
    """Logits of each pixel from that pixel alone (a 1x1 conv): any window gives the same logits there."""

    def __init__(self, classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, classes, 1)
        self.calls = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return self.conv(x)


@pytest.mark.parametrize('size', [(70, 100), (20, 30), (64, 64)])
def test_sliding_windows_agree_with_the_whole_image(size):
    model = PixelModel()
    images = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(slide_logits(model, images, 3, crop=32, stride=21), model(images))
    crops = model.calls[:-1]
    assert all(c[-2:] == (min(32, size[0]), min(32, size[1])) for c in crops)


def test_segment_resizes_as_the_protocol_and_returns_scores_at_the_image_size():
    model = PixelModel()
    image = torch.rand(3, 30, 40, generator=torch.Generator().manual_seed(2))
    scores = segment(model, image, 3, scale=(128, 64))
    assert model.calls == [(1, 3, 64, 85)]  # short side to 64, aspect kept
    assert scores.shape == (3, 30, 40)
    torch.testing.assert_close(scores.sum(0), torch.ones(30, 40))
    model.calls.clear()
    segment(model, image, 3, scale=(128, 64), scales=(0.5, 1.0), flip=True, slide=True, crop=48, stride=32)
    # scale 0.5: 32x43, smaller than a window, whole; scale 1.0: 64x85 in 2 x 3 windows, run as one batch
    assert sorted(set(model.calls)) == [(1, 3, 32, 43), (6, 3, 48, 48)]


def test_flip_of_a_mirror_symmetric_model_changes_nothing():
    model = PixelModel()
    image = torch.rand(3, 24, 36, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(segment(model, image, 3, scale=None, flip=True), segment(model, image, 3, scale=None))


def test_cmt_segmenter_slides_over_a_large_image():
    model = build_segmenter('fpn', 'cmt_ti', 4, pyramid_channels=64, segmentation_channels=32).eval()
    scores = segment(model, torch.rand(3, 80, 150), 4, scale=None, slide=True, crop=64, stride=43)
    assert scores.shape == (4, 80, 150) and torch.isfinite(scores).all()
