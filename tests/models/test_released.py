"""Checkpoints in through timm's standard path: released format, our own files, resizing, bad files."""
import argparse
import os

import pytest
import safetensors.torch
import timm
import torch

from cmtnet.cli import main
from cmtnet.models.released import checkpoint_filter_fn
from released import make_state, released_keys


def _load(name, path, **kwargs):
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs).eval()


@pytest.fixture(scope='module')
def released_ti():
    return make_state(released_keys('cmt_ti'), seed=3)


@pytest.fixture(scope='module')
def released_file(released_ti, tmp_path_factory):
    path = tmp_path_factory.mktemp('ckpt') / 'cmt_tiny.pth'
    torch.save({'model': released_ti}, path)
    return path


def test_training_checkpoint_with_ema_optimizer_and_args(released_ti, tmp_path):
    """The authors' train.py stores optimizer, scheduler, epoch and an argparse.Namespace beside the weights."""
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in released_ti.items()}
    path = tmp_path / 'checkpoint.pth'
    torch.save({
        'model': released_ti, 'model_ema': ema,
        'optimizer': {'state': {}, 'param_groups': [{'lr': 1e-3, 'params': [0, 1]}]},
        'lr_scheduler': {'last_epoch': 10}, 'epoch': 10, 'args': argparse.Namespace(model='cmt_ti', lr=8e-4),
    }, path)
    model = _load('cmt_ti', path)
    # timm prefers the EMA weights when a checkpoint has them
    torch.testing.assert_close(model.stem.conv1.weight, ema['stem_conv1.weight'])
    torch.testing.assert_close(model.stages[2].blocks[9].mlp.norm3.running_var, ema['blocks_c.9.mlp.conv2.1.running_var'])


def test_bare_released_state_dict(released_ti, tmp_path):
    path = tmp_path / 'bare.pth'
    torch.save(released_ti, path)
    model = _load('cmt_ti', path)
    torch.testing.assert_close(model.stages[0].rel_pos_bias, released_ti['relative_pos_a'])
    torch.testing.assert_close(model.head.fc.weight, released_ti['head.weight'])
    torch.testing.assert_close(model.final_conv.bn.running_mean, released_ti['_bn.running_mean'])


@pytest.mark.parametrize('suffix', ['.safetensors', '.pth'])
def test_own_checkpoint_round_trip(released_file, tmp_path, suffix):
    model = _load('cmt_ti', released_file)
    path = tmp_path / f'own{suffix}'
    if suffix == '.safetensors':
        safetensors.torch.save_file(model.state_dict(), str(path))
    else:
        torch.save({'state_dict': model.state_dict()}, path)
    again = _load('cmt_ti', path)
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_fine_tune_resolution_and_classes(released_file):
    """A 160 checkpoint into a 224, 10-class model: biases resized, head reset, everything else loaded."""
    model = _load('cmt_ti', released_file, img_size=224, num_classes=10)
    base = _load('cmt_ti', released_file)
    assert model.stages[0].rel_pos_bias.shape == (1, 56 * 56, 7 * 7)
    assert model.stages[3].rel_pos_bias.shape == (8, 49, 49)
    assert model.get_classifier().out_features == 10
    torch.testing.assert_close(model.stages[2].blocks[3].attn.q.weight, base.stages[2].blocks[3].attn.q.weight)
    base.set_input_size(224)  # the same resize, done on a built model
    torch.testing.assert_close(model.stages[1].rel_pos_bias, base.stages[1].rel_pos_bias)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 10)


def test_in_chans_adapts_first_conv(released_ti, released_file):
    model = _load('cmt_ti', released_file, in_chans=1, num_classes=0)
    assert model.stem.conv1.weight.shape == (16, 1, 3, 3)
    torch.testing.assert_close(model.stem.conv1.weight, released_ti['stem_conv1.weight'].sum(1, keepdim=True))
    with torch.no_grad():
        assert model(torch.randn(1, 1, 160, 160)).shape == (1, 1280)


def test_checkpoint_of_another_variant_is_refused(tmp_path):
    path = tmp_path / 'cmt_small.pth'
    torch.save({'model': make_state(released_keys('cmt_s'), seed=0)}, path)
    with pytest.raises(ValueError, match=r'checkpoint holds cmt_s .* but the model is cmt_ti'):
        _load('cmt_ti', path)


def test_incomplete_or_foreign_state_dict_is_refused(released_ti, tmp_path):
    partial = dict(released_ti)
    del partial['blocks_c.4.attn.k.weight']
    path = tmp_path / 'partial.pth'
    torch.save(partial, path)
    # even with another num_classes (timm then loads non-strictly) nothing is silently left random
    with pytest.raises(ValueError, match=r'1 missing entries .*stages\.2\.blocks\.4\.attn\.k\.weight'):
        _load('cmt_ti', path, num_classes=10)
    extra = dict(released_ti, **{'something.else': torch.zeros(3)})
    torch.save(extra, path)
    with pytest.raises(ValueError, match=r'unknown entries .*something\.else'):
        _load('cmt_ti', path)
    wrong = dict(released_ti, **{'blocks_a.0.attn.q.weight': torch.zeros(46, 45)})
    torch.save(wrong, path)
    with pytest.raises(ValueError, match=r'shape mismatches .*stages\.0\.blocks\.0\.attn\.q\.weight'):
        _load('cmt_ti', path)


def test_non_tensor_entries_are_refused(released_ti):
    model = timm.create_model('cmt_ti')
    with pytest.raises(ValueError, match='not tensors'):
        checkpoint_filter_fn(dict(released_ti, note='hello'), model)


@pytest.mark.parametrize('suffix, match', [
    ('.pth', 'corrupted'),
    ('.safetensors', 'incomplete metadata'),
])
def test_truncated_file_raises(released_file, tmp_path, suffix, match):
    model = _load('cmt_ti', released_file)
    path = tmp_path / f'cut{suffix}'
    if suffix == '.safetensors':
        safetensors.torch.save_file(model.state_dict(), str(path))
    else:
        torch.save(model.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(Exception, match=match):
        _load('cmt_ti', path)


_NO_CHECKPOINT = 'it is not a checkpoint (neither a torch.save file nor a .safetensors file)'


@pytest.mark.parametrize('name, content, problem', [
    ('noise.pth', os.urandom(4096).replace(b'\x80', b'\x00'), _NO_CHECKPOINT),
    ('notes.safetensors', b'these are notes, not weights', _NO_CHECKPOINT),
    ('empty.pth', b'', 'the file is empty'),
])
def test_a_file_that_is_no_checkpoint_says_so(tmp_path, capsys, name, content, problem):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError) as error:
        _load('cmt_ti', path)
    assert str(error.value) == f'cannot load {path}: {problem}'
    # the commands say the same
    assert main(['eval', '--checkpoint', str(path)]) == 2
    assert capsys.readouterr().err.strip() == f'cmtnet eval: error: cannot load {path}: {problem}'


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_pickled_objects_are_never_executed(released_ti, tmp_path):
    marker = str(tmp_path / 'executed')
    path = tmp_path / 'evil.pth'
    torch.save({'model': released_ti, 'extra': _Payload(marker)}, path)
    with pytest.raises(RuntimeError, match='weights_only=True blocked .*mkdir'):
        _load('cmt_ti', path)
    assert not os.path.exists(marker)
