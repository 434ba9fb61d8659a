"""A run's options as a typed object, filled from built-in default < recipe preset < YAML config < command line.

Library code takes a dataclass of options (`RunOptions` here, a task's subclass of it for its own
fields), never an argparse namespace. The command line fills one in two steps: a subcommand declares its
options with plain argparse, taking each default from the dataclass (`add_option`), then calls
`track_defaults` on its parser, so that `resolve` can tell an option the user typed from one left at its
default. A config file holds the same options, spelled `lr_base: 5.0e-4` or `lr-base: 5.0e-4`; it is
checked by the very parser that checks the command line, so both accept the same values and reject the
same mistakes. `write_config` writes the options back as a config file that reproduces the run.
"""
import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Type, TypeVar

import yaml

from ..errors import InputError

__all__ = ['SCHEDULES', 'HelpFormatter', 'RunOptions', 'add_option', 'add_run_options', 'resolve', 'track_defaults', 'write_config']

Options = TypeVar('Options')

# the schedules offered (timm names); cosine is the released recipe's, multistep the detection 1x schedule's
SCHEDULES = ('cosine', 'multistep', 'step', 'constant')


@dataclass
class RunOptions:
    """What the engine needs of any training run: schedule, optimisation, speed, and the run itself."""
    # optimisation
    epochs: int = 300
    batch_size: int = 128
    accum_steps: int = 1
    lr: Optional[float] = None
    lr_base: float = 5e-4
    lr_base_size: int = 512
    opt: str = 'adamw'
    weight_decay: float = 0.05
    clip_grad: Optional[float] = None
    clip_mode: str = 'norm'
    sched: str = 'cosine'
    decay_milestones: List[int] = dataclasses.field(default_factory=lambda: [8, 11])
    decay_rate: float = 0.1
    warmup_epochs: float = 20
    warmup_updates: int = 0
    min_updates: int = 0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    cooldown_epochs: int = 10
    step_on_epochs: bool = False
    model_ema: bool = False
    model_ema_decay: float = 0.99996
    # speed
    device: Optional[str] = None
    amp: str = 'auto'
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False
    workers: int = 4
    # the run
    output: str = 'runs/train'
    resume: bool = False
    checkpoint_interval: int = 0
    seed: int = 0
    log_interval: int = 10
    progress: bool = True
    config: Optional[str] = None

    def replace(self: Options, **changes: Any) -> Options:
        """A copy with some options changed."""
        return dataclasses.replace(self, **changes)


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


def add_option(group: Any, options: Type, flag: str, **kwargs: Any) -> argparse.Action:
    """`group.add_argument(flag, ...)` with the default of the matching field of the `options` dataclass
    (`--lr-base` -> `lr_base`); booleans become `--x / --no-x` switches."""
    dest = kwargs.pop('dest', flag.lstrip('-').replace('-', '_'))
    field = {f.name: f for f in dataclasses.fields(options)}[dest]
    default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    if isinstance(default, bool) and 'action' not in kwargs:
        kwargs['action'] = argparse.BooleanOptionalAction
    return group.add_argument(flag, dest=dest, default=default, **kwargs)


def add_run_options(parser: argparse.ArgumentParser, options: Type[RunOptions]) -> None:
    """Declare the engine's options (optimisation, speed, the run) on a training command's parser.

    The task declares its own (data, model, augmentation), `--workers` among them."""
    def opt(group: Any, flag: str, **kwargs: Any) -> None:
        add_option(group, options, flag, **kwargs)

    g = parser.add_argument_group('optimisation')
    opt(g, '--epochs', type=int, metavar='N', help='epochs of the schedule (warm-up included); --cooldown-epochs follow')
    opt(g, '--batch-size', type=int, metavar='N', help='images per process and step')
    opt(g, '--accum-steps', type=int, metavar='N', help='batches accumulated per update')
    opt(g, '--lr', type=float, metavar='LR', help='learning rate (default: scaled from --lr-base)')
    opt(g, '--lr-base', type=float, metavar='LR', help='learning rate at a global batch of --lr-base-size')
    opt(g, '--lr-base-size', type=int, metavar='N', help='global batch of --lr-base')
    opt(g, '--opt', help='optimizer, by timm name')
    opt(g, '--weight-decay', type=float, metavar='WD', help='weight decay (never on norms and biases)')
    opt(g, '--clip-grad', type=float, metavar='NORM', help='clip gradients to this norm (or value)')
    opt(g, '--clip-mode', choices=['norm', 'value', 'agc'], help='gradient clipping mode')
    opt(g, '--sched', choices=list(SCHEDULES), help='learning-rate schedule (timm)')
    opt(g, '--decay-milestones', type=int, nargs='+', metavar='EPOCH',
        help='epochs after which the multistep schedule multiplies the lr by --decay-rate')
    opt(g, '--decay-rate', type=float, metavar='F', help='lr factor at each step of the step schedules')
    opt(g, '--warmup-epochs', type=float, metavar='N', help='epochs of linear warm-up')
    opt(g, '--warmup-updates', type=int, metavar='N', help='updates of linear warm-up, instead of --warmup-epochs')
    opt(g, '--min-updates', type=int, metavar='N',
        help='a floor on the schedule\'s length in updates (0: none): where --epochs of a small dataset give '
             'fewer, the epochs, milestones, warm-up and cool-down epochs stretch by the smallest whole factor '
             'that reaches it, so that a recipe carries over to a smaller set')
    opt(g, '--warmup-lr', type=float, metavar='LR', help='learning rate at the start of warm-up')
    opt(g, '--min-lr', type=float, metavar='LR', help='learning rate at the end of the cosine')
    opt(g, '--cooldown-epochs', type=int, metavar='N', help='epochs at --min-lr after the cosine')
    opt(g, '--step-on-epochs', help='change the learning rate once per epoch (as the released code) instead of '
                                    'every update')
    opt(g, '--model-ema', help='keep an exponential moving average of the weights')
    opt(g, '--model-ema-decay', type=float, metavar='D', help='EMA decay per update')
    g = parser.add_argument_group('speed')
    opt(g, '--device', help='torch device (default: cuda if available, else cpu)')
    opt(g, '--amp', choices=['auto', 'none', 'bf16', 'fp16'],
        help='mixed precision: auto is bf16 on CUDA and off on CPU; fp16 (loss-scaled) is CUDA only')
    opt(g, '--channels-last', help='channels-last memory format')
    opt(g, '--compile', help='torch.compile the model')
    opt(g, '--sync-bn', help='synchronise BatchNorm statistics over processes (CUDA)')
    g = parser.add_argument_group('run')
    opt(g, '--output', metavar='DIR', help='folder for checkpoints, metrics and plots')
    opt(g, '--resume', help='continue the run in --output from its last.pth')
    opt(g, '--checkpoint-interval', type=int, metavar='N', help='also write last.pth every N updates (0: at epoch ends only)')
    opt(g, '--seed', type=int, help='random seed')
    opt(g, '--log-interval', type=int, metavar='N', help='batches between progress updates')
    opt(g, '--progress', help='progress bar per epoch')
    opt(g, '--config', metavar='YAML', help='YAML file of options')


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
        options: Type[Options],
        presets: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> Options:
    """The `options` dataclass of a run: built-in defaults, overridden by the recipe preset (`recipe`, from
    the command line or the config file), then by the config file (`config`), then by the command line."""
    # the parser's own options only (not the top-level command name or the handler)
    own = {a.dest for a in parser._actions if a.dest != 'help'}
    args = {k: v for k, v in vars(args).items() if k in own}
    given = {k: v for k, v in args.items() if not isinstance(v, _Default)}
    from_config = _read_config(parser, Path(given['config'])) if given.get('config') else {}
    recipe = given.get('recipe', from_config.get('recipe'))
    from_recipe = dict(presets[recipe]) if recipe and presets else {}
    values = {k: v.value if isinstance(v, _Default) else v for k, v in args.items()}
    values.update(from_recipe)
    values.update(from_config)
    values.update(given)
    return options(**values)


def write_config(options: Any) -> str:
    """The options of a run as a YAML config file that reproduces it (`--config` takes it back)."""
    values = {k: v for k, v in dataclasses.asdict(options).items() if k != 'config'}
    return yaml.safe_dump(values, sort_keys=False)
