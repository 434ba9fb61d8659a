"""Where a command's options come from: built-in default < recipe preset < YAML config file < command line.

A subcommand declares its options with plain argparse and then calls `track_defaults` on its parser, so
that `resolve` can tell an option the user typed from one left at its default. A config file holds the
same options, spelled `lr_base: 5.0e-4` or `lr-base: 5.0e-4`; it is checked by the very parser that checks
the command line, so both accept the same values and reject the same mistakes.
"""
import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

import yaml

__all__ = [
    'CommandError', 'InputError', 'HelpFormatter', 'resolve', 'run_reporting_errors', 'track_defaults',
    'write_config',
]


class CommandError(Exception):
    """An error the command line reports as a one-line message (no traceback) and an exit status."""
    exit_status = 1


class InputError(CommandError, ValueError):
    """Bad input from the user (an option, a config file, a data folder, a checkpoint).

    The message must name the bad value and what was expected.
    """
    exit_status = 2


class _Default:
    """An option's built-in default, as argparse holds it until `resolve` replaces it."""

    def __init__(self, value: Any):
        self.value = value

    def __str__(self) -> str:  # what `%(default)s` shows in --help
        return str(self.value)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: ...)' after an option's help, except when the default is nothing worth showing."""

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        default = action.default.value if isinstance(action.default, _Default) else action.default
        if default is None or default is False or default == [] or '%(default)' in (action.help or ''):
            return action.help
        return super()._get_help_string(action)


def track_defaults(parser: argparse.ArgumentParser) -> None:
    """Mark every default of `parser`, for `resolve`. Call it once all options are added."""
    for action in parser._actions:
        if action.default is not argparse.SUPPRESS and action.dest != 'help':
            action.default = _Default(action.default)


def _config_tokens(config: Mapping[str, Any], path: Path) -> List[str]:
    """A config mapping as command-line tokens: `lr: 0.1` -> `--lr 0.1`, `compile: false` -> `--no-compile`."""
    tokens = []
    for key, value in config.items():
        option = '--' + str(key).replace('_', '-')
        if key in ('config', 'func'):
            raise InputError(f'{path}: {key!r} cannot be set in a config file')
        if value is None:
            continue  # an explicit null keeps the default
        if isinstance(value, bool):
            tokens.append(option if value else '--no-' + option[2:])
        elif isinstance(value, (list, tuple)):
            tokens += [option, *map(str, value)]
        else:
            tokens += [option, str(value)]
    return tokens


def _read_config(parser: argparse.ArgumentParser, path: Path) -> Dict[str, Any]:
    """The options a YAML config file sets, checked and converted by `parser`."""
    if not path.is_file():
        raise InputError(f'config file {path} does not exist')
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise InputError(f'config file {path} is not valid YAML: {e}') from e
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise InputError(f'config file {path} must hold a mapping of option: value, got {type(config).__name__}')
    parser.exit_on_error = False  # raise ArgumentError instead of exiting, to name the file in the message
    try:
        parsed, unknown = parser.parse_known_args(_config_tokens(config, path))
    except argparse.ArgumentError as e:
        raise InputError(f'config file {path}: {e}') from e
    finally:
        parser.exit_on_error = True
    if unknown:
        valid = sorted(a.dest for a in parser._actions if a.option_strings and a.dest not in ('help', 'config'))
        raise InputError(f'config file {path}: unknown option {unknown[0]!r}; valid options: {", ".join(valid)}')
    options = {a.dest for a in parser._actions if a.option_strings}
    return {k: v for k, v in vars(parsed).items() if k in options and not isinstance(v, _Default)}


def resolve(
        parser: argparse.ArgumentParser,
        args: argparse.Namespace,
        presets: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> argparse.Namespace:
    """The options of a run: built-in defaults, overridden by the recipe preset (`recipe`, from the command
    line or the config file), then by the config file (`config`), then by the command line."""
    # the parser's own options only (not the top-level command name or the handler)
    own = {a.dest for a in parser._actions if a.dest != 'help'}
    args = {k: v for k, v in vars(args).items() if k in own}
    given = {k: v for k, v in args.items() if not isinstance(v, _Default)}
    from_config = _read_config(parser, Path(given['config'])) if given.get('config') else {}
    recipe = given.get('recipe', from_config.get('recipe'))
    from_recipe = dict(presets[recipe]) if recipe and presets else {}
    options = {k: v.value if isinstance(v, _Default) else v for k, v in args.items()}
    options.update(from_recipe)
    options.update(from_config)
    options.update(given)
    return argparse.Namespace(**options)


def write_config(options: argparse.Namespace) -> str:
    """The options of a run as a YAML config file that reproduces it (`--config` takes it back)."""
    values = {k: v for k, v in vars(options).items() if k != 'config'}
    return yaml.safe_dump(values, sort_keys=False)


def run_reporting_errors(command: str, fn: Callable[[], Any]) -> int:
    """Run a command's `fn`, with warnings (unreadable images, ...) logged to stderr; a CommandError becomes
    its message on stderr (from the first process only, under torchrun) and the error's exit status."""
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s: %(message)s')
    try:
        fn()
    except CommandError as e:
        if int(os.environ.get('RANK', '0')) == 0:
            print(f'cmtnet {command}: error: {e}', file=sys.stderr)
        return e.exit_status
    return 0
