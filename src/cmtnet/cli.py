"""The `cmtnet` command (also `python -m cmtnet`).

Each subcommand lives in its own module, which provides `add_parser(subparsers)` and sets `func` on it.
"""
import argparse
import sys
from typing import List, Optional

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    from . import complexity, evaluate, predict, train
    parser = argparse.ArgumentParser(
        prog='cmtnet',
        description='CMT (Convolutional Neural Networks Meet Vision Transformers): models, training, tools.',
    )
    parser.add_argument('--version', action='version', version=f'cmtnet {__version__}')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    for module in (train, evaluate, predict, complexity):
        module.add_parser(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args) or 0


if __name__ == '__main__':
    sys.exit(main())
