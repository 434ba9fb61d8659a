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
