"""A segmenter from the weight file a segmentation run exported, with nothing else.

Every export of `cmtnet segment train` (`model.safetensors`, `best.safetensors`, `model_ema.safetensors`)
carries in its header what evaluation and prediction need (`SegmentationTask.meta`): the head, the CMT
variant, the number and names of the classes, the crop size and the evaluation scale, and whether the run
evaluated with sliding windows. `segmenter_from_checkpoint` rebuilds the model from the file alone.
"""
from typing import Any, Dict, Optional, Tuple

import safetensors.torch

from ..checkpoints import PathLike, task_checkpoint_meta
from ..errors import InputError
from .models import CMTSegmenter, build_segmenter

__all__ = ['checkpoint_meta', 'segmenter_from_checkpoint']

TASK = 'segmentation'


def checkpoint_meta(path: Optional[PathLike]) -> Dict[str, Any]:
    """The metadata of a weight file a segmentation run exported; InputError if none is given, or the file
    is not one a segmentation run wrote."""
    return task_checkpoint_meta(path, TASK, 'cmtnet segment train')


def segmenter_from_checkpoint(path: PathLike) -> Tuple[CMTSegmenter, Dict[str, Any]]:
    """(the segmenter in eval mode, its metadata) from a weight file a segmentation run exported."""
    meta = checkpoint_meta(path)
    model = build_segmenter(meta['head'], meta['model'], meta['num_classes'])
    try:
        model.load_state_dict(safetensors.torch.load_file(str(path)))
    except RuntimeError as e:
        raise InputError(f'cannot load {path} into {meta["head"]} on {meta["model"]}: {e}') from e
    return model.eval(), meta
