"""`cmtnet scaling`: compound-scaled models beside the released variants, as a table and as JSON."""
import contextlib
import io
import json

import pytest
from PIL import Image

from cmtnet.analysis.scaling import plot_scaling
from cmtnet.models.variants import PUBLISHED
from cmtnet.cli import main


@pytest.fixture(scope='module')
def study() -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # made once: counting MACs of four models takes a while
        assert main(['scaling', '--phi', '-2', '--phi', '-1', '--json']) == 0
    return json.loads(out.getvalue())


def test_json_lists_generated_and_released_models(study):
    assert [m['phi'] for m in study['generated']] == [-2, -1]
    assert [m['name'] for m in study['released']] == ['cmt_ti', 'cmt_xs']
    assert [m['img_size_px'] for m in study['generated']] == [160, 192]
    assert study['constraint_alpha_beta15_gamma2'] == pytest.approx(1.2 * 1.3 ** 1.5 * 1.15 ** 2)
    assert study['target_macs_ratio_per_step'] == 2.5
    for m in study['generated'] + study['released']:
        assert isinstance(m['macs'], int) and isinstance(m['params'], int)


def test_released_rows_are_the_released_models(study):
    for m in study['released']:
        assert m['params'] == PUBLISHED[m['name']].released_params
        assert m['macs'] / 1e9 == pytest.approx(PUBLISHED[m['name']].released_gmacs, rel=0.005)


def test_ratio_per_step_is_the_measured_macs_ratio(study):
    (step,) = study['steps']
    gen, rel = study['generated'], study['released']
    assert (step['from_phi'], step['to_phi']) == (-2, -1)
    assert step['generated_macs_ratio_per_step'] == pytest.approx(gen[1]['macs'] / gen[0]['macs'])
    assert step['released_macs_ratio_per_step'] == pytest.approx(rel[1]['macs'] / rel[0]['macs'])
    assert 1.5 < step['generated_macs_ratio_per_step'] < 4  # the right order for a target of 2.5


def test_table_names_the_counter(capsys):
    assert main(['scaling', '--phi', '-2']) == 0
    text = capsys.readouterr().out
    assert 'cmt_scaled(phi=-2)' in text and 'cmt_ti' in text and 'fvcore' in text


def test_coefficients_off_the_constraint_fail_with_a_message(capsys):
    assert main(['scaling', '--phi', '0', '--alpha', '3']) == 2
    assert 'alpha * beta^1.5 * gamma^2' in capsys.readouterr().err


def test_plot_is_written(study, tmp_path):
    path = tmp_path / 'scaling.png'
    plot_scaling(study, str(path))
    with Image.open(path) as image:
        assert image.format == 'PNG' and image.width > 300
