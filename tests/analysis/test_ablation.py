"""The ablation steps as models (models/ablation.py) and `cmtnet ablate` (analysis/ablation.py)."""
import json
import math

import pytest
import timm
import torch
import torch.nn as nn
from PIL import Image
from timm.layers import ConvMlp

from cmtnet.analysis import ablation as ablate
from cmtnet.analysis.ablation import AblationOptions, StepResult, run_ablation, step_train_options
from cmtnet.cli import main
from cmtnet.engine.trainer import TrainingDiverged
from cmtnet.errors import InputError
from cmtnet.models.ablation import ABLATION_STEPS, ablation_model_name
from cmtnet.models.cmt import (
    CMT, ConvStem, InvertedResidualFFN, LocalPerceptionUnit, PatchEmbedStem, TokenBatchNorm, _create_cmt)
from cmtnet.models.variants import VARIANT_ARGS
from image_folders import make_image_folder

NAMES = [ablation_model_name(base, step) for base in ('cmt_ti', 'cmt_s') for step in ABLATION_STEPS]


@pytest.mark.parametrize('name', NAMES)
def test_every_step_builds_and_trains_a_step(name):
    torch.manual_seed(0)
    model = timm.create_model(name, img_size=32, num_classes=4, drop_path_rate=0.1).train()
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=0.1)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in params)  # every parameter is used
    assert any(not torch.equal(b, p) for b, p in zip(before, params))
    assert model.pretrained_cfg['input_size'] == (3, 32, 32)


def _types(model: nn.Module) -> set:
    return {type(m) for m in model.modules()}


def test_each_step_adds_what_it_names():
    steps = {s: timm.create_model(ablation_model_name('cmt_ti', s), img_size=32) for s in ABLATION_STEPS}
    base = steps['4stage']
    assert isinstance(base.stem, PatchEmbedStem) and isinstance(base.stages[0].downsample, nn.Identity)
    assert LocalPerceptionUnit not in _types(base) and InvertedResidualFFN not in _types(base)
    assert ConvMlp in _types(base)
    assert isinstance(steps['stem'].stem, ConvStem) and LocalPerceptionUnit not in _types(steps['stem'])
    assert LocalPerceptionUnit in _types(steps['lpu']) and InvertedResidualFFN not in _types(steps['lpu'])
    assert InvertedResidualFFN in _types(steps['irffn']) and ConvMlp not in _types(steps['irffn'])
    # the all-BatchNorm model has no LayerNorm left; the position-bias-free one no bias to learn
    assert not any(isinstance(m, nn.LayerNorm) for m in steps['all_bn'].modules())
    assert TokenBatchNorm in _types(steps['all_bn'])
    assert not any('rel_pos_bias' in n for n, _ in steps['no_pos_bias'].named_parameters())
    assert all(s.rel_pos_bias is None for s in steps['no_pos_bias'].stages)
    assert steps['no_pos_bias'].no_weight_decay() == set()  # names only parameters that exist
    assert all(type(m) is CMT for m in steps.values())  # one network class, built from other parts


def test_a_step_is_a_row_of_constructor_arguments():
    """Each registered step is exactly the CMT built with its row of arguments: same parameters, same output."""
    for step, row in ABLATION_STEPS.items():
        torch.manual_seed(0)
        registered = timm.create_model(ablation_model_name('cmt_ti', step), img_size=32).eval()
        built = _create_cmt('cmt_ti', **{**VARIANT_ARGS['cmt_ti'], **row, 'img_size': 32}).eval()
        built.load_state_dict(registered.state_dict())  # strict: the same names and shapes
        x = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(built(x), registered(x))


def test_the_irffn_step_is_cmt_itself():
    cmt = timm.create_model('cmt_ti', img_size=32).eval()
    step = timm.create_model('cmt_ti_abl_irffn', img_size=32).eval()
    step.load_state_dict(cmt.state_dict())  # strict: the same parameters, names and shapes
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(step(x), cmt(x))


def test_no_pos_bias_stays_off_at_another_size():
    model = timm.create_model('cmt_ti_abl_no_pos_bias', img_size=32)
    model.set_input_size(64)
    assert not any('rel_pos_bias' in n for n, _ in model.named_parameters())
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_step_result_summary_is_mean_and_sample_std_of_finished_runs():
    result = StepResult('all_bn', 'x', 'm', 1, 1, 32, seeds=[0, 1, 2], val_top1_percent=[90., math.nan, 94.],
                        final_train_loss=[1., math.nan, 1.], diverged=[False, True, False])
    summary = result.summary()
    assert summary['val_top1_mean_percent'] == 92.
    assert summary['val_top1_std_percent'] == pytest.approx(math.sqrt(8))  # (2^2 + 2^2) / (3 - 1 - 1)
    assert (summary['val_top1_min_percent'], summary['val_top1_max_percent']) == (90., 94.)
    assert summary['diverged_runs'] == 1


def test_runs_use_one_recipe_and_differ_in_model_and_seed(tmp_path):
    options = AblationOptions(output=str(tmp_path), epochs=3)
    a, b = step_train_options(options, 'lpu', 0), step_train_options(options, 'stem', 1)
    assert (a.model, b.model) == ('cmt_ti_abl_lpu', 'cmt_ti_abl_stem')
    assert (a.seed, b.seed) == (0, 1) and a.output != b.output
    assert (a.epochs, a.lr, a.batch_size, a.img_size) == (b.epochs, b.lr, b.batch_size, b.img_size) == (3, 2e-3, 32, 32)
    assert a.warmup_epochs < a.epochs and a.mixup == 0 and a.aug_repeats == 0


def test_divergence_is_counted_not_fatal(tmp_path):
    def fake_train(o):
        if 'all_bn' in o.model:
            raise TrainingDiverged('loss is nan')
        return dict(val_top1=80. + o.seed, train_loss=0.5)

    options = AblationOptions(steps=['irffn', 'all_bn'], seeds=[0, 1, 2], output=str(tmp_path))
    results = {r.step: r.summary() for r in run_ablation(options, fake_train, log=lambda msg: None)}
    assert results['irffn']['val_top1_percent'] == [80., 81., 82.]
    assert results['irffn']['val_top1_std_percent'] == pytest.approx(1.)
    assert results['all_bn']['diverged_runs'] == 3 and math.isnan(results['all_bn']['val_top1_mean_percent'])


def test_bad_options_are_refused():
    with pytest.raises(InputError, match='lnu'):
        run_ablation(AblationOptions(steps=['lnu']))
    with pytest.raises(InputError, match='multiple of 32'):
        run_ablation(AblationOptions(img_size=40))


def test_ablate_json_and_plot_through_the_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(ablate, 'train', lambda o: dict(val_top1=90. + o.seed, train_loss=0.3))
    plot = tmp_path / 'ablate.png'
    assert main(['ablate', '--step', '4stage', '--step', 'irffn', '--seeds', '0', '2', '--output', str(tmp_path),
                 '--json', '--plot', str(plot)]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r['step']: r for r in out['steps']}
    assert rows['irffn']['val_top1_mean_percent'] == 91.
    assert rows['irffn']['params'] > rows['4stage']['params']  # LPU and IRFFN add parameters
    assert rows['irffn']['macs'] > rows['4stage']['macs']
    with Image.open(plot) as image:
        assert image.format == 'PNG'
    # the saved JSON shows again as a table without training
    saved = tmp_path / 'ablate.json'
    saved.write_text(json.dumps(out))
    monkeypatch.setattr(ablate, 'train', None)
    assert main(['ablate', '--results', str(saved), '--markdown']) == 0
    table = capsys.readouterr().out
    assert '| cmt_ti_abl_irffn |' in table and '91.00 ± 1.41' in table and '0/2' in table


def test_results_that_are_no_ablate_json_are_refused(tmp_path, capsys):
    path = tmp_path / 'other.json'
    path.write_text('{"rows": []}')
    assert main(['ablate', '--results', str(path)]) == 2
    assert 'other.json' in capsys.readouterr().err


def test_one_real_run_through_the_training_api(tmp_path):
    data = make_image_folder(tmp_path / 'data', per_class=4)
    options = AblationOptions(steps=['4stage'], seeds=[0], epochs=1, batch_size=4, data=str(data),
                              output=str(tmp_path / 'runs'))
    (result,) = run_ablation(options, log=lambda msg: None)
    assert result.diverged == [False]
    assert 0 <= result.val_top1_percent[0] <= 100 and math.isfinite(result.final_train_loss[0])


def test_at_32px_attention_has_one_key_so_the_position_bias_changes_nothing():
    # what the study's notes say of its default size: with weights equal, dropping B changes no output
    torch.manual_seed(0)
    cmt = timm.create_model('cmt_ti_abl_irffn', img_size=32).eval()
    no_bias = timm.create_model('cmt_ti_abl_no_pos_bias', img_size=32).eval()
    no_bias.load_state_dict({k: v for k, v in cmt.state_dict().items() if 'rel_pos_bias' not in k})
    assert all(s.rel_pos_bias.shape[-1] == 1 for s in cmt.stages)  # one key per stage
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(no_bias(x), cmt(x))
