"""A command's options as a typed object, filled from built-in default < recipe preset < YAML config < command line.

Library code takes a dataclass of options (`RunOptions` here for any training run, a task's subclass of it for
its own fields, one dataclass per command), never an argparse namespace. Each field says how the command line
spells it in its metadata (`option(...)`: help, metavar, choices, flags), so the dataclass is the one place a
default is written: `add_options` declares the fields on a parser and writes each default into its help, and
`options_from` builds the dataclass from what was typed. A subclass that only changes a default writes it
plainly (`epochs: int = 12`); the flag and help come from the base class's field. A config file holds the same
options, spelled `lr_base: 5.0e-4` or `lr-base: 5.0e-4`, checked by a parser made from the same fields, so
both accept the same values and reject the same mistakes. `write_config` writes the options back as a config
file that reproduces the run.

This is a small layer on argparse's public API, not jsonargparse or tyro, because both change the flags
(`--lr_base`, `--compile true`, lists as `[a,b]`) or the help and error messages the commands have; every
argument's default is `argparse.SUPPRESS`, so that the namespace holds only what was typed.
"""
import argparse
import copy
import dataclasses
import functools
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar

import yaml

from ..errors import InputError, did_you_mean_path

__all__ = ['SCHEDULES', 'HelpFormatter', 'RunOptions', 'add_command', 'add_options', 'amp_option', 'command_parser',
           'config_option', 'device_option', 'option', 'option_help', 'options_from', 'parse', 'precision_option',
           'write_config']

Options = TypeVar('Options')

_KEY = 'cmtnet.option'  # the field metadata entry that makes a field a command-line option

# the schedules offered (timm names); cosine is the released recipe's, multistep the detection 1x schedule's,
# poly the segmentation 80k schedule's
SCHEDULES = ('cosine', 'multistep', 'step', 'poly', 'constant')


def option(
        default: Any = dataclasses.MISSING,
        *,
        help: str,
        default_factory: Any = dataclasses.MISSING,
        unset: Optional[str] = None,
        flags: Sequence[str] = (),
        metavar: Any = None,
        choices: Any = None,
        nargs: Any = None,
        type: Optional[Callable[[str], Any]] = None,
        repeat: bool = False,
        positional: bool = False,
        group: Optional[str] = None,
        required: bool = False,
) -> Any:
    """A dataclass field that is also a command-line option.

    The flag is the field's name with dashes (`lr_base` -> `--lr-base`) unless `flags` spell it; a boolean is a
    `--x / --no-x` switch, or, with `flags`, one flag that sets the other value (`--no-fuse`). The value's type
    and whether it takes several values come from the annotation (`Optional[int]`, `List[float]`); `repeat`
    makes a list a repeatable flag, `positional` an argument without a flag. `unset` says what an unset (None
    or empty) default means, for `--help`; `group` names the help section the option is listed in.

    `required` marks an option, None (or empty) by default, that the command cannot run without but that the
    `--config` file may give instead of the command line: the usage line shows it as required (a positional list
    as at least one value) and its help says so, while argparse lets it be left out (the config file is read
    after parsing) and the command refuses a missing value with its own message. A field without a default is
    required on the command line itself.
    """
    spec = dict(help=help, unset=unset, flags=tuple(flags), metavar=metavar, choices=choices, nargs=nargs,
                type=type, repeat=repeat, positional=positional, group=group, required=required)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_KEY: spec})


def device_option(**kwargs: Any) -> Any:
    """`--device`, as every command that runs a model has it."""
    return option(None, help='torch device', unset='cuda if available, else cpu', **kwargs)


def amp_option(help: str = 'mixed precision: auto is bf16 on CUDA and off on CPU', **kwargs: Any) -> Any:
    """`--amp`, as every command that runs a model has it."""
    return option('auto', choices=['auto', 'none', 'bf16', 'fp16'], help=help, **kwargs)


def precision_option(**kwargs: Any) -> Any:
    """`--precision`, as every inference command has it: the weights' own precision (runtime.inference_model)."""
    return option('fp32', choices=['fp32', 'bf16'], help='inference precision: bf16 folds the model and runs '
                  'its weights in bfloat16 (an int8 model is a file written by cmtnet quantize)', **kwargs)


def config_option(**kwargs: Any) -> Any:
    """`--config`, as every command that is not a training run has it."""
    return option(None, metavar='YAML', help='YAML file of options (the command line wins)', **kwargs)


@dataclass
class RunOptions:
    """What the engine needs of any training run: schedule, optimisation, speed, and the run itself."""
    epochs: int = option(300, metavar='N', group='optimisation',
                         help='epochs of the schedule (warm-up included); --cooldown-epochs follow')
    batch_size: int = option(128, metavar='N', group='optimisation', help='images per process and step')
    accum_steps: int = option(1, metavar='N', group='optimisation', help='batches accumulated per update')
    lr: Optional[float] = option(None, metavar='LR', group='optimisation', help='learning rate',
                                 unset='scaled from --lr-base')
    lr_base: float = option(5e-4, metavar='LR', group='optimisation',
                            help='learning rate at a global batch of --lr-base-size')
    lr_base_size: int = option(512, metavar='N', group='optimisation', help='global batch of --lr-base')
    opt: str = option('adamw', group='optimisation', help='optimizer, by timm name')
    weight_decay: float = option(0.05, metavar='WD', group='optimisation',
                                 help='weight decay (never on norms and biases)')
    clip_grad: Optional[float] = option(None, metavar='NORM', group='optimisation',
                                        help='clip gradients to this norm (or value)')
    clip_mode: str = option('norm', choices=['norm', 'value', 'agc'], group='optimisation',
                            help='gradient clipping mode')
    sched: str = option('cosine', choices=list(SCHEDULES), group='optimisation',
                        help='learning-rate schedule (timm)')
    decay_milestones: List[int] = option(
        default_factory=lambda: [8, 11], metavar='EPOCH', group='optimisation',
        help='epochs after which the multistep schedule multiplies the lr by --decay-rate')
    decay_rate: float = option(0.1, metavar='F', group='optimisation',
                               help='lr factor at each step of the step schedules; the power of poly')
    # automatic: min(5, epochs / 10), engine/optim.py
    warmup_epochs: Optional[float] = option(None, metavar='N', group='optimisation', help='epochs of linear warm-up',
                                            unset='automatic, 5 epochs but at most a tenth of --epochs')
    warmup_updates: int = option(0, metavar='N', group='optimisation',
                                 help='updates of linear warm-up, instead of --warmup-epochs')
    min_updates: int = option(
        0, metavar='N', group='optimisation',
        help='a floor on the schedule\'s length in updates (0: none): where --epochs of a small dataset give '
             'fewer, the epochs, milestones, warm-up and cool-down epochs stretch by the smallest whole factor '
             'that reaches it, so that a recipe carries over to a smaller set')
    warmup_lr: float = option(1e-6, metavar='LR', group='optimisation', help='learning rate at the start of warm-up')
    min_lr: float = option(1e-5, metavar='LR', group='optimisation', help='learning rate at the end of the cosine')
    cooldown_epochs: int = option(0, metavar='N', group='optimisation', help='epochs at --min-lr after the cosine')
    step_on_epochs: bool = option(False, group='optimisation',
                                  help='change the learning rate once per epoch (as the released code) instead '
                                       'of every update')
    model_ema: bool = option(False, group='optimisation', help='keep an exponential moving average of the weights')
    model_ema_decay: float = option(0.99996, metavar='D', group='optimisation', help='EMA decay per update')
    # speed
    device: Optional[str] = device_option(group='speed')
    amp: str = amp_option('mixed precision: auto is bf16 on CUDA and off on CPU; fp16 (loss-scaled) is CUDA only',
                          group='speed')
    channels_last: bool = option(False, group='speed', help='channels-last memory format')
    compile: bool = option(False, group='speed', help='torch.compile the model')
    sync_bn: bool = option(False, group='speed', help='synchronise BatchNorm statistics over processes (CUDA)')
    workers: int = option(4, metavar='N', group='data', help='data loading processes per training process')
    # the run
    output: str = option('runs/train', metavar='DIR', group='run', help='folder for checkpoints, metrics and plots')
    resume: bool = option(False, group='run', help='continue the run in --output from its last.pth')
    checkpoint_interval: int = option(0, metavar='N', group='run',
                                      help='also write last.pth every N updates (0: at epoch ends only)')
    seed: int = option(0, group='run', help='random seed')
    log_interval: int = option(10, metavar='N', group='run', help='batches between progress updates')
    progress: bool = option(True, group='run', help='progress bar per epoch')
    config: Optional[str] = option(None, metavar='YAML', group='run', help='YAML file of options')

    def replace(self: Options, **changes: Any) -> Options:
        """A copy with some options changed."""
        return dataclasses.replace(self, **changes)


# --- the mechanism --------------------------------------------------------------------------------

def _spec(options: Type, name: str) -> Optional[Dict[str, Any]]:
    """The option metadata of field `name`: its own, or that of the nearest base class that declares it."""
    for klass in options.__mro__:
        if dataclasses.is_dataclass(klass):
            found = next((f for f in dataclasses.fields(klass) if f.name == name), None)
            if found is not None and _KEY in found.metadata:
                return found.metadata[_KEY]
    return None


def option_help(options: Type, name: str) -> str:
    """The help of option field `name` of the `options` dataclass, as its declaration writes it."""
    spec = _spec(options, name)
    if spec is None:
        raise KeyError(f'{options.__name__} has no option {name!r}')
    return spec['help']


def _fields(options: Type) -> List[Tuple[dataclasses.Field, Dict[str, Any]]]:
    """The fields of `options` that are command-line options, with their metadata, in field order."""
    specs = [(f, _spec(options, f.name)) for f in dataclasses.fields(options)]
    return [(f, spec) for f, spec in specs if spec is not None]


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _value_type(hint: Any) -> Tuple[Any, bool]:
    """(type of one value, whether the option holds a list) of an annotation: Optional[List[int]] -> (int, True)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union:
        return _value_type(args[0])
    if typing.get_origin(hint) in (list, List, tuple, Tuple, Sequence):
        return args[0], True
    return hint, False


def _shown(value: Any) -> str:
    """A default as one would type it: lists space-separated."""
    return ' '.join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _help(spec: Dict[str, Any], default: Any) -> str:
    """The help of an option, with its default, or with `(required)` where the usage line shows it required."""
    text = spec['help']
    if spec['required']:
        text = f'{text} (required, here or in the --config file)'
    elif default is dataclasses.MISSING:
        text = text if spec['positional'] else f'{text} (required)'
    elif default is None or (isinstance(default, (list, tuple)) and not default):
        text = f'{text} (default: {spec["unset"]})' if spec['unset'] is not None else text
    elif default is not False and not (spec['flags'] and isinstance(default, bool)):
        # (a switch that is off, and a flag whose meaning is its name, show no default)
        text = f'{text} (default: {_shown(default)})'
    return text.replace('%', '%%')  # argparse formats help strings with %


def _argument(f: dataclasses.Field, spec: Dict[str, Any], hint: Any, config: bool) -> Tuple[List[str], Dict]:
    """The names and keywords of `add_argument` for field `f`; `config`: for the parser of config files, where
    every option is spelled `--name` and takes its values after it."""
    default = _default(f)
    kind, many = _value_type(hint)
    kwargs: Dict[str, Any] = dict(default=argparse.SUPPRESS, help=_help(spec, default))
    flag = '--' + f.name.replace('_', '-')
    if kind is bool:
        if spec['flags'] and not config:
            return list(spec['flags']), dict(kwargs, dest=f.name, action='store_const', const=not default)
        return [flag], dict(kwargs, dest=f.name, action=argparse.BooleanOptionalAction)
    kwargs.update(type=spec['type'] or kind)
    kwargs.update({k: spec[k] for k in ('metavar', 'choices') if spec[k] is not None})
    if many:
        if spec['repeat'] and not config:
            kwargs['action'] = 'append'
        else:
            kwargs['nargs'] = spec['nargs'] or ('*' if spec['positional'] else '+')
    if config:
        return [flag], dict(kwargs, dest=f.name)
    if spec['positional']:
        return [f.name], kwargs if many or default is dataclasses.MISSING else dict(kwargs, nargs='?')
    if default is dataclasses.MISSING:
        kwargs['required'] = True
    return list(spec['flags']) or [flag], dict(kwargs, dest=f.name)


# the attribute that marks an argparse action of an `option(required=True)` field, for `HelpFormatter`
_SHOWN_REQUIRED = 'cmtnet_shown_required'


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help, with the options of `option(required=True)` fields shown as required in the usage line
    (argparse shows only what it enforces itself)."""

    def add_usage(self, usage: Optional[str], actions: Any, groups: Any, prefix: Optional[str] = None) -> None:
        shown = []
        for action in actions:
            if getattr(action, _SHOWN_REQUIRED, False):
                action = copy.copy(action)
                action.required = True
                if action.nargs == '*':  # a positional list: at least one value
                    action.nargs = '+'
            shown.append(action)
        super().add_usage(usage, shown, groups, prefix)


def add_options(parser: argparse.ArgumentParser, options: Type, groups: Optional[Mapping[str, str]] = None,
                helps: Optional[Mapping[str, str]] = None) -> None:
    """Declare the option fields of the `options` dataclass on `parser`, each default shown in its help.

    `helps` replaces the help of the fields it names: the words of the command that adds a shared field (one
    task's data in the help of every dense task's `--data`).

    `groups` maps the fields' group names to the titles of the help sections, in the order they are listed;
    a field without a group is listed under the parser's own options. Within a section the fields are listed
    in their order, but those the class names in `listed_last` (a base class's, listed after a subclass's
    own), which come last, in that order."""
    groups, helps = groups or {}, helps or {}
    hints = typing.get_type_hints(options)
    sections = {name: parser.add_argument_group(title) for name, title in groups.items()}
    order = list(groups)  # the usage line lists the options section by section, as the help does
    last = list(getattr(options, 'listed_last', ()))

    def place(field_spec: Tuple[dataclasses.Field, Dict[str, Any]]) -> Tuple[int, int]:
        f, spec = field_spec
        group = spec['group']
        section = order.index(group) if group in order else len(order) if group else -1
        return section, last.index(f.name) + 1 if f.name in last else 0

    for f, spec in sorted(_fields(options), key=place):
        spec = dict(spec, help=helps[f.name]) if f.name in helps else spec
        names, kwargs = _argument(f, spec, hints[f.name], config=False)
        name = spec['group']
        if name is not None and name not in sections:
            sections[name] = parser.add_argument_group(name)
        action = (sections[name] if name is not None else parser).add_argument(*names, **kwargs)
        setattr(action, _SHOWN_REQUIRED, spec['required'])


def add_command(
        subparsers: Any,
        name: str,
        options: Type[Options],
        run: Callable[[Options], Any],
        presets: Optional[Mapping[str, Mapping[str, Any]]] = None,
        groups: Optional[Mapping[str, str]] = None,
        helps: Optional[Mapping[str, str]] = None,
        **parser_kwargs: Any,
) -> argparse.ArgumentParser:
    """Add subcommand `name`, whose options are the fields of `options` (`groups` and `helps` as `add_options`
    takes them) and which runs `run(options)`."""
    parser = subparsers.add_parser(name, **{'formatter_class': HelpFormatter, **parser_kwargs})
    add_options(parser, options, groups, helps)
    parser.set_defaults(func=lambda args: run(options_from(args, options, presets)))
    return parser


def command_parser(name: str, options: Type[Options], run: Callable[[Options], Any],
                   **parser_kwargs: Any) -> Callable[[argparse._SubParsersAction], argparse.ArgumentParser]:
    """The `add_parser(subparsers)` of a module whose capability is the one command `name` (what cli.py calls):
    `add_command` with these arguments."""
    return functools.partial(add_command, name=name, options=options, run=run, **parser_kwargs)


def parse(
        options: Type[Options],
        argv: Sequence[str],
        presets: Optional[Mapping[str, Mapping[str, Any]]] = None,
        prog: Optional[str] = None,
) -> Options:
    """The `options` of a command line `argv` (with the recipe and config file applied), as a command gets them."""
    parser = argparse.ArgumentParser(prog=prog)
    add_options(parser, options)
    return options_from(parser.parse_args(list(argv)), options, presets)


def options_from(
        args: argparse.Namespace,
        options: Type[Options],
        presets: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> Options:
    """The `options` dataclass of a parsed command line: built-in defaults, overridden by the recipe preset
    (`recipe`, from the command line or the config file), then by the config file (`config`), then by the
    command line (which holds only what was typed: every default is SUPPRESS)."""
    names = {f.name for f, _ in _fields(options)}
    given = {k: v for k, v in vars(args).items() if k in names}
    from_config = _read_config(options, Path(given['config'])) if given.get('config') else {}
    recipe = given.get('recipe', from_config.get('recipe'))
    from_recipe = dict(presets[recipe]) if recipe and presets else {}
    return options(**{**from_recipe, **from_config, **given})


def _config_tokens(config: Mapping[str, Any]) -> List[str]:
    """A config mapping as command-line tokens: `lr: 0.1` -> `--lr 0.1`, `compile: false` -> `--no-compile`."""
    tokens = []
    for key, value in config.items():
        option = '--' + str(key).replace('_', '-')
        if value is None:
            continue  # an explicit null keeps the default
        if isinstance(value, bool):
            tokens.append(option if value else '--no-' + option[2:])
        elif isinstance(value, (list, tuple)):
            tokens += [option, *map(str, value)]
        else:
            tokens += [option, str(value)]
    return tokens


def _read_config(options: Type, path: Path) -> Dict[str, Any]:
    """The options a YAML config file sets, checked and converted as the command line's are."""
    if not path.is_file():
        raise InputError(f'config file {path} does not exist{did_you_mean_path(path)}')
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise InputError(f'config file {path} is not valid YAML: {e}') from e
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise InputError(f'config file {path} must hold a mapping of option: value, got {type(config).__name__}')
    names = [f.name for f, _ in _fields(options)]
    for key in config:
        if key in ('config', 'func'):
            raise InputError(f'{path}: {key!r} cannot be set in a config file')
        if str(key).replace('-', '_') not in names:
            valid = ', '.join(sorted(n for n in names if n != 'config'))
            raise InputError(f'config file {path}: unknown option {"--" + str(key).replace("_", "-")!r}; '
                             f'valid options: {valid}')
    parser = argparse.ArgumentParser(prog=str(path), add_help=False, exit_on_error=False)
    hints = typing.get_type_hints(options)
    for f, spec in _fields(options):
        names_, kwargs = _argument(f, spec, hints[f.name], config=True)
        parser.add_argument(*names_, **kwargs)
    try:
        parsed, unknown = parser.parse_known_args(_config_tokens(config))
    except argparse.ArgumentError as e:
        raise InputError(f'config file {path}: {e}') from e
    if unknown:
        raise InputError(f'config file {path}: cannot read {unknown[0]!r}')
    return vars(parsed)


def write_config(options: Any) -> str:
    """The options of a run as a YAML config file that reproduces it (`--config` takes it back)."""
    values = {k: v for k, v in dataclasses.asdict(options).items() if k != 'config'}
    return yaml.safe_dump(values, sort_keys=False)
