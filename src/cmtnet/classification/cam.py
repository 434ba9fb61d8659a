"""Class activation maps: where a CMT classifier looks when it names a class.

Grad-CAM (the `grad-cam` package) on the last stage's output, the map that has seen every block, for the
image's top class; at an input so small that the last stage's map is under `MIN_MAP` cells a side (the
digits' 32 px leave it 1x1, a map Grad-CAM can only fill evenly), on the deepest stage whose map is not, laid over the image as the model sees it (resized and centre-cropped). It
needs the float weights and their gradients, so it runs an unfolded float32 copy of the model; an int8
program has none. `cmtnet predict --cam DIR` writes the overlays, and `cmtnet serve` draws the same one
on its page.
"""
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from ..checkpoints import atomic_write, create_model
from ..int8_program import is_quantized_file
from ..engine.data import output_names, read_image
from ..errors import InputError
from .data import eval_transform

__all__ = ['MIN_MAP', 'ActivationMaps', 'cam_stage', 'write_cams']

_MIN_SIDE = 224  # small inputs (the 32 px digits) are drawn larger, to be seen
MIN_MAP = 4


def cam_stage(model: nn.Module, img_size: int) -> int:
    """The index of the stage whose map the activation map is drawn from: the last one, or the deepest one
    whose map is at least `MIN_MAP` cells a side at `img_size`."""
    x = torch.zeros(1, 3, img_size, img_size)
    sides = []
    with torch.no_grad():
        x = model.stem(x)
        for stage in model.stages:
            x = stage(x)
            sides.append(min(x.shape[-2:]))
    return max([i for i, side in enumerate(sides) if side >= MIN_MAP], default=len(sides) - 1)


class ActivationMaps:
    """Grad-CAM overlays of a float classifier with `stages` (a CMT), for images as `transform` feeds it."""

    def __init__(self, model: nn.Module, transform: Any, img_size: int):
        from pytorch_grad_cam import GradCAM
        self.model = model.eval()
        self.transform = transform
        self.cam = GradCAM(model=self.model, target_layers=[self.model.stages[cam_stage(self.model, img_size)]])
        normalize = next(t for t in transform.transforms if hasattr(t, 'mean'))
        self.mean = torch.as_tensor(normalize.mean).view(3, 1, 1)
        self.std = torch.as_tensor(normalize.std).view(3, 1, 1)

    def overlay(self, image: Image.Image, class_index: Optional[int] = None) -> Image.Image:
        """`image` as the model sees it, with the activation map of `class_index` (default: the top class)."""
        from pytorch_grad_cam.utils.image import show_cam_on_image
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        x = self.transform(image)[None]
        targets = None if class_index is None else [ClassifierOutputTarget(class_index)]
        with torch.enable_grad():
            heat = self.cam(input_tensor=x, targets=targets)[0]
        seen = (x[0] * self.std + self.mean).clamp(0, 1).permute(1, 2, 0).numpy().astype(np.float32)
        drawn = Image.fromarray(show_cam_on_image(seen, heat, use_rgb=True, image_weight=0.55))
        side = max(drawn.size)
        if side < _MIN_SIDE:
            scale = _MIN_SIDE / side
            drawn = drawn.resize((round(drawn.width * scale), round(drawn.height * scale)), Image.BILINEAR)
        return drawn


def float_classifier(checkpoint: str, setup: Dict[str, Any]) -> nn.Module:
    """The unfolded float32 model of `checkpoint` as `load_for_inference` described it (`setup`)."""
    if is_quantized_file(checkpoint):
        raise InputError(f'{checkpoint} is an int8 program: class activation maps need the float weights it was '
                         f'quantized from (their gradients); pass that checkpoint instead')
    return create_model(setup['name'], checkpoint, num_classes=setup['num_classes'], img_size=setup['img_size'])


def write_cams(options: Any, paths: Sequence[Path], setup: Dict[str, Any], labels: Sequence[str]) -> List[Path]:
    """`cmtnet predict --cam DIR`: each image's overlay for its top class, as DIR/<name>.png (`output_names`)."""
    maps = ActivationMaps(float_classifier(options.checkpoint, setup),
                          eval_transform(setup['img_size'], setup['crop_pct'], setup['interpolation']),
                          setup['img_size'])
    out = Path(options.cam)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path, name in zip(paths, output_names(paths)):
        drawn = maps.overlay(read_image(path))
        target = out / name
        atomic_write(target, lambda f: drawn.save(f, format='PNG'))
        written.append(target)
    return written
