"""The `cmtnet` command (also `python -m cmtnet`): one subcommand per capability.

Each capability's command module provides `add_parser(subparsers)`, which declares its options (the fields
of the command's options dataclass, engine/options.py) and sets `func(args)` on its parser; `func` builds
those typed options and runs the command. Errors of the
package (`CommandError`) become one line on stderr and the error's exit status, without a traceback.
"""
import argparse
import logging
import os
import sys
import warnings
from typing import Any, Callable, List, Optional

from . import __version__
from .errors import CommandError


def _command_modules() -> List[Any]:
    from .analysis import ablation, complexity, info, scaling, speed
    from .deploy import export, quantize
    from .classification import commands as classification
    from .detection import commands as detection
    from .segmentation import commands as segmentation
    from .serve import command as serve
    return [classification, info, complexity, scaling, ablation, detection, segmentation, export, quantize,
            speed, serve]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='cmtnet',
        description='CMT (Convolutional Neural Networks Meet Vision Transformers): models, training, tools.',
    )
    parser.add_argument('--version', action='version', version=f'cmtnet {__version__}')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    for module in _command_modules():
        module.add_parser(subparsers)
    return parser


# notes that torch and torchao print while compiling an int8 program, about their own internals: nothing a
# user of the command can act on (logger, part of the message)
_LIBRARY_NOTES = (
    ('torch.utils._pytree', 'is an Enum subclass and is now natively supported'),  # torchao's enums
    ('torch.utils.cpp_extension', 'No CUDA runtime is found'),  # inductor building its CPU kernels
)


class _DropNote(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _quiet_library_notes() -> None:
    for name, text in _LIBRARY_NOTES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNote) and f.text == text for f in logger.filters):
            logger.addFilter(_DropNote(text))
    # inductor's int8 lowering copies a zero-point tensor the way torch warns against
    warnings.filterwarnings('ignore', message='To copy construct from a tensor', category=UserWarning,
                            module=r'torch\._inductor\.')


def run_reporting_errors(command: str, fn: Callable[[], Any]) -> int:
    """Run a command's `fn`, with warnings (unreadable images, ...) logged to stderr, less the libraries'
    notes on their own internals; a CommandError becomes its message on stderr (from the first process
    only, under torchrun) and the error's exit status."""
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s: %(message)s')
    _quiet_library_notes()
    try:
        status = fn()
    except CommandError as e:
        if int(os.environ.get('RANK', '0')) == 0:
            print(f'cmtnet {command}: error: {e}', file=sys.stderr)
        return e.exit_status
    return status if isinstance(status, int) else 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_reporting_errors(args.command, lambda: args.func(args))


if __name__ == '__main__':
    sys.exit(main())
