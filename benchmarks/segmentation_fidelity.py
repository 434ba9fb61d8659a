"""Params and MACs of Semantic FPN and UPerNet on CMT and on its peers' backbones, beside the peers' published
figures: the fidelity table of docs/segmentation.md.

The peers (Twins-SVT-S, Twins-PCPVT-S, Swin-T, Next-ViT-S) are timm's models as feature extractors, under
the very heads `cmtnet.segmentation` puts on CMT (`SemanticFPNDecoder`, `UPerNetDecoder`, dropout and a 1x1
classifier), counted by the same counter (`cmtnet.analysis.macs`: fvcore, one multiply-accumulate per unit,
the papers' "FLOPs"). Where a measured peer matches what its authors publish, the heads here are the
published heads and CMT's figures compare like for like; where a published figure is off, the table shows
by how much.

mmseg's UPerNet configurations, which the peers' UPerNet figures come from, train with an auxiliary FCN head
on stage 3 (one 3x3 conv to 256 channels, BatchNorm, a 1x1 classifier; dropped at inference) and count its
parameters: the "+aux" column adds them (computed from its shape), the MACs never include it.

    python benchmarks/segmentation_fidelity.py                        # 512x512 and 512x2048, about 3 minutes
    python benchmarks/segmentation_fidelity.py --models cmt_s swin_tiny_patch4_window7_224 --sizes 512x512
"""
import argparse
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn

from cmtnet.analysis.macs import count_macs, count_params
from cmtnet.segmentation.models import CMTSegmenter, SemanticFPNDecoder, UPerNetDecoder, build_segmenter

# (model, head) -> (params M, GFLOPs, input size the source states or None, mIoU, source); None: not given
PUBLISHED: Dict[Tuple[str, str], Tuple[Optional[float], Optional[float], Optional[str], str, str]] = {
    ('twins_svt_small', 'fpn'): (None, None, None, '44.47 (mmseg reproduction)',
                                 'mmsegmentation configs/twins/metafile.yaml'),
    ('twins_pcpvt_small', 'fpn'): (None, None, None, '43.26 (mmseg reproduction)',
                                   'mmsegmentation configs/twins/metafile.yaml'),
    ('nextvit_small', 'fpn'): (36.3, 208.0, None, '46.5', 'Next-ViT README.md, "Semantic FPN 80k"'),
    ('twins_svt_small', 'upernet'): (54.4, 228.0, None, '46.2 (ms 47.1)', 'Twins README.md'),
    ('twins_pcpvt_small', 'upernet'): (54.6, 234.0, None, '46.2 (ms 47.5)', 'Twins README.md'),
    ('swin_tiny_patch4_window7_224', 'upernet'): (60.0, 945.0, None, '44.51 (ms+flip 45.81)',
                                                   'Swin-Transformer-Semantic-Segmentation README.md'),
    ('nextvit_small', 'upernet'): (66.3, 968.0, None, '48.1 (ms 49.0)', 'Next-ViT README.md, "UperNet 160k"'),
}
PEERS = ('twins_svt_small', 'twins_pcpvt_small', 'swin_tiny_patch4_window7_224', 'nextvit_small')
AUX_CHANNELS = 256  # mmseg's auxiliary FCNHead on stage 3


class NCHWFeatures(nn.Module):
    """A timm feature extractor whose maps come out NCHW whatever timm's layout (Swin gives NHWC)."""

    def __init__(self, features: nn.Module):
        super().__init__()
        self.features = features
        self.channels = features.feature_info.channels()

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        maps = self.features(x)
        return [m if m.shape[1] == c else m.permute(0, 3, 1, 2) for m, c in zip(maps, self.channels)]


def build(model: str, head: str, num_classes: int, size: Tuple[int, int]) -> CMTSegmenter:
    """The segmenter of `head` on `model`: ours for a CMT, the same head on timm's features for a peer."""
    if model.startswith('cmt'):
        return build_segmenter(head, model, num_classes)
    kwargs = {'img_size': size, 'strict_img_size': False} if model.startswith('swin') else {}
    body = NCHWFeatures(timm.create_model(model, features_only=True, out_indices=(0, 1, 2, 3), **kwargs))
    channels = body.channels
    decoder = SemanticFPNDecoder(channels) if head == 'fpn' else UPerNetDecoder(channels)
    return CMTSegmenter(body, decoder, num_classes)


def aux_head_params(stage3_channels: int, num_classes: int) -> int:
    """mmseg's FCNHead(num_convs=1, channels=256): 3x3 conv without bias, BatchNorm, 1x1 classifier."""
    return stage3_channels * AUX_CHANNELS * 9 + 2 * AUX_CHANNELS + AUX_CHANNELS * num_classes + num_classes


def measure(model: str, head: str, num_classes: int, sizes: Sequence[Tuple[int, int]]) -> Dict[str, object]:
    seg = build(model, head, num_classes, max(sizes, key=lambda s: s[0] * s[1])).eval()
    params = count_params(seg)
    channels = seg.body.feature_info.channels() if hasattr(seg.body, 'feature_info') else seg.body.channels
    row: Dict[str, object] = {'model': model, 'head': head, 'params': params / 1e6,
                              'params_aux': (params + aux_head_params(channels[2], num_classes)) / 1e6}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # fvcore's notes on uncountable resizes, documented beside the table
        for size in sizes:
            with torch.no_grad():
                row[f'{size[0]}x{size[1]}'] = count_macs(seg, size) / 1e9
    return row


def _size(text: str) -> Tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected HEIGHTxWIDTH, e.g. 512x512, got {text!r}') from None
    return height, width


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--models', nargs='+', default=['cmt_s', *PEERS])
    parser.add_argument('--heads', nargs='+', default=['fpn', 'upernet'], choices=['fpn', 'upernet'])
    parser.add_argument('--sizes', nargs='+', type=_size, default=[(512, 512), (512, 2048)],
                        help='input sizes HEIGHTxWIDTH (default: 512x512 512x2048)')
    parser.add_argument('--num-classes', type=int, default=150, help='ADE20K: 150')
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    size_cols = [f'{h}x{w}' for h, w in args.sizes]
    print('| model | head | params (M) | +aux (M) | ' + ' | '.join(f'GMACs {c}' for c in size_cols)
          + ' | published params / GFLOPs | published mIoU | source |')
    print('|---|---|---:|---:|' + '---:|' * len(size_cols) + '---|---|---|')
    rows = []
    for head in args.heads:
        for model in args.models:
            row = measure(model, head, args.num_classes, args.sizes)
            rows.append(row)
            pub = PUBLISHED.get((model, head))
            if pub is None:
                published, miou, source = '', '', 'measured only' if not model.startswith('cmt') else 'ours'
            else:
                params, gflops, _, miou, source = pub
                published = ' / '.join('-' if v is None else f'{v:g}' for v in (params, gflops))
            macs = ' | '.join(f'{row[c]:.2f}' for c in size_cols)
            print(f'| {model} | {head} | {row["params"]:.2f} | {row["params_aux"]:.2f} | {macs} | {published} | '
                  f'{miou} | {source} |', flush=True)
    return rows


if __name__ == '__main__':
    main()
