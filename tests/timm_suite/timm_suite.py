"""pytest plugin: run timm's own model test-suite (`tests/test_models.py` of the pinned timm release)
against every CMT model, and only them.

Used as `pytest -p timm_suite .../test_models.py` (the Makefile's `test-timm`), or with our tests/ in the same
run (`make test`): then it touches only timm's tests, which run with the TorchScript executor settings their
module sets and the stand-in weights, both restored for ours. Before collection it
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
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # our tests/


def _ours(names):
    return [n for n in names if n.split('.')[0] in OUR_MODELS]


def list_models(filter='', module='', pretrained=False, exclude_filters='', name_matches_cfg=False,
                include_tags=None):
    if module:
        module = ([module] if isinstance(module, str) else list(module)) + OUR_MODULES
    return _ours(_list_models(filter, module, pretrained, exclude_filters, name_matches_cfg, include_tags))


def list_pretrained(filter='', exclude_filters=''):
    return _ours(_list_pretrained(filter, exclude_filters))


def pytest_configure(config):
    for marker in ('base', 'forward', 'backward', 'cfg', 'cfg_nonstd', 'torchscript', 'features',
                   'fxforward', 'fxbackward', 'timeout'):
        config.addinivalue_line('markers', f'{marker}: timm test-suite marker')
    # narrowed while test_models.py is collected, which binds these names at import (`make test` collects our
    # tests in the same session: they see timm's own)
    for mod in (timm, timm.models):
        mod.list_models = list_models
        mod.list_pretrained = list_pretrained
    _JIT['ours'] = _jit_state()


# the TorchScript executor settings: ours, and those test_models.py sets when imported
_JIT = {}


def _jit_state(state=None):
    """Set the TorchScript profiling executor and mode to `state` where given; return those before."""
    executor = torch._C._jit_set_profiling_executor(True if state is None else state[0])
    mode = torch._C._jit_set_profiling_mode(True if state is None else state[1])
    if state is None:
        _jit_state((executor, mode))
    return executor, mode


def pytest_collection_finish(session):
    for mod in (timm, timm.models):
        mod.list_models = _list_models
        mod.list_pretrained = _list_pretrained
    if 'ours' in _JIT:
        _JIT['timm'] = _jit_state(_JIT['ours'])


def _is_timm_test(item) -> bool:
    return os.path.basename(item.path) == 'test_models.py' and not str(item.path).startswith(TESTS + os.sep)


_STAND_INS = {}


def _stand_ins(config) -> str:
    """The folder of this process's stand-in released checkpoints, written at the first test that runs."""
    if 'folder' not in _STAND_INS:
        folder = tempfile.mkdtemp(prefix='cmtnet-timm-suite-')
        config.add_cleanup(lambda: _rmtree(folder))
        for seed, name in enumerate(RELEASED):
            state = make_state(released_keys(name), seed=seed)
            torch.save({
                'model': state,
                'optimizer': {'state': {}, 'param_groups': [{'lr': 5e-4, 'params': [0]}]},
                'epoch': 299,
                'args': argparse.Namespace(model=name, lr=5e-4, weight_decay=0.05),
            }, os.path.join(folder, f'{name}_released.pth'))
        _STAND_INS['folder'] = folder
    return _STAND_INS['folder']


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """timm's tests run with the executor settings and the stand-in weights they expect; ours without them."""
    if not _is_timm_test(item):
        return (yield)
    folder = _stand_ins(item.config)
    cfgs = {cfg: registry._model_pretrained_cfgs[cfg] for name in RELEASED for cfg in _list_pretrained(f'{name}.*')}
    files = {cfg: c.file for cfg, c in cfgs.items()}
    for cfg, c in cfgs.items():
        c.file = os.path.join(folder, f'{cfg.split(".")[0]}_released.pth')
    ours = _jit_state(_JIT.get('timm'))
    try:
        return (yield)
    finally:
        _jit_state(ours)
        for cfg, c in cfgs.items():
            c.file = files[cfg]


def _rmtree(folder):
    import shutil
    shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        if not _is_timm_test(item):
            continue
        callspec = getattr(item, 'callspec', None)
        name = callspec.params.get('model_name') if callspec else None
        (keep if isinstance(name, str) and name.split('.')[0] in OUR_MODELS else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        dropped = set(map(id, drop))
        items[:] = [item for item in items if id(item) not in dropped]
    if config.option.keyword or config.option.markexpr:
        return
    collected = sorted({item.originalname for item in keep})
    if len(keep) != EXPECTED_TESTS or collected != sorted(SUITE_TESTS):
        raise pytest.UsageError(
            f'timm test-suite: {len(keep)} tests collected for the CMT models, expected {EXPECTED_TESTS}; '
            f'missing {sorted(set(SUITE_TESTS) - set(collected))}, new {sorted(set(collected) - set(SUITE_TESTS))}')
