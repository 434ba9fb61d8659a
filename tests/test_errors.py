"""Near misses get a suggestion: a mistyped path, model name or input size names the nearest valid one."""
import pytest

from cmtnet.analysis.speed import BenchOptions
from cmtnet.cli import main
from cmtnet.errors import InputError, did_you_mean, did_you_mean_path
from cmtnet.models.variants import check_img_size


def test_a_mistyped_path_gets_the_closest_entry_of_its_folder(tmp_path):
    (tmp_path / 'runs' / 'demo').mkdir(parents=True)
    (tmp_path / 'runs' / 'demo' / 'model.safetensors').touch()
    (tmp_path / 'runs' / 'demo' / 'best.safetensors').touch()
    wanted = tmp_path / 'runs' / 'demo' / 'model.safetensors'
    assert did_you_mean_path(tmp_path / 'runs' / 'demo' / 'model.safetensor') == f'; did you mean {wanted}?'
    assert did_you_mean_path(tmp_path / 'runs' / 'dmeo' / 'model.safetensor') == f'; did you mean {wanted}?'
    assert did_you_mean_path(tmp_path / 'runs' / 'demo' / 'config.yaml') == ''  # nothing close
    assert did_you_mean_path(wanted) == ''  # it exists: the error is about something else
    assert did_you_mean('cmt_t', ['cmt_ti', 'cmt_xs', 'cmt_s', 'cmt_b']) == '; did you mean cmt_ti?'


@pytest.mark.parametrize('command', [['eval'], ['predict', 'x.png'], ['export', '-o', 'x.onnx']])
def test_a_mistyped_checkpoint_is_one_line_with_a_suggestion(command, tmp_path, monkeypatch, capsys):
    (tmp_path / 'model.safetensors').touch()
    (tmp_path / 'x.png').touch()
    monkeypatch.chdir(tmp_path)
    assert main([*command, '--checkpoint', 'model.safetensor']) == 2
    assert 'checkpoint model.safetensor does not exist; did you mean model.safetensors?' in capsys.readouterr().err


def test_a_mistyped_image_gets_a_suggestion(tmp_path, capsys):
    (tmp_path / 'cat.png').touch()
    assert main(['predict', '--checkpoint', str(tmp_path / 'model.safetensors'), str(tmp_path / 'cat.pgn')]) == 2
    assert f'{tmp_path / "cat.pgn"} does not exist; did you mean {tmp_path / "cat.png"}?' in capsys.readouterr().err


@pytest.mark.parametrize('side, nearest', [(100, '96 or 128'), (200, '192 or 224'), (20, '32'), (0, '32')])
def test_an_input_size_off_the_grid_gets_the_nearest_valid_ones(side, nearest):
    with pytest.raises(InputError, match=rf'got {side} \(the nearest: {nearest}\)$'):
        check_img_size(side, '--img-size')


def test_train_with_img_size_100_suggests_96_or_128(capsys):
    assert main(['train', '--img-size', '100']) == 2
    assert '--img-size must be a positive multiple of 32, got 100 (the nearest: 96 or 128)' in capsys.readouterr().err


def test_a_mistyped_model_name_gets_a_suggestion():
    with pytest.raises(InputError, match=r"unknown model 'cmt_t'.*; did you mean cmt_ti\?"):
        BenchOptions(models=['cmt_t'])
    with pytest.raises(InputError, match=r"unknown path 'fussed'.*; did you mean fused\?"):
        BenchOptions(models=['cmt_ti'], paths=['fussed'])
