"""The embedded segmentation set: objects cut from scikit-image's photos and pasted on crops of others, with
their class masks, read as a user's folders are."""
import numpy as np
from PIL import Image

from cmtnet.segmentation.data import data_paths, read_mask_set
from cmtnet.segmentation.synthetic import (CLASS_NAMES, OBJECTS, PhotoSpec, default_root, load_photos, object_masks,
                                           write_synthetic_masks)

TINY = PhotoSpec(train_images=4, val_images=3, image_size=64, min_object=16, max_object=40)


def test_the_set_is_made_once_in_the_folder_layout_with_its_classes(tmp_path, monkeypatch):
    monkeypatch.setenv('CMTNET_CACHE', str(tmp_path))
    root = write_synthetic_masks(spec=TINY)
    assert root == default_root(TINY) and write_synthetic_masks(spec=TINY) == root  # made once, then reused
    assert (root / 'classes.txt').read_text().splitlines() == list(CLASS_NAMES) == ['background', 'cat', 'cup', 'person']
    values = set()
    for split, count in (('train', TINY.train_images), ('val', TINY.val_images)):
        mask_set = read_mask_set(root / split / 'images', root / split / 'masks', CLASS_NAMES, strict=True)
        assert len(mask_set.pairs) == count
        for image, mask in mask_set.pairs:
            assert Image.open(image).size == Image.open(mask).size == (TINY.image_size,) * 2
            values |= set(np.unique(np.asarray(Image.open(mask))).tolist())
    assert 0 in values and values & {1, 2, 3} and values <= {0, 1, 2, 3, 255}
    # the seed fixes the set: made again elsewhere, every mask is the same
    again = write_synthetic_masks(tmp_path / 'again', spec=TINY)
    for path in sorted((root / 'val' / 'masks').iterdir()):
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(again / 'val' / 'masks' / path.name)))


def test_the_silhouettes_keep_the_object_and_leave_the_backdrop():
    photos = load_photos()
    masks = object_masks(photos)
    for kind, name, (x0, y0, x1, y1), sides in OBJECTS:
        mask = masks[name] > 127
        assert mask.shape == (photos[name].height, photos[name].width)
        if sides is None:  # the object fills its photo: the pasted rectangle
            assert mask.all(), kind
            continue
        box = mask[y0:y1, x0:x1]
        h, w = box.shape
        assert box[h // 2 - h // 8:h // 2 + h // 8, w // 2 - w // 8:w // 2 + w // 8].mean() > 0.9, kind  # the centre
        assert not box[:2].any(), kind  # the top of every silhouette's box is backdrop
        assert 0.2 < box.mean() < 0.9 and not mask[:y0].any() and not mask[:, :x0].any(), kind


def test_no_data_flags_mean_the_embedded_set(tmp_path, monkeypatch):
    monkeypatch.setenv('CMTNET_CACHE', str(tmp_path))
    root = write_synthetic_masks(spec=TINY)
    monkeypatch.setattr('cmtnet.segmentation.synthetic.write_synthetic_masks', lambda: root)

    class Options:
        data = train_images = train_masks = val_images = val_masks = None

    source = data_paths(Options())
    assert source.splits == {s: (root / s / 'images', root / s / 'masks') for s in ('train', 'val')}
    assert source.class_names == list(CLASS_NAMES) and not source.reduce_zero_label
    assert source.hflip == 0.5 and source.scale is None  # photos mirror; the scale is the images' median size
