"""The CMT network: parity with the released code, any input size, timm model API, bad inputs."""
import pytest
import timm
import torch
import torch.nn as nn

import cmtnet
from cmtnet.models import resize_rel_pos_bias, set_model_fused_attn
from cmtnet.models.cmt import TokenBatchNorm
from released import load_fixture, make_input, make_state


@pytest.fixture(scope='module')
def fixture():
    return load_fixture()


@pytest.fixture(scope='module')
def released_file(fixture, tmp_path_factory):
    """The fixture's weights saved as the authors' train.py saves them ({'model': state_dict, ...})."""
    path = tmp_path_factory.mktemp('released') / 'cmt_tiny.pth'
    torch.save({'model': make_state(fixture['keys'], fixture['seed']), 'epoch': 799}, path)
    return str(path)


def _load(name, path, **kwargs):
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path), **kwargs).eval()


@pytest.mark.parametrize('fused', [True, False])
def test_parity_with_released_code(fixture, released_file, fused):
    model = _load(fixture['variant'], released_file)
    set_model_fused_attn(model, fused)
    x = make_input(fixture['input_shape'], fixture['input_seed'])
    expected = torch.tensor(fixture['logits'], dtype=torch.float64)
    with torch.no_grad():
        logits = model(x).double()
    rel_err = (logits - expected).abs().max() / expected.abs().max()
    assert rel_err <= 1e-4, f'max abs diff / max abs logit = {rel_err:.2e}'


def test_native_config():
    for name, size in (('cmt_ti', 160), ('cmt_xs', 192), ('cmt_s', 224), ('cmt_b', 256)):
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.input_size == (3, size, size) and cfg.pool_size == (size // 32, size // 32)
        assert cfg.crop_pct == 0.875 and cfg.interpolation == 'bicubic' and cfg.url.endswith('.pth')
        assert cfg.paper_ids == 'arXiv:2107.06263' and cfg.license
    assert timm.list_models('cmt_*', module='cmt') == ['cmt_b', 'cmt_s', 'cmt_ti', 'cmt_xs']


def _output_and_grads(model, x):
    """The output and every parameter's gradient of one forward and backward (dropout seeded alike)."""
    model.zero_grad()
    torch.manual_seed(1)
    out = model(x)
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_fused_and_explicit_attention_agree_with_gradients():
    torch.manual_seed(0)
    model = timm.create_model('cmt_ti', img_size=64, num_classes=5).train()
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for fused in (True, False):
        set_model_fused_attn(model, fused)
        grads.append(_output_and_grads(model, x))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-4, atol=1e-5)
    for name, g in grads[0][1].items():
        torch.testing.assert_close(g, grads[1][1][name], rtol=1e-3, atol=1e-5, msg=name)
    assert grads[0][1]['stages.0.rel_pos_bias'].abs().sum() > 0


def test_resize_rel_pos_bias_properties():
    # a bias that depends only on the key position keeps that profile on every query row
    key_profile = torch.randn(2, 1, 16)  # 4x4 key grid (8x8 queries, sr 2)
    bias = key_profile.expand(2, 64, 16)
    out = resize_rel_pos_bias(bias, (8, 8), (12, 16), 2)
    assert out.shape == (2, 12 * 16, 6 * 8)
    torch.testing.assert_close(out, out[:, :1].expand_as(out))
    # constants stay constant; the same grid is returned untouched
    const = torch.full((1, 64, 16), 0.5)
    torch.testing.assert_close(resize_rel_pos_bias(const, (8, 8), (4, 6), 2), torch.full((1, 24, 6), 0.5))
    assert resize_rel_pos_bias(bias, (8, 8), (8, 8), 2) is bias


def test_dynamic_size_matches_fixed_model(released_file):
    fixed = _load('cmt_ti', released_file)
    dynamic = _load('cmt_ti', released_file, dynamic_img_size=True)
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(dynamic(x), fixed(x), rtol=0, atol=0)
        # on the fly at another size == the bias resized once at load time for that size
        x = torch.randn(1, 3, 96, 224)
        fixed_other = _load('cmt_ti', released_file, img_size=(96, 224))
        torch.testing.assert_close(dynamic(x), fixed_other(x), rtol=1e-5, atol=1e-5)
        # and == set_input_size on a built model
        fixed.set_input_size((96, 224))
        torch.testing.assert_close(fixed(x), fixed_other(x), rtol=1e-5, atol=1e-5)


def test_dynamic_img_pad_pads_to_multiple_of_32():
    model = timm.create_model('cmt_ti', dynamic_img_size=True, dynamic_img_pad=True, num_classes=0).eval()
    x = torch.randn(1, 3, 70, 100)
    padded = torch.nn.functional.pad(x, (0, 28, 0, 26))
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(padded))
        assert model.forward_features(x).shape[-2:] == (3, 4)


@pytest.mark.parametrize('shape, kwargs, match', [
    ((1, 3, 128, 128), {}, r'input size 128x128 does not match the model img_size 160x160'),
    ((1, 3, 150, 160), {'dynamic_img_size': True}, r'multiples of 32, got 150x160'),
    ((1, 1, 160, 160), {}, r'expects 3 input channels, got 1'),
    ((3, 160, 160), {}, r'\(B, C, H, W\)'),
])
def test_bad_input_raises_value_error(shape, kwargs, match):
    model = timm.create_model('cmt_ti', **kwargs).eval()
    with pytest.raises(ValueError, match=match):
        model(torch.randn(shape))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match='multiple of 32'):
        timm.create_model('cmt_ti', img_size=100)
    with pytest.raises(TypeError):
        timm.create_model('cmt_ti', not_an_argument=1)


def test_features_only_strides_and_non_square_input():
    model = timm.create_model('cmt_ti', features_only=True, dynamic_img_size=True).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels() == [46, 92, 184, 368]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 128, 224))
    assert [tuple(f.shape[1:]) for f in feats] == [(46, 32, 56), (92, 16, 28), (184, 8, 14), (368, 4, 7)]
    model = timm.create_model('cmt_ti', features_only=True, out_indices=(1, 3))
    assert model.feature_info.reduction() == [8, 32]


def test_model_api():
    model = timm.create_model('cmt_ti', num_classes=7).eval()
    x = torch.randn(2, 3, 160, 160)
    assert model.num_features == model.head_hidden_size == 1280
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 1280, 5, 5)
        assert model.forward_head(feats, pre_logits=True).shape == (2, 1280)
        assert model(x).shape == (2, 7)
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, feats)
        assert [t.shape[1] for t in inter] == [46, 92, 184, 368]
        assert len(model.forward_intermediates(x, indices=2, intermediates_only=True)) == 2
    assert model.get_classifier().out_features == 7
    model.reset_classifier(3, 'max')
    assert model.get_classifier().out_features == 3 and model.global_pool == 'max'
    assert model.no_weight_decay() == {f'stages.{i}.rel_pos_bias' for i in range(4)}
    names = {n for n, _ in model.named_parameters()}
    assert model.no_weight_decay() <= names


def test_grad_checkpointing_same_output_and_grads():
    torch.manual_seed(0)
    model = timm.create_model('cmt_ti', img_size=64, num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    results = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        results.append(_output_and_grads(model, x))
    torch.testing.assert_close(results[0], results[1])
    assert results[0][1]['stages.0.rel_pos_bias'].abs().sum() > 0


def test_device_dtype_and_meta_construction():
    model = timm.create_model('cmt_ti', device='meta', dtype=torch.bfloat16)
    assert all(p.device.type == 'meta' and p.dtype == torch.bfloat16 for p in model.parameters())


def test_bfloat16_forward_is_close_to_float32(released_file):
    model = _load('cmt_ti', released_file)
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = model(x)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() / ref.abs().max() < 0.1


def test_package_exports():
    assert cmtnet.CMT is timm.create_model('cmt_ti').__class__


def test_data_config_follows_img_size():
    model = timm.create_model('cmt_s', img_size=(256, 384), in_chans=1)
    assert timm.data.resolve_data_config(model=model)['input_size'] == (1, 256, 384)
    assert model.pretrained_cfg['pool_size'] == (8, 12)
    assert timm.models.get_pretrained_cfg('cmt_s').input_size == (3, 224, 224)  # registry untouched


def test_drop_path_rates_rise_linearly_over_all_blocks():
    model = timm.create_model('cmt_xs', drop_path_rate=0.08, device='meta')
    rates = [blk.drop_path1.drop_prob if hasattr(blk.drop_path1, 'drop_prob') else 0.
             for stage in model.stages for blk in stage.blocks]
    assert len(rates) == 21
    expected = torch.linspace(0, 0.08, 21).tolist()
    assert rates == pytest.approx(expected, abs=1e-7)


def test_token_batchnorm_is_batchnorm1d_and_scripts():
    """The all-BatchNorm ablation's token norm: BatchNorm1d over the channels of (B, N, C) tokens, in training
    (statistics and running averages) and eval, and compiled by TorchScript as it is."""
    torch.manual_seed(0)
    ours, reference = TokenBatchNorm(8), nn.BatchNorm1d(8)
    reference.load_state_dict(ours.state_dict())
    scripted = torch.jit.script(TokenBatchNorm(8))
    for _ in range(3):
        x = torch.randn(4, 10, 8) * 2 + 1
        torch.testing.assert_close(ours(x), reference(x.transpose(1, 2)).transpose(1, 2))
        scripted(x)
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], value)
        torch.testing.assert_close(scripted.state_dict()[name], value)
    ours.eval(), reference.eval()
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(ours(x), reference(x.transpose(1, 2)).transpose(1, 2))
