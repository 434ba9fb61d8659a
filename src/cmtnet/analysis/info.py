"""`cmtnet info`: params and MACs of the CMT variants beside their published figures.

Params are counted on the model, MACs by fvcore (analysis/macs.py); the released code's and the paper's
figures come from `PUBLISHED` (models/variants.py), shown for each variant's native input size only.
"""
import argparse
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Callable, Dict, List, Optional

import timm

from ..engine.options import command_parser, option
from ..models.variants import PUBLISHED, VARIANT_ARGS, Published, check_img_size, native_img_size
from .macs import count_macs, count_params
from .tables import Column, format_table, percent

__all__ = ['InfoOptions', 'image_side', 'info_rows', 'add_parser']


def image_side(text: str) -> int:
    """An input side from the command line: a positive multiple of 32 (argparse names the option if not)."""
    try:
        return check_img_size(int(text), 'image size')[0]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


@dataclass
class InfoOptions:
    """What `cmtnet info` shows: which variants, at which input size, in which table format."""
    variant: List[str] = option(default_factory=lambda: list(VARIANT_ARGS), repeat=True, choices=list(VARIANT_ARGS),
                                help='variant to show (repeatable)')
    img_size: Optional[int] = option(None, type=image_side, unset='each variant\'s native size',
                                     help='input side for every variant; published figures are shown only at the '
                                          'native size')
    markdown: bool = option(False, flags=('--markdown',), help='print a GitHub markdown table')


def info_rows(variants: List[str], img_size: Optional[int] = None) -> List[Dict[str, Any]]:
    """Per variant: the input side, the counted params and MACs, and its published figures (None at a size
    other than the native one, which they are not for)."""
    rows = []
    for variant in variants:
        native = native_img_size(variant)
        size = img_size or native
        model = timm.create_model(variant, img_size=size)
        rows.append(dict(model=variant, input=size, params=count_params(model), macs=count_macs(model, size),
                         published=PUBLISHED[variant] if size == native else None))
    return rows


def _published(cell: Callable[[Published, Dict[str, Any]], str]) -> Callable[[Dict[str, Any]], str]:
    return lambda row: '-' if row['published'] is None else cell(row['published'], row)


_COLUMNS = (
    Column('model', lambda r: r['model'], right=False),
    Column('input', lambda r: str(r['input'])),
    Column('params', lambda r: f'{r["params"]:,}'),
    Column('GMACs', lambda r: f'{r["macs"] / 1e9:.3f}'),
    Column('released params', _published(lambda p, r: f'{p.released_params:,}')),
    Column('released GMACs', _published(lambda p, r: f'{p.released_gmacs:.3f}')),
    Column('GMACs vs released', _published(lambda p, r: percent(r['macs'] / 1e9 / p.released_gmacs - 1))),
    Column('paper params', _published(lambda p, r: f'{p.paper_params_m}M')),
    Column('paper GFLOPs', _published(lambda p, r: f'{p.paper_gflops}')),
    Column('paper top-1', _published(lambda p, r: p.paper_top1)),
)


def _run_info(options: InfoOptions) -> int:
    """Print the complexity table of the chosen variants."""
    rows = info_rows(options.variant, options.img_size)
    print(f'CMT complexity. params: counted on the model. GMACs: per image, counted by fvcore '
          f'{version("fvcore")} (attention matmuls included; norms and pooling as fvcore counts them; '
          f'activations and additions not counted).')
    print('Released: the authors\' code (MACs by fvcore too). Paper: arXiv:2107.06263. '
          'Both for the native input size only.')
    print()
    print(format_table(_COLUMNS, rows, markdown=options.markdown))
    return 0


add_parser = command_parser(
    'info', InfoOptions, _run_info,
    help='params and MACs of the CMT variants beside the published figures',
    description='Params and MACs (fvcore) of the CMT variants beside the released code and the paper.')
