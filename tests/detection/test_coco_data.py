"""COCO reading: each bad input is a one-line error naming file and entry, or a named, counted skip."""
import logging

import pytest
import torch

from cmtnet.detection.data import DetectionSamples, coco_layout, collate, read_coco
from cmtnet.engine.data import train_loader
from cmtnet.errors import InputError
from coco_sets import box, image, tiny_synthetic, write_coco
from image_folders import decompression_bomb


def test_a_missing_or_malformed_annotation_file_is_named(tmp_path):
    (tmp_path / 'images').mkdir()
    with pytest.raises(InputError, match='nope.json does not exist'):
        read_coco(tmp_path / 'nope.json', tmp_path / 'images')
    bad = tmp_path / 'bad.json'
    bad.write_text('{"images": [')
    with pytest.raises(InputError, match='bad.json is not valid JSON'):
        read_coco(bad, tmp_path / 'images')
    bad.write_text('{"images": []}')
    with pytest.raises(InputError, match="bad.json: no 'annotations' list"):
        read_coco(bad, tmp_path / 'images')
    path = write_coco(tmp_path, [image(1)], [{'id': 4, 'image_id': 1, 'category_id': 1}])
    with pytest.raises(InputError, match=r'annotations\[0\] must be an object with id, image_id, category_id, bbox'):
        read_coco(path, tmp_path / 'images')


@pytest.mark.parametrize('case, message', [
    ('missing_image', "image id 2 '2.png' is not in"),
    ('bad_box', r'annotation id 11 has a box of zero or negative size \[2, 3, 0, 12\]'),
    ('bad_category', 'annotation id 12 has category id 7, not in categories'),
])
def test_unusable_entries_are_skipped_named_and_counted_or_errors_when_strict(tmp_path, caplog, case, message):
    annotations = [box(10, 1)]
    annotations += {'missing_image': [box(13, 2)], 'bad_box': [box(11, 1, bbox=(2, 3, 0, 12))],
                    'bad_category': [box(12, 1, category_id=7)]}[case]
    path = write_coco(tmp_path, [image(1), image(2)], annotations, missing=('2.png',) if case == 'missing_image' else ())
    with caplog.at_level(logging.WARNING):
        coco_set = read_coco(path, tmp_path / 'images')
    assert coco_set.skipped == {case: 1}
    assert 'ann.json: skipped 1' in caplog.text and message.replace('\\', '') in caplog.text.replace('\\', '')
    assert list(coco_set.coco.anns) == [10]
    with pytest.raises(InputError, match=message):
        read_coco(path, tmp_path / 'images', strict=True)


def test_an_image_without_annotations_is_kept_as_a_negative(tmp_path):
    path = write_coco(tmp_path, [image(1), image(2)], [box(10, 1, category_id=3)])
    coco_set = read_coco(path, tmp_path / 'images', strict=True)
    assert coco_set.image_ids == [1, 2] and coco_set.negatives == 1 and coco_set.class_names == ['a', 'b']
    samples = DetectionSamples(coco_set, masks=False)
    _, target, _ = samples[0]
    assert target['labels'].tolist() == [2] and target['boxes'].tolist() == [[2, 3, 12, 15]]  # category 3 is label 2
    img, target, skipped = samples[1]
    assert img.shape == (3, 32, 32) and target['boxes'].shape == (0, 4) and target['labels'].shape == (0,)
    assert skipped == 0 and target['image_id'] == 2


def test_an_unreadable_image_is_skipped_with_a_stand_in_or_an_error_when_strict(tmp_path, caplog):
    path = write_coco(tmp_path, [image(1), image(2)], [box(10, 1), box(11, 2)])
    (tmp_path / 'images' / '1.png').write_bytes(b'not a png')
    samples = DetectionSamples(read_coco(path, tmp_path / 'images'))
    with caplog.at_level(logging.WARNING):
        _, target, skipped = samples[0]
    assert skipped == 1 and target['image_id'] == 2 and '1.png' in caplog.text
    with pytest.raises(InputError, match='unreadable image .*1.png'):
        DetectionSamples(read_coco(path, tmp_path / 'images'), strict=True)[0]


def test_a_decompression_bomb_is_skipped_as_unreadable(tmp_path, caplog):
    # PIL refuses it with a DecompressionBombError, which is not an OSError
    path = write_coco(tmp_path, [image(1), image(2), image(3)], [box(10, 1), box(11, 3)])
    bomb = decompression_bomb(tmp_path / 'images' / '2.png')
    samples = DetectionSamples(read_coco(path, tmp_path / 'images'))
    with caplog.at_level(logging.WARNING):
        assert [samples[i][2] for i in range(3)] == [0, 1, 0]
    assert f'skipping unreadable image {bomb}' in caplog.text
    with pytest.raises(InputError, match=f'unreadable image {bomb}'):
        DetectionSamples(read_coco(path, tmp_path / 'images'), strict=True)[1]


def test_val_categories_must_be_the_training_ones(tmp_path):
    path = write_coco(tmp_path, [image(1)], [box(10, 1)])
    with pytest.raises(InputError, match=r'has the category ids \[1, 3\]; the model was trained on \[1, 2\]'):
        read_coco(path, tmp_path / 'images', categories=[1, 2])


def test_the_flip_moves_boxes_with_the_image_and_follows_the_seed(tmp_path):
    path = write_coco(tmp_path, [image(1)], [box(10, 1)])
    samples = DetectionSamples(read_coco(path, tmp_path / 'images'), hflip=1.0)
    plain = DetectionSamples(read_coco(path, tmp_path / 'images'))
    flipped, target, _ = samples[(0, 5)]
    original, _, _ = plain[0]
    assert torch.equal(flipped, original.flip(-1)) and target['boxes'].tolist() == [[20, 3, 30, 15]]
    half = DetectionSamples(read_coco(path, tmp_path / 'images'), hflip=0.5)
    assert all(torch.equal(half[(0, s)][0], half[(0, s)][0]) for s in range(8))
    assert {half[(0, s)][1]['boxes'][0, 0].item() for s in range(8)} == {2, 20}  # both sides, chosen by the seed


def test_the_loader_batches_lists_of_images_and_targets(tmp_path):
    path = write_coco(tmp_path, [image(i) for i in range(1, 5)], [box(10, 1)])
    loader = train_loader(DetectionSamples(read_coco(path, tmp_path / 'images')), batch_size=2, workers=0,
                          collate_fn=collate)
    loader.sampler.set_epoch(0)
    images, targets, skipped = next(iter(loader))
    assert len(images) == len(targets) == 2 and skipped == [0, 0]
    with pytest.raises(InputError, match='fewer than one batch of 8'):
        train_loader(DetectionSamples(read_coco(path, tmp_path / 'images')), batch_size=8, workers=0,
                     collate_fn=collate)


def test_masks_come_with_boxes_and_flip_with_them(tmp_path):
    images, annotations = coco_layout(tiny_synthetic(tmp_path))['train']
    samples = DetectionSamples(read_coco(annotations, images), masks=True, hflip=1.0, first_label=0)
    image, target, _ = samples[(0, 1)]
    assert target['masks'].shape == (len(target['boxes']), *image.shape[1:]) and target['masks'].dtype == torch.uint8
    for mask, (x0, y0, x1, y1) in zip(target['masks'], target['boxes'].int().tolist()):
        rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
        assert (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1) == (x0, y0, x1, y1)
    assert target['labels'].min() >= 0 and target['labels'].max() <= 9  # FCOS/RetinaNet count from 0


def test_the_embedded_digits_train_unflipped_and_given_data_half_flipped():
    from cmtnet.detection.data import train_hflip
    from cmtnet.detection.options import DetectOptions
    assert train_hflip(DetectOptions()) == 0  # a mirrored digit is another shape
    assert train_hflip(DetectOptions(data='coco')) == 0.5
    assert train_hflip(DetectOptions(train_images='i', train_annotations='a.json')) == 0.5
    assert train_hflip(DetectOptions(hflip=0.25)) == 0.25
    assert train_hflip(DetectOptions(data='coco', hflip=0)) == 0
