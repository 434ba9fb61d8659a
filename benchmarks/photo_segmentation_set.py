"""A small semantic segmentation set from real photos, in the mask-folder layout `cmtnet segment train`
reads, for checking that `configs/segment_demo.yaml` carries over to a user's own data (three classes and
the background, 256x256 images) with only the data flags and the crop size changed.

It is the embedded segmentation set's generator (`cmtnet.segmentation.synthetic`, whose docstring says
how the objects are cut and pasted) at twice its size: 100 train and 30 val images of 256 px, objects 60-150
px on their long side, 0 background, 1 cat, 2 cup, 3 person, 255 on a silhouette's blended border. The
layout is that of `--train-images/--train-masks/--val-images/--val-masks` and `--classes`:

    ROOT/classes.txt  ROOT/train/images/0000.jpg  ROOT/train/masks/0000.png  ROOT/val/images/...  ROOT/val/masks/...

    python benchmarks/photo_segmentation_set.py runs/photo_seg_set --train 100 --val 30
    cmtnet segment train --config configs/segment_demo.yaml --crop-size 256 \
        --train-images runs/photo_seg_set/train/images --train-masks runs/photo_seg_set/train/masks \
        --val-images runs/photo_seg_set/val/images --val-masks runs/photo_seg_set/val/masks \
        --classes runs/photo_seg_set/classes.txt \
        --backbone-weights runs/demo/model_ema.safetensors --output runs/photo_segment
"""
import argparse
from pathlib import Path

from cmtnet.segmentation.data import class_names, read_mask_set
from cmtnet.segmentation.synthetic import CLASS_NAMES, PhotoSpec, load_photos, object_masks, write_photo_split

SIZE, MIN_OBJECT, MAX_OBJECT = 256, 60, 150


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('output', type=Path)
    parser.add_argument('--train', type=int, default=100)
    parser.add_argument('--val', type=int, default=30)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    spec = PhotoSpec(args.train, args.val, SIZE, MIN_OBJECT, MAX_OBJECT, seed=args.seed)
    photos = load_photos()
    masks = object_masks(photos)
    args.output.mkdir(parents=True, exist_ok=True)
    classes = args.output / 'classes.txt'
    classes.write_text('\n'.join(CLASS_NAMES) + '\n')
    for split, count, seed in (('train', args.train, args.seed), ('val', args.val, args.seed + 1)):
        objects = write_photo_split(photos, masks, args.output / split, count, seed, spec)
        checked = read_mask_set(args.output / split / 'images', args.output / split / 'masks',
                                class_names(classes), strict=True)  # as `cmtnet segment train` reads it
        print(f'{split}: {len(checked.pairs)} images, {objects} objects; {checked.describe()}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
