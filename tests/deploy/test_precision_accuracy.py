"""Inference precision on real photos: the photo classification set (benchmarks/photo_classification_set.py) is
an ImageFolder tree of seeded crops, and a folded CMT in bfloat16 keeps the fp32 model's top-1 on it, as
benchmarks/precision_accuracy.py measures it.

Training a CMT for long enough to classify photos takes minutes, so the model is made in a few seconds
instead: CMT-Ti at 96 px with random norm affines and biases (a fresh model's identities would hide a wrong
fold), its BatchNorm statistics those of the training crops (with random statistics every image would give
nearly the same features, and every prediction the same class), and its classifier fitted to the training
crops' features by ridge regression. It tells the three photos apart well above chance, so its top-1 and
its agreement with itself in bfloat16 are measured on predictions that vary from image to image.
"""
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torch.nn.modules.batchnorm import _BatchNorm

from cmtnet.checkpoints import export_weights
from cmtnet.classification.data import build_dataset, eval_transform
from cmtnet.engine.data import ReadableImages
from norms import randomise_norms

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'benchmarks'))
import photo_classification_set as photo_set  # noqa: E402
import precision_accuracy  # noqa: E402

CLASSES = ['astronaut', 'cat', 'coffee']
SIZE = 96
TRAIN, VAL = 30, 100


@pytest.fixture(scope='module')
def photos():
    return photo_set.load_photos(CLASSES)


@pytest.fixture(scope='module')
def photo_folder(photos, tmp_path_factory):
    root = tmp_path_factory.mktemp('photo_cls_set')
    photo_set.make_split(photos, root / 'train', TRAIN, SIZE, seed=0)
    photo_set.make_split(photos, root / 'val', VAL, SIZE, seed=1)
    return root


@torch.no_grad()
def photo_classifier(root: Path) -> torch.nn.Module:
    """CMT-Ti with random norm affines, the BatchNorm statistics of the train crops of `root` and a ridge
    classifier on their features (see the module docstring)."""
    torch.manual_seed(0)
    model = randomise_norms(timm.create_model('cmt_ti', img_size=SIZE, num_classes=len(CLASSES)))
    train = ReadableImages(build_dataset(root, 'train', SIZE), eval_transform(SIZE))
    images = torch.stack([train[i][0] for i in range(len(train))])
    targets = torch.tensor(train.dataset.targets)
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # the plain average over the one batch
    model.train()(images)
    model.eval()
    features = model.forward_head(model.forward_features(images), pre_logits=True)
    features = torch.cat([features, torch.ones(len(features), 1)], 1)
    gram = features.T @ features
    ridge = 1e-2 * gram.diagonal().mean() * torch.eye(len(gram))
    solution = torch.linalg.solve(gram + ridge, features.T @ (2 * F.one_hot(targets, len(CLASSES)).float() - 1))
    model.get_classifier().weight.copy_(solution[:-1].T)
    model.get_classifier().bias.copy_(solution[-1])
    return model


def test_the_set_is_an_image_folder_of_seeded_crops(photos, photo_folder, tmp_path):
    val = build_dataset(photo_folder, 'val', SIZE)
    assert val.classes == CLASSES
    assert [val.targets.count(c) for c in range(len(CLASSES))] == [34, 33, 33]
    assert {Image.open(path).size for path, _ in val.samples} == {(SIZE, SIZE)}
    assert len(build_dataset(photo_folder, 'train', SIZE)) == TRAIN
    # the same seed draws the same crops, another seed others
    photo_set.make_split(photos, tmp_path / 'again', TRAIN, SIZE, seed=0)
    photo_set.make_split(photos, tmp_path / 'other', TRAIN, SIZE, seed=5)
    first = sorted((photo_folder / 'train').rglob('*.jpg'))
    again = sorted((tmp_path / 'again').rglob('*.jpg'))
    other = sorted((tmp_path / 'other').rglob('*.jpg'))
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert all(a.read_bytes() != b.read_bytes() for a, b in zip(first, other))


def test_bf16_keeps_the_fp32_predictions_on_photo_crops(photo_folder, tmp_path):
    model = photo_classifier(photo_folder)
    checkpoint = tmp_path / 'model.safetensors'
    export_weights(checkpoint, model.state_dict(), dict(model='cmt_ti', img_size=SIZE, class_names=CLASSES))
    fp32, bf16 = precision_accuracy.measure(str(checkpoint), str(photo_folder), ['fp32', 'bf16'], batch_size=4)
    assert fp32.count == bf16.count == VAL
    assert fp32.agreement == 100 and fp32.drop == 0
    assert fp32.top1 > 100 / len(CLASSES) + 10  # it does tell the photos apart
    # a model fitted in seconds has borderline crops: bf16 rounding may move 1-2 of the 100 (a wrong fold or
    # cast moves most of them); trained models are held to 99.5% by benchmarks/precision_accuracy.py
    assert bf16.agreement >= 98
    assert abs(bf16.drop) <= 1
