"""CMT under the two semantic segmentation heads its peers report on ADE20K: Semantic FPN and UPerNet.

The backbone is CMT's timm feature extractor (`features_only=True`, strides 4-32, `dynamic_img_size=True`
so the position biases follow the input), built by `cmtnet.checkpoints.create_model` as the detectors'
backbone is: the released checkpoint or one of ours loads through the model's checkpoint filter, and an
entry no backbone part takes is an error naming it.

The heads are the published ones, at their published widths (mmseg's configurations, which PVT, Twins,
Swin and Next-ViT ran):

- **Semantic FPN** (Kirillov et al., Panoptic FPN, arXiv:1901.02446; PVT's and Next-ViT's segmentation
  head): a 256-channel FPN on strides 4-32 (1x1 lateral convs, nearest top-down sum, a 3x3 output conv per
  level: torchvision's `FeaturePyramidNetwork`, the detectors' pyramid), then the semantic branch: per
  level, 3x3 conv - GroupNorm - ReLU - 2x bilinear upsampling repeated until stride 4, at 128 channels
  (segmentation_models_pytorch's `SegmentationBlock`), the four maps summed. smp's own `FPN` decoder is
  this branch on a pyramid without the 3x3 output convs, which the published head has.
- **UPerNet** (Xiao et al., arXiv:1807.10221; Swin's and Twins' head): segmentation_models_pytorch's
  `UPerNetDecoder` at mmseg's 512 channels: pyramid pooling (1, 2, 3, 6) on stride 32, an FPN with 1x1
  laterals and 3x3 convs, and a 3x3 fusion of the four levels at stride 4.

Both end as mmseg's decode heads do: dropout 0.1 and a 1x1 classifier at stride 4, upsampled bilinearly to
the input. The model takes images in 0..1 and normalises them itself (ImageNet mean and std), as
torchvision's detectors do; it pads the input on the right and bottom to a multiple of 32 (zeros after
normalisation) and crops the logits back, so any input size works and the logits have the input's size.

Every export of `cmtnet segment train` (`model.safetensors`, `best.safetensors`, `model_ema.safetensors`)
carries in its header what evaluation and prediction need (`SegmentationTask.meta`), so that
`segmenter_from_checkpoint` rebuilds the segmenter from the file alone (engine/dense.py, as detection's);
`segmenter_in_precision` runs it at `--precision`.
"""
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from segmentation_models_pytorch.decoders.fpn.decoder import SegmentationBlock
from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder as _SmpUPerNetDecoder
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork

from ..checkpoints import PathLike, create_model
from ..engine.dense import DenseKind
from ..errors import InputError, did_you_mean_path
from ..models.variants import VARIANT_ARGS
from ..runtime import inference_model

__all__ = ['FPN_CHANNELS', 'FPN_HEAD_CHANNELS', 'HEADS', 'SEGMENTATION', 'SIZE_DIVISOR', 'UPERNET_CHANNELS',
           'CMTSegmenter', 'SemanticFPNDecoder', 'UPerNetDecoder', 'build_segmenter', 'segmenter_from_checkpoint',
           'segmenter_in_precision', 'semantic_fpn_cmt', 'upernet_cmt']

SEGMENTATION = DenseKind('segmentation', 'segment', head='head')  # its exports, commands and runs' folder

FPN_CHANNELS = 256  # Semantic FPN: the pyramid's channels
FPN_HEAD_CHANNELS = 128  # Semantic FPN: the semantic branch's channels
UPERNET_CHANNELS = 512  # UPerNet: every conv of the head (mmseg's `channels=512`)
SIZE_DIVISOR = 32  # CMT's last stride: the input is padded to a multiple of it
DROPOUT = 0.1  # before the classifier, as mmseg's decode heads


class SemanticFPNDecoder(nn.Module):
    """Panoptic FPN's semantic branch on a feature pyramid: 4 feature maps (strides 4-32) -> one at stride 4.

    Level i (stride 4 * 2^i) goes through max(1, i) blocks of 3x3 conv - GroupNorm - ReLU, each but the
    stride-4 one followed by 2x bilinear upsampling; the four stride-4 maps are summed.
    """

    def __init__(self, in_channels: Sequence[int], pyramid_channels: int = FPN_CHANNELS,
                 segmentation_channels: int = FPN_HEAD_CHANNELS):
        super().__init__()
        self.fpn = FeaturePyramidNetwork(list(in_channels), pyramid_channels)
        self.scale_heads = nn.ModuleList(
            SegmentationBlock(pyramid_channels, segmentation_channels, n_upsamples=level)
            for level in range(len(in_channels)))
        self.out_channels = segmentation_channels

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        levels = self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features))).values()
        maps = [head(level) for head, level in zip(self.scale_heads, levels)]
        return torch.stack(maps).sum(0)


class UPerNetDecoder(_SmpUPerNetDecoder):
    """segmentation_models_pytorch's UPerNet decoder on the 4 CMT stages: features (strides 4-32) -> one
    map at stride 4. smp's decoder counts an encoder's features from the input (strides 1 and 2 first); CMT
    has none there, so the two are empty places."""

    def __init__(self, in_channels: Sequence[int], channels: int = UPERNET_CHANNELS):
        super().__init__([0, 0, *in_channels], encoder_depth=len(in_channels) + 1, decoder_channels=channels)
        self.out_channels = channels

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        return super().forward([features[0], features[0], *features])


class CMTSegmenter(nn.Module):
    """CMT features -> decoder (stride 4) -> dropout and 1x1 classifier -> logits at the input's size.

    Takes (N, 3, H, W) images in 0..1 of any size; returns (N, num_classes, H, W) logits.
    """

    def __init__(self, body: nn.Module, decoder: nn.Module, num_classes: int, dropout: float = DROPOUT):
        super().__init__()
        self.body = body
        self.decoder = decoder
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(decoder.out_channels, num_classes, 1))
        self.num_classes = num_classes
        self.register_buffer('mean', torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        x = (images - self.mean) / self.std
        x = F.pad(x, (0, -width % SIZE_DIVISOR, 0, -height % SIZE_DIVISOR))
        logits = self.classifier(self.decoder(self.body(x)))
        logits = F.interpolate(logits, size=x.shape[-2:], mode='bilinear', align_corners=False)
        return logits[..., :height, :width]


def _body(variant: str, num_classes: Any, backbone_weights: Optional[PathLike], **backbone_kwargs: Any) -> nn.Module:
    if variant not in VARIANT_ARGS:
        raise InputError(f'unknown CMT variant {variant!r}; expected one of {", ".join(VARIANT_ARGS)}')
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise InputError(f'num_classes must be a positive integer, got {num_classes!r}')
    if backbone_weights is not None:
        if not Path(backbone_weights).is_file():
            raise InputError(f'backbone weights {backbone_weights} not found '
                             f'(expected a CMT .pth or .safetensors file){did_you_mean_path(backbone_weights)}')
    # num_classes=0: a checkpoint's classifier is dropped, not loaded; the features stop at stage 4
    return create_model(variant, backbone_weights, num_classes=0, features_only=True, out_indices=(0, 1, 2, 3),
                        dynamic_img_size=True, **backbone_kwargs)


def semantic_fpn_cmt(variant: str = 'cmt_s', num_classes: int = 150, *,
                     backbone_weights: Optional[PathLike] = None, pyramid_channels: int = FPN_CHANNELS,
                     segmentation_channels: int = FPN_HEAD_CHANNELS, **backbone_kwargs: Any) -> CMTSegmenter:
    """Semantic FPN (256-channel FPN, 128-channel semantic branch) on CMT.

    Args:
        variant: 'cmt_ti', 'cmt_xs', 'cmt_s' or 'cmt_b'.
        num_classes: Classes the logits score (ADE20K: 150).
        backbone_weights: A CMT checkpoint for the backbone: the authors' released file or one of ours
            (.pth or .safetensors).
        pyramid_channels: The pyramid's width (a multiple of 32, for GroupNorm's 32 groups); the default
            is the published one.
        segmentation_channels: The semantic branch's width (a multiple of 32); the default is the
            published one.
        backbone_kwargs: Passed to `timm.create_model` for the backbone (e.g. drop_path_rate).
    """
    body = _body(variant, num_classes, backbone_weights, **backbone_kwargs)
    decoder = SemanticFPNDecoder(body.feature_info.channels(), pyramid_channels, segmentation_channels)
    return CMTSegmenter(body, decoder, num_classes)


def upernet_cmt(variant: str = 'cmt_s', num_classes: int = 150, *, backbone_weights: Optional[PathLike] = None,
                channels: int = UPERNET_CHANNELS, **backbone_kwargs: Any) -> CMTSegmenter:
    """UPerNet (pyramid pooling + FPN, 512 channels by default, as published) on CMT; the other arguments
    as for `semantic_fpn_cmt`."""
    body = _body(variant, num_classes, backbone_weights, **backbone_kwargs)
    return CMTSegmenter(body, UPerNetDecoder(body.feature_info.channels(), channels), num_classes)


HEADS: Dict[str, Callable[..., CMTSegmenter]] = {'fpn': semantic_fpn_cmt, 'upernet': upernet_cmt}


def build_segmenter(head: str, variant: str, num_classes: int, **kwargs: Any) -> CMTSegmenter:
    """`HEADS[head](variant, num_classes, **kwargs)`, with a clear error for an unknown head."""
    if head not in HEADS:
        raise InputError(f'unknown segmentation head {head!r}; expected one of {", ".join(HEADS)}')
    return HEADS[head](variant, num_classes, **kwargs)


def segmenter_from_checkpoint(path: PathLike) -> Tuple[CMTSegmenter, Dict[str, Any]]:
    """(the segmenter in eval mode, its metadata) from a weight file a segmentation run exported: its header
    (`SEGMENTATION.meta`) names the head, the variant, the classes, the crop size and the evaluation scale, and
    whether the run evaluated with sliding windows."""
    return SEGMENTATION.load(path, lambda meta: build_segmenter(meta['head'], meta['model'], meta['num_classes']))


def segmenter_in_precision(model: CMTSegmenter, precision: str, device: torch.device) -> nn.Module:
    """`model` (in eval mode) for inference at `--precision`: itself for fp32; for bf16, a copy with its CMT
    folded for inference (models/fuse.py) in channels-last memory, and the backbone, decoder and classifier
    running their weights in bfloat16 (`runtime.inference_model`), while the normalisation of the input and the
    resize of the logits to it stay in float32."""
    return inference_model(model, device, precision, parts=('body', 'decoder', 'classifier'))
