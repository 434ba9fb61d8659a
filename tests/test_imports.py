"""Loading a model apart from training: what eval, predict, export and the detectors import leaves the
training loop out.

Each check runs in a fresh interpreter, since this one has long imported everything.
"""
import subprocess
import sys

import pytest

TRAINER = 'cmtnet.engine.trainer'
# modules that build or use a model from a weight file, and never train (with their packages and
# cmtnet.checkpoints, which each of them imports)
LOADING_MODULES = [
    'cmtnet.deploy.export',
    'cmtnet.detection.builders',
    'cmtnet.detection.evaluate',
    'cmtnet.detection.predict',
    'cmtnet.segmentation.models',
    'cmtnet.segmentation.evaluate',
    'cmtnet.segmentation.predict',
    'cmtnet.classification.evaluate',
    'cmtnet.classification.predict',
]


def _imports_trainer(module: str) -> bool:
    """Whether importing `module` in a fresh interpreter imports the trainer (printed, then read back)."""
    code = f'import sys, {module}; print({TRAINER!r} in sys.modules)'
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    print(f'import {module}: {TRAINER} in sys.modules = {result.stdout.strip()}')
    return {'True': True, 'False': False}[result.stdout.strip()]


@pytest.mark.parametrize('module', LOADING_MODULES)
def test_loading_a_model_does_not_import_the_trainer(module):
    assert not _imports_trainer(module)


def test_the_check_sees_the_trainer_where_it_is_imported():
    # the training entry points do import it: the check above is not vacuous
    assert _imports_trainer('cmtnet.detection.task')


def test_the_packages_still_offer_their_training_names():
    code = ('from cmtnet.classification import ClassificationTask, TrainOptions, train; '
            'from cmtnet.engine import RunOptions, Task, Trainer, TrainingDiverged, fit; '
            'from cmtnet.engine.trainer import fit as trainer_fit; '
            'print(callable(train) and fit is trainer_fit and ClassificationTask.__module__)')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'cmtnet.classification.train'


# the process-wide state a library must leave alone: warnings filters, every logger's filters, handlers and
# level, and the environment; printed before and after importing every command module, then compared
_PROCESS_STATE = '''
import logging, os, warnings
import timm, torch, torchvision  # their own import-time set-up is not ours to check
def state():
    loggers = [logging.getLogger()] + [l for l in logging.Logger.manager.loggerDict.values()
                                       if isinstance(l, logging.Logger)]
    return (repr(warnings.filters), dict(os.environ),
            {l.name: (l.level, [repr(f) for f in l.filters], [repr(h) for h in l.handlers]) for l in loggers})
before = state()
{imports}
after = state()
changed = [name for name, a, b in zip(('warnings filters', 'environment'), before[:2], after[:2]) if a != b]
changed += [f'logger {n}' for n, v in before[2].items() if after[2].get(n) != v]
changed += [f'logger {n}' for n, v in after[2].items() if n not in before[2] and (v[1] or v[2])]
print(changed)
'''


def test_importing_the_package_and_its_commands_changes_no_process_wide_setting():
    """Logging and warnings filters and environment variables are set by the `cmtnet` entry point only (when a
    command runs), never by an import; the check sees a change where one is made."""
    imports = 'import cmtnet, cmtnet.models, cmtnet.runtime, cmtnet.cli; cmtnet.cli.build_parser()'
    for code, expected in ((imports, '[]'),
                           (imports + "; os.environ['X_CMTNET_CHECK'] = '1'; warnings.simplefilter('ignore')",
                            "['warnings filters', 'environment']")):
        script = _PROCESS_STATE.replace('{imports}', code)
        result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().splitlines()[-1] == expected
