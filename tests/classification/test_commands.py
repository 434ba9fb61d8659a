"""The command line: help texts, config files, recipe presets and their precedence, input errors."""
import pytest
import yaml

from cmtnet.classification.commands import parse_options
from cmtnet.classification.recipes import RECIPES, RELEASED_PROCESSES
from cmtnet.cli import main
from cmtnet.errors import InputError


@pytest.mark.parametrize('command, expected', [
    ('train', ['--recipe', '--pretrained', '--resume', '--channels-last', '--compile', 'torchrun', '(default: 0.05)']),
    ('eval', ['--checkpoint', '--data', 'confusion matrix']),
    ('predict', ['--top-k', 'IMAGE_OR_FOLDER']),
])
def test_help_reads_well(command, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, '--help'])
    assert exit_info.value.code == 0
    text = ' '.join(capsys.readouterr().out.split())  # unwrapped
    for word in expected:
        assert word in text
    assert '_Default' not in text and 'None)' not in text


def test_recipe_presets_match_the_released_table():
    table = {  # epochs, global batch, base lr, wd, drop path, EMA decay (0: off), warm-up, min lr
        'cmt_ti': (800, 2048, 8e-4, 0.05, 0.1, 0, 20, 1e-5),
        'cmt_xs': (400, 2048, 7e-4, 0.04, 0.08, 0.9998, 20, 2e-5),
        'cmt_s': (300, 1024, 5e-4, 0.05, 0.1, 0.99996, 20, 1e-5),
        'cmt_b': (300, 512, 5e-4, 0.05, 0.25, 0.99996, 20, 2e-5),
    }
    for name, (epochs, batch, lr, wd, dp, ema, warmup, min_lr) in table.items():
        o = parse_options(['--recipe', name])
        assert (o.model, o.epochs, o.batch_size * RELEASED_PROCESSES, o.lr_base, o.weight_decay, o.drop_path) == \
            (name, epochs, batch, lr, wd, dp)
        assert o.model_ema == (ema > 0) and (not ema or o.model_ema_decay == ema)
        assert (o.warmup_epochs, o.min_lr, o.cooldown_epochs, o.lr_base_size) == (warmup, min_lr, 10, 512)
        assert (o.aa, o.reprob, o.mixup, o.cutmix, o.smoothing, o.aug_repeats, o.interpolation, o.crop_pct) == \
            ('rand-m9-mstd0.5-inc1', 0.25, 0.8, 1.0, 0.1, 3, 'bicubic', 0.875)
    # every preset key is an option of `cmtnet train`
    assert set().union(*RECIPES.values()) <= set(vars(parse_options([])))


def test_precedence_default_recipe_config_command_line(tmp_path):
    config = tmp_path / 'run.yaml'
    config.write_text(yaml.safe_dump({'recipe': 'cmt_s', 'epochs': 5, 'lr-base': 1e-3, 'channels_last': True,
                                      'scale': [0.5, 1.0], 'model_ema': False}))
    o = parse_options(['--config', str(config), '--epochs', '7'])
    assert o.epochs == 7  # command line over config
    assert o.lr_base == 1e-3 and o.scale == [0.5, 1.0] and o.channels_last  # config over recipe and default
    assert o.model_ema is False  # config over recipe
    assert o.batch_size == 128 and o.weight_decay == 0.05 and o.model == 'cmt_s'  # recipe over default
    assert o.workers == 4  # default
    # the command line's recipe wins over the config file's
    assert parse_options(['--config', str(config), '--recipe', 'cmt_b']).drop_path == 0.25


@pytest.mark.parametrize('content, match', [
    ({'learning_rate': 0.1}, "unknown option '--learning-rate'"),
    ({'epochs': 'many'}, "argument --epochs: invalid int value: 'many'"),
    ({'model': 'resnet50'}, 'invalid choice'),
    ('- a list', 'must hold a mapping'),
])
def test_bad_config_names_the_file_and_the_problem(tmp_path, content, match):
    config = tmp_path / 'bad.yaml'
    config.write_text(yaml.safe_dump(content))
    with pytest.raises(InputError, match=match) as error:
        parse_options(['--config', str(config)])
    assert str(config) in str(error.value)


def test_errors_are_one_line_messages(tmp_path, capsys):
    assert main(['train', '--data', str(tmp_path / 'nowhere'), '--output', str(tmp_path / 'run')]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f'cmtnet train: error: data folder {tmp_path / "nowhere"} does not exist'
    assert main(['train', '--batch-size', '3', '--output', str(tmp_path / 'run')]) == 2
    assert '--batch-size must be even' in capsys.readouterr().err
    assert main(['train', '--resume', '--output', str(tmp_path / 'run')]) == 2
    assert 'nothing to resume' in capsys.readouterr().err
    assert main(['eval', '--checkpoint', str(tmp_path / 'missing.safetensors')]) == 2
    assert 'does not exist' in capsys.readouterr().err
    assert main(['predict', '--checkpoint', str(tmp_path / 'missing.pth')]) == 2
    assert 'at least one image' in capsys.readouterr().err


def test_commands_leave_out_the_libraries_notes_on_their_internals_only(caplog, recwarn):
    import logging
    import warnings
    from cmtnet.cli import run_reporting_errors

    def command():
        logging.getLogger('torch.utils.cpp_extension').warning("No CUDA runtime is found, using CUDA_HOME='%s'", '/x')
        logging.getLogger('torch.utils.cpp_extension').warning('a compiler failed')
        logging.getLogger('torch.utils._pytree').warning('%s is an Enum subclass and is now natively supported by '
                                                        'torch.compile', 'KernelPreference')
        warnings.warn_explicit('To copy construct from a tensor, ...', UserWarning, 'mkldnn_lowerings.py', 827,
                               module='torch._inductor.mkldnn_lowerings')
        warnings.warn_explicit('To copy construct from a tensor, ...', UserWarning, 'ours.py', 1, module='cmtnet.x')
        logging.getLogger('cmtnet.engine.data').warning('skipped 2 unreadable images')
    with caplog.at_level(logging.WARNING):
        assert run_reporting_errors('quantize', command) == 0
    assert [r.getMessage() for r in caplog.records] == ['a compiler failed', 'skipped 2 unreadable images']
    assert [w.filename for w in recwarn] == ['ours.py']
