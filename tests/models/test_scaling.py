"""Compound scaling: the rounding rules, the paper's constraint, and the `cmt_scaled` timm entry point."""
import pytest
import timm
import torch

import cmtnet  # noqa: F401  (registers the models)
from cmtnet.analysis.macs import count_params
from cmtnet.errors import InputError
from cmtnet.models import VARIANT_ARGS
from cmtnet.models.scaling import check_scaling_coefficients, cost_growth_per_step, scaled_args

HEADS = (1, 2, 4, 8)


def test_phi_zero_is_the_base():
    assert scaled_args(0) == VARIANT_ARGS['cmt_s']
    assert scaled_args(0, base='cmt_b') == VARIANT_ARGS['cmt_b']


def test_hand_computed_scaled_shapes():
    # phi = 1: depths 3.6, 3.6, 19.2, 3.6 -> 4, 4, 19, 4; width 64 * 1.3 = 83.2 -> 84; 224 * 1.15 = 257.6 -> 256
    up = scaled_args(1)
    assert up['depths'] == (4, 4, 19, 4)
    assert up['embed_dims'] == (84, 168, 336, 672)
    assert up['img_size'] == 256
    assert up['stem_chs'] == 42  # 32 * 1.3 = 41.6
    # phi = -1: 3 / 1.2 = 2.5 rounds half up to 3 (as the released XS has); 16 / 1.2 = 13.3 -> 13; 224 / 1.15 -> 192
    down = scaled_args(-1)
    assert down['depths'] == (3, 3, 13, 3)
    assert down['img_size'] == 192
    assert down['embed_dims'][0] == 50  # 64 / 1.3 = 49.2, to the nearest even width


@pytest.mark.parametrize('phi', [-3, -2, -1.5, -1, 0.5, 1, 2, 3])
def test_rounding_rules_hold_for_any_phi(phi):
    args = scaled_args(phi)
    assert args['img_size'] % 32 == 0 and args['img_size'] >= 32
    assert all(isinstance(d, int) and d >= 1 for d in args['depths'])
    assert args['stem_chs'] % 2 == 0
    widths = args['embed_dims']
    assert all(w == widths[0] * 2 ** i for i, w in enumerate(widths))
    assert all(w % 2 == 0 and w % h == 0 for w, h in zip(widths, HEADS))
    assert args['mlp_ratio'] == VARIANT_ARGS['cmt_s']['mlp_ratio']


def test_scaled_models_grow_with_phi():
    shapes = [scaled_args(p) for p in (-2, -1, 0, 1, 2)]
    for small, large in zip(shapes, shapes[1:]):
        assert large['img_size'] > small['img_size']
        assert large['embed_dims'][0] > small['embed_dims'][0]
        assert sum(large['depths']) > sum(small['depths'])


def test_the_papers_coefficients_meet_the_constraint():
    assert cost_growth_per_step(1.2, 1.3, 1.15) == pytest.approx(1.2 * 1.3 ** 1.5 * 1.15 ** 2)
    assert check_scaling_coefficients() == pytest.approx(2.352, abs=1e-3)


@pytest.mark.parametrize('coeffs, match', [
    (dict(alpha=2.0), 'expected 2.5'),
    (dict(beta=1.0, gamma=1.0), 'expected 2.5'),
    (dict(alpha=0.9), 'alpha must be at least 1'),
])
def test_coefficients_off_the_constraint_are_refused(coeffs, match):
    with pytest.raises(InputError, match=match):
        scaled_args(1, **coeffs)


def test_bad_phi_and_base_are_refused():
    with pytest.raises(InputError, match='phi'):
        scaled_args(float('nan'))
    with pytest.raises(InputError, match='cmt_q'):
        scaled_args(1, base='cmt_q')


def test_cmt_scaled_is_built_at_its_scaled_resolution():
    model = timm.create_model('cmt_scaled', phi=-2, num_classes=3).eval()
    assert model.pretrained_cfg['input_size'] == (3, 160, 160)
    assert timm.data.resolve_data_config(model=model)['input_size'] == (3, 160, 160)
    assert [len(s.blocks) for s in model.stages] == [2, 2, 11, 2]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 160, 160)).shape == (1, 3)


def test_cmt_scaled_phi_zero_is_cmt_s_and_img_size_overrides():
    assert count_params(timm.create_model('cmt_scaled')) == count_params(timm.create_model('cmt_s'))
    model = timm.create_model('cmt_scaled', phi=1, img_size=64)
    assert model.pretrained_cfg['input_size'] == (3, 64, 64)
    assert model.stages[0].downsample.conv.out_channels == 84
