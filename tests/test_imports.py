"""Loading a model apart from training: what eval, predict, export and the detectors import leaves the
training loop out.

Each check runs in a fresh interpreter, since this one has long imported everything: one interpreter imports
torch, torchvision and timm (none of them imports cmtnet), then forks a child per check, which starts from
those alone.
"""
import json
import subprocess
import sys
from typing import Dict, List

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

_FORKS = """
import json, os, sys, traceback
import timm, torch, torchvision
for script in json.loads(sys.argv[1]):
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        try:
            exec(script, {'__name__': '__main__'})
            code = 0
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps(['exit', os.waitstatus_to_exitcode(status)]), flush=True)
"""


def _fresh(scripts: List[str]) -> List[str]:
    """The last line each script printed, each run in a fresh child of one interpreter."""
    result = subprocess.run([sys.executable, '-c', _FORKS, json.dumps(scripts)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    ran, printed = [], []
    for line in result.stdout.splitlines():
        if line.startswith('["exit", '):
            ran.append((json.loads(line)[1], printed))
            printed = []
        else:
            printed.append(line)
    assert len(ran) == len(scripts), result.stderr
    for script, (status, lines) in zip(scripts, ran):
        assert status == 0 and lines, f'{script}\n{result.stderr}'
    return [lines[-1] for _, lines in ran]


def _imports_trainer_script(module: str) -> str:
    return f'import sys, {module}; print({TRAINER!r} in sys.modules)'


@pytest.fixture(scope='module')
def imports_trainer() -> Dict[str, bool]:
    """Whether importing each module (the loading ones, and one that trains) in a fresh interpreter imports the
    trainer (printed, then read back)."""
    modules = [*LOADING_MODULES, 'cmtnet.detection.task']
    printed = _fresh([_imports_trainer_script(m) for m in modules])
    for module, line in zip(modules, printed):
        print(f'import {module}: {TRAINER} in sys.modules = {line}')
    return {m: {'True': True, 'False': False}[line] for m, line in zip(modules, printed)}


@pytest.mark.parametrize('module', LOADING_MODULES)
def test_loading_a_model_does_not_import_the_trainer(module, imports_trainer):
    assert not imports_trainer[module]


def test_the_check_sees_the_trainer_where_it_is_imported(imports_trainer):
    # the training entry points do import it: the check above is not vacuous
    assert imports_trainer['cmtnet.detection.task']


def test_the_packages_still_offer_their_training_names():
    from cmtnet.classification import ClassificationTask, TrainOptions, train  # noqa: F401
    from cmtnet.engine import RunOptions, Task, Trainer, TrainingDiverged, fit  # noqa: F401
    from cmtnet.engine.trainer import fit as trainer_fit
    assert callable(train) and fit is trainer_fit and ClassificationTask.__module__ == 'cmtnet.classification.train'


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
    checks = [(imports, '[]'),
              (imports + "; os.environ['X_CMTNET_CHECK'] = '1'; warnings.simplefilter('ignore')",
               "['warnings filters', 'environment']")]
    printed = _fresh([_PROCESS_STATE.replace('{imports}', code) for code, _ in checks])
    assert printed == [expected for _, expected in checks]
