"""pytest plugin: run timm's own model test-suite (`tests/test_models.py` of the pinned timm release)
against every CMT model, and only them.

Used as `pytest -p timm_suite .../test_models.py` (see the Makefile's `test-timm`). Before collection it
registers the models (`import cmtnet`) and takes every name that registers, `timm.list_models('cmt*')`:
the variants, the scaled model and the ablation steps. It narrows timm's `list_models` / `list_pretrained`
to them, and, since released weights cannot be downloaded in tests, points the pretrained cfg of each
released variant (the models with weights) at a stand-in checkpoint generated in the authors' released
format (with an argparse.Namespace beside the weights, as the authors' train.py saved them); the other
models have no weights and so are not in timm's pretrained tests. timm selects its `forward_intermediates`
tests by model module; our modules implement that API, so they are added to those selections. Tests that
name other timm models are deselected. The number of tests that remain, computed from the model lists, is
asserted, so none can silently drop out.
"""
import argparse
import os
import sys
import tempfile

import pytest
import torch

import timm
import timm.models._registry as registry

import cmtnet  # noqa: F401  (registers the models)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from released import make_state, released_keys  # noqa: E402

OUR_MODELS = tuple(timm.list_models('cmt*'))  # every model `import cmtnet` registers
# those with released weights (here: stand-ins), without the pretrained tag
RELEASED = tuple(sorted({name.split('.')[0] for name in timm.list_models('cmt*', pretrained=True)}))
OUR_MODULES = sorted({registry._model_to_module[name] for name in OUR_MODELS})
# the tests of test_models.py (timm 1.0.31) that take our models: the pretrained ones for each model with
# weights, every other one for each model
PRETRAINED_TESTS = ('test_model_load_pretrained', 'test_model_features_pretrained')
MODEL_TESTS = (
    'test_model_forward', 'test_model_backward', 'test_model_default_cfgs', 'test_model_forward_torchscript',
    'test_model_forward_features', 'test_model_forward_intermediates_features', 'test_model_forward_intermediates',
    'test_prune_intermediate_layers_contract', 'test_model_forward_fx', 'test_model_backward_fx',
    'test_model_forward_fx_torchscript',
)
SUITE_TESTS = PRETRAINED_TESTS + MODEL_TESTS
EXPECTED_TESTS = len(RELEASED) * len(PRETRAINED_TESTS) + len(OUR_MODELS) * len(MODEL_TESTS)

_list_models = timm.list_models
_list_pretrained = timm.list_pretrained


def _ours(names):
    return [n for n in names if n.split('.')[0] in OUR_MODELS]


def list_models(filter='', module='', pretrained=False, exclude_filters='', name_matches_cfg=False,
                include_tags=None):
    if module:
        module = ([module] if isinstance(module, str) else list(module)) + OUR_MODULES
    return _ours(_list_models(filter, module, pretrained, exclude_filters, name_matches_cfg, include_tags))


def list_pretrained(filter='', exclude_filters=''):
    return _ours(_list_pretrained(filter, exclude_filters))


def _write_released_checkpoints(folder: str) -> None:
    for seed, name in enumerate(RELEASED):
        state = make_state(released_keys(name), seed=seed)
        path = os.path.join(folder, f'{name}_released.pth')
        torch.save({
            'model': state,
            'optimizer': {'state': {}, 'param_groups': [{'lr': 5e-4, 'params': [0]}]},
            'epoch': 299,
            'args': argparse.Namespace(model=name, lr=5e-4, weight_decay=0.05),
        }, path)
        for cfg_name in _list_pretrained(f'{name}.*'):
            registry._model_pretrained_cfgs[cfg_name].file = path


def pytest_configure(config):
    for marker in ('base', 'forward', 'backward', 'cfg', 'cfg_nonstd', 'torchscript', 'features',
                   'fxforward', 'fxbackward', 'timeout'):
        config.addinivalue_line('markers', f'{marker}: timm test-suite marker')
    for mod in (timm, timm.models):
        mod.list_models = list_models
        mod.list_pretrained = list_pretrained
    if config.getoption('dist', 'no') != 'no' and not hasattr(config, 'workerinput'):
        return  # the pytest-xdist controller: the workers run the tests, each with stand-ins of its own
    folder = tempfile.mkdtemp(prefix='cmtnet-timm-suite-')
    config.add_cleanup(lambda: _rmtree(folder))
    _write_released_checkpoints(folder)


def _rmtree(folder):
    import shutil
    shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, 'callspec', None)
        name = callspec.params.get('model_name') if callspec else None
        (keep if isinstance(name, str) and name.split('.')[0] in OUR_MODELS else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
    if config.option.keyword or config.option.markexpr:
        return
    collected = sorted({item.originalname for item in keep})
    if len(keep) != EXPECTED_TESTS or collected != sorted(SUITE_TESTS):
        raise pytest.UsageError(
            f'timm test-suite: {len(keep)} tests collected for the CMT models, expected {EXPECTED_TESTS}; '
            f'missing {sorted(set(SUITE_TESTS) - set(collected))}, new {sorted(set(collected) - set(SUITE_TESTS))}')
