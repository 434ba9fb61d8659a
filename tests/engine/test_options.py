"""The options mechanism (engine/options.py): dataclass fields as flags, defaults written once, precedence."""
import argparse
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pytest
import yaml

from cmtnet.analysis.ablation import AblateCommandOptions
from cmtnet.analysis.complexity import ComplexityOptions
from cmtnet.analysis.info import InfoOptions
from cmtnet.analysis.scaling import ScalingOptions
from cmtnet.analysis.speed import BenchCommandOptions
from cmtnet.classification.options import EvalOptions, PredictOptions, TrainOptions
from cmtnet.cli import main
from cmtnet.detection.options import DetectEvalOptions, DetectOptions, DetectPredictOptions
from cmtnet.engine.options import add_options, option, options_from, parse
from cmtnet.errors import InputError
from cmtnet.deploy.export import ExportOptions
from cmtnet.deploy.quantize import QuantizeOptions

COMMANDS = {
    ('train',): TrainOptions, ('eval',): EvalOptions, ('predict',): PredictOptions,
    ('detect', 'train'): DetectOptions, ('detect', 'eval'): DetectEvalOptions,
    ('detect', 'predict'): DetectPredictOptions, ('export',): ExportOptions, ('bench',): BenchCommandOptions,
    ('ablate',): AblateCommandOptions, ('info',): InfoOptions, ('complexity',): ComplexityOptions,
    ('scaling',): ScalingOptions, ('quantize',): QuantizeOptions,
}


@pytest.fixture(autouse=True)
def wide_help(monkeypatch):
    monkeypatch.setenv('COLUMNS', '400')  # help lines unwrapped, so that a hyphenated word stays whole


@dataclass
class _Toy:
    name: str = option(positional=True, help='a name')
    size: int = option(3, help='a size')
    rates: List[float] = option(default_factory=lambda: [0.5], help='rates')
    tags: List[str] = option(default_factory=lambda: ['a'], flags=('--tag',), repeat=True, help='a tag')
    fast: bool = option(False, help='go fast')
    check: bool = option(True, flags=('--no-check',), help='skip the check')
    where: Optional[str] = option(None, flags=('--where', '-w'), help='a place', unset='here')
    config: Optional[str] = option(None, help='YAML')
    recipe: Optional[str] = option(None, choices=['big'], help='preset')


@dataclass
class _BigToy(_Toy):
    size: int = 7  # only the default changes: flag and help stay the base class's


def _parse(options, argv, presets=None):
    parser = argparse.ArgumentParser(prog='toy')
    add_options(parser, options)
    return options_from(parser.parse_args(argv), options, presets)


def test_the_namespace_holds_only_what_was_typed():
    parser = argparse.ArgumentParser()
    add_options(parser, _Toy)
    assert vars(parser.parse_args(['x'])) == {'name': 'x'}
    assert vars(parser.parse_args(['x', '--size', '4', '--no-fast'])) == {'name': 'x', 'size': 4, 'fast': False}


def test_fields_become_the_flags_they_name():
    o = _parse(_Toy, ['x', '--rates', '1', '2', '--tag', 'b', '--tag', 'c', '--fast', '--no-check', '-w', 'there'])
    assert (o.name, o.rates, o.tags, o.fast, o.check, o.where) == ('x', [1.0, 2.0], ['b', 'c'], True, False, 'there')
    # a repeated flag replaces the default list instead of adding to it; untouched options keep their defaults
    assert _parse(_Toy, ['x']) == _Toy('x')
    with pytest.raises(SystemExit):
        _parse(_Toy, [])  # a field without a default is required


def test_help_shows_each_default_once(capsys):
    parser = argparse.ArgumentParser(prog='toy')
    add_options(parser, _BigToy)
    text = ' '.join(parser.format_help().split())
    assert 'a size (default: 7)' in text and 'rates (default: 0.5)' in text and 'a tag (default: a)' in text
    assert 'a place (default: here)' in text and 'skip the check' in text
    assert 'skip the check (default' not in text and 'go fast (default' not in text  # switches that are off


def test_precedence_default_recipe_config_command_line(tmp_path):
    config = tmp_path / 'toy.yaml'
    config.write_text(yaml.safe_dump({'recipe': 'big', 'rates': [0.1, 0.2], 'fast': True, 'name': 'from-config'}))
    presets = {'big': dict(size=100, rates=[9.0], where='far')}
    o = _parse(_Toy, ['x', '--config', str(config), '--no-fast'], presets)
    assert (o.size, o.where) == (100, 'far')  # recipe over default
    assert o.rates == [0.1, 0.2]  # config over recipe
    assert (o.name, o.fast) == ('x', False)  # command line over config
    assert o.tags == ['a'] and o.check  # default


@pytest.mark.parametrize('content, match', [
    ({'sizes': 2}, "unknown option '--sizes'; valid options: check, fast, name, rates, recipe, size, tags, where"),
    ({'size': 'big'}, "argument --size: invalid int value: 'big'"),
    ({'recipe': 'small'}, 'invalid choice'),
    ({'config': 'other.yaml'}, "'config' cannot be set in a config file"),
    ('- a list', 'must hold a mapping'),
])
def test_a_bad_config_names_the_file_and_the_option(tmp_path, content, match):
    config = tmp_path / 'bad.yaml'
    config.write_text(yaml.safe_dump(content))
    with pytest.raises(InputError, match=re.escape(match)) as error:
        _parse(_Toy, ['x', '--config', str(config)])
    assert str(config) in str(error.value)


def test_a_subclass_changing_a_default_keeps_the_flag_and_the_help(capsys):
    assert _parse(_BigToy, ['x']).size == 7
    assert parse(DetectOptions, []).epochs == 12
    with pytest.raises(SystemExit):
        main(['detect', 'train', '--help'])
    text = ' '.join(capsys.readouterr().out.split())
    assert '--epochs N epochs of the schedule (warm-up included); --cooldown-epochs follow (default: 12)' in text


@pytest.mark.parametrize('command', list(COMMANDS), ids=' '.join)
def test_every_command_shows_its_dataclass_defaults(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, '--help'])
    assert exit_info.value.code == 0
    text = ' '.join(capsys.readouterr().out.split())
    for f in dataclasses.fields(COMMANDS[command]):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if default in (None, False, [], dataclasses.MISSING) or isinstance(default, bool) and f.name in (
                'fuse', 'train'):
            continue
        shown = ' '.join(map(str, default)) if isinstance(default, list) else str(default)
        assert f'(default: {shown})' in text, (command, f.name)


@pytest.mark.parametrize('options', list(COMMANDS.values()), ids=lambda o: o.__name__)
def test_defaults_are_written_in_the_dataclass_only(options):
    # the help strings never spell a default: the mechanism adds it from the field
    for klass in options.__mro__:
        for f in dataclasses.fields(klass) if dataclasses.is_dataclass(klass) else ():
            spec = f.metadata.get('cmtnet.option')
            if spec is not None:
                assert 'default' not in spec['help'], (klass.__name__, f.name)


def test_no_argparse_internals_in_the_package():
    package = Path(__file__).resolve().parents[2] / 'src' / 'cmtnet'
    for path in package.rglob('*.py'):
        text = path.read_text()
        assert '._actions' not in text and '_Default' not in text, path


def _subcommands(parser, words=()):
    """(words, parser) of every `cmtnet` subcommand, nested ones (`detect eval`) included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for word, sub in action.choices.items():
                yield (*words, word), sub
                yield from _subcommands(sub, (*words, word))


def test_the_usage_line_and_the_help_agree_on_what_is_required():
    from cmtnet.cli import build_parser
    checked = 0
    for words, parser in _subcommands(build_parser()):
        text = parser.format_help()
        usage = text.split('\n\n')[0]
        while re.search(r'\[[^\[\]]*\]', usage):  # drop the optional parts, innermost first
            usage = re.sub(r'\[[^\[\]]*\]', '', usage)
        in_usage = set(re.findall(r'(?<![\w-])--[a-z0-9-]+', usage))
        in_help = {a.option_strings[0] for a in parser._actions if a.option_strings and '(required' in (a.help or '')}
        assert in_usage == in_help, words
        checked += bool(in_help)
        # a positional argument the usage line shows optional ([IMAGE ...]) says in its help what its absence means
        for action in parser._actions:
            if not action.option_strings and not isinstance(action, argparse._SubParsersAction):
                name, required = action.metavar or action.dest, '(required' in (action.help or '')
                assert bool(re.search(rf'(?<![\w-]){name}(?!\w)', usage)) == required, (words, name)
                assert required or '(default' in action.help, (words, name)
                checked += 1
    assert checked >= 13  # eval, predict, serve, export, quantize, detect and segment eval and predict; 4 positionals


def test_a_checkpoint_required_here_or_in_the_config_file(tmp_path, capsys):
    from cmtnet.cli import build_parser
    evaluate = next(sub for words, sub in _subcommands(build_parser()) if words == ('eval',))
    assert '--checkpoint PATH [' in ' '.join(evaluate.format_usage().split())
    assert main(['eval']) == 2
    assert '--checkpoint is required (on the command line or in the --config file)' in capsys.readouterr().err
