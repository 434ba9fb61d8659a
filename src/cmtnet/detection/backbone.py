"""CMT as a detection backbone: the timm feature extractor plus torchvision's feature pyramid.

torchvision's detectors take any module that maps an image batch to an ordered dict of feature maps and
says how many channels they have (`out_channels`); `backbone_utils.BackboneWithFPN` is that adapter for
torchvision's own networks. This is the same adapter for CMT, so that the detectors themselves stay
torchvision's: `timm.create_model(variant, features_only=True, dynamic_img_size=True)` (any input size,
the position biases resized per grid) feeding a 256-channel `FeaturePyramidNetwork`.

Two pyramids, as the detectors' reference configurations use them:
- one-stage detectors (RetinaNet, FCOS) on strides 8-32 plus P6/P7 computed from the last stage's output
  (torchvision's `LastLevelP6P7` fed C5: the "on input" extra convs of the RetinaNet configs the CMT paper
  compared against);
- two-stage detectors (Faster / Mask R-CNN) on strides 4-32 plus a max-pooled stride-64 level.

Fine-tuning controls, as torchvision's `resnet_fpn_backbone` offers them: how many of the four stages
train, and how BatchNorm behaves (`batch_norm`): 'train' (ordinary), 'eval' (running statistics used and
never updated, affine weights still learn) or 'frozen' (timm's `freeze_batch_norm_2d`: fixed buffers).
"""
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
from timm.layers import freeze_batch_norm_2d
from torchvision.ops.feature_pyramid_network import (
    ExtraFPNBlock, FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7,
)

from ..checkpoints import create_model
from ..errors import InputError, did_you_mean_path
from ..models.variants import VARIANT_ARGS

__all__ = ['BATCH_NORM_MODES', 'CMTFeaturePyramid', 'FPN_CHANNELS', 'PYRAMIDS', 'cmt_fpn_backbone']

FPN_CHANNELS = 256
NUM_STAGES = 4
BATCH_NORM_MODES = ('train', 'eval', 'frozen')
# pyramid kind -> the CMT stages it is built on (0: stride 4 ... 3: stride 32)
PYRAMIDS: Dict[str, Sequence[int]] = {'one_stage': (1, 2, 3), 'two_stage': (0, 1, 2, 3)}


class CMTFeaturePyramid(nn.Module):
    """A CMT feature extractor followed by a feature pyramid: image batch -> OrderedDict of 256-ch maps.

    The output is what torchvision's detectors expect of a backbone (`out_channels` says its channels).
    With `batch_norm='eval'` every BatchNorm of the CMT stays in eval mode when the detector is put in
    training mode.
    """

    def __init__(
            self,
            body: nn.Module,
            in_channels_list: Sequence[int],
            extra_blocks: ExtraFPNBlock,
            out_channels: int = FPN_CHANNELS,
            batch_norm_eval: bool = False,
    ):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(in_channels_list), out_channels, extra_blocks=extra_blocks)
        self.out_channels = out_channels
        self.batch_norm_eval = batch_norm_eval

    def train(self, mode: bool = True) -> 'CMTFeaturePyramid':
        super().train(mode)
        if self.batch_norm_eval:
            for m in self.body.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> 'OrderedDict[str, torch.Tensor]':
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))


def _check_options(variant: str, pyramid: str, trainable_stages: int, batch_norm: Optional[str]) -> None:
    if variant not in VARIANT_ARGS:
        raise InputError(f'unknown CMT variant {variant!r}; expected one of {", ".join(VARIANT_ARGS)}')
    if pyramid not in PYRAMIDS:
        raise InputError(f'unknown pyramid {pyramid!r}; expected one of {", ".join(PYRAMIDS)}')
    if isinstance(trainable_stages, bool) or not isinstance(trainable_stages, int) \
            or not 0 <= trainable_stages <= NUM_STAGES:
        raise InputError(f'trainable_stages must be an integer from 0 to {NUM_STAGES}, got {trainable_stages!r}')
    if batch_norm is not None and batch_norm not in BATCH_NORM_MODES:
        raise InputError(f'batch_norm must be one of {", ".join(BATCH_NORM_MODES)}, got {batch_norm!r}')


def _freeze(body: nn.Module, trainable_stages: int) -> None:
    """Freeze the stem and the first `4 - trainable_stages` stages: no gradient, fixed BatchNorm.

    The stem trains only with all four stages, as it feeds nothing but the first.
    """
    frozen = ['stem'] if trainable_stages < NUM_STAGES else []
    frozen += [f'stages_{i}' for i in range(NUM_STAGES - trainable_stages)]
    for name in frozen:
        module = getattr(body, name)
        module.requires_grad_(False)
        freeze_batch_norm_2d(module)  # in place below a container; running statistics stop moving too


def cmt_fpn_backbone(
        variant: str,
        pyramid: str = 'one_stage',
        *,
        backbone_weights: Optional[str] = None,
        trainable_stages: int = NUM_STAGES,
        batch_norm: Optional[str] = None,
        out_channels: int = FPN_CHANNELS,
) -> CMTFeaturePyramid:
    """A CMT + FPN backbone for torchvision's detectors.

    Args:
        variant: 'cmt_ti', 'cmt_xs', 'cmt_s' or 'cmt_b'.
        pyramid: 'one_stage' (strides 8-32 + P6/P7 from C5) or 'two_stage' (strides 4-32 + max pool).
        backbone_weights: A CMT checkpoint to start from: the authors' released file or one of ours
            (.pth or .safetensors). Every backbone entry must load; entries other than the classifier
            and the 1x1 head conv that no backbone part takes are an error naming them.
        trainable_stages: How many of the four stages train, counted from the last (the stem trains only
            with all four); frozen parts get no gradient and fixed BatchNorm.
        batch_norm: 'train', 'eval' or 'frozen' for the trainable stages' BatchNorm; by default 'frozen'
            with `backbone_weights` (torchvision's choice for pretrained backbones) and 'train' without.
        out_channels: Channels of every pyramid level.
    """
    _check_options(variant, pyramid, trainable_stages, batch_norm)
    if batch_norm is None:
        batch_norm = 'frozen' if backbone_weights else 'train'
    if backbone_weights is not None and not Path(backbone_weights).is_file():
        raise InputError(f'backbone weights {backbone_weights} not found (expected a CMT .pth or .safetensors '
                         f'file){did_you_mean_path(backbone_weights)}')
    stages = PYRAMIDS[pyramid]
    # num_classes=0: the classifier of a checkpoint is dropped, not loaded; the features stop at stage 4
    body = create_model(
        variant, backbone_weights, num_classes=0, features_only=True, out_indices=stages, dynamic_img_size=True)
    _freeze(body, trainable_stages)
    if batch_norm == 'frozen':
        freeze_batch_norm_2d(body)
    in_channels = body.feature_info.channels()
    if pyramid == 'one_stage':
        extra_blocks = LastLevelP6P7(in_channels[-1], out_channels)
        extra_blocks.use_P5 = False  # P6 from C5 even where C5 happens to have `out_channels` channels
    else:
        extra_blocks = LastLevelMaxPool()
    return CMTFeaturePyramid(body, in_channels, extra_blocks, out_channels, batch_norm_eval=batch_norm == 'eval')
