import os
import sys

import pytest

# tests import their helpers (released.py) by module name
sys.path.insert(0, os.path.dirname(__file__))

TESTS = os.path.dirname(os.path.abspath(__file__))

# The files whose tests take longest, longest first (`make test` prints the slowest tests). pytest-xdist hands
# the files to its workers in collection order (make test: --dist loadscope --no-loadscope-reorder): these go
# first, so that the workers end together instead of one waiting for a long file that came last. A file left
# out of the list only runs later. Tests from outside tests/ (timm's own model tests, `make test`) go last,
# one at a time (`pytest_xdist_make_scheduler`): short, independent tests that keep both workers busy to the end.
SLOW_FILES = [
    'tests/deploy/test_quantize.py',
    'tests/classification/test_train.py',
    'tests/deploy/test_export.py',
    'tests/detection/test_detect_run.py',
    'tests/serve/test_page.py',
    'tests/serve/test_api.py',
    'tests/test_readme.py',
    'tests/test_docs_commands.py',
    'tests/analysis/test_speed.py',
    'tests/serve/test_dense_tasks.py',
    'tests/segmentation/test_segment_run.py',
    'tests/test_imports.py',
    'tests/models/test_onednn.py',
]


def _ours(item) -> bool:
    return str(item.path).startswith(TESTS + os.sep)


def pytest_collection_modifyitems(items):
    rank = {path: i for i, path in enumerate(SLOW_FILES)}
    last = len(SLOW_FILES) + 1

    def order(item):
        return rank.get(item.nodeid.split('::')[0], len(SLOW_FILES)) if _ours(item) else last
    items.sort(key=order)  # stable: the rest in order


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """--dist loadscope, except for the tests from outside tests/: each of those is a unit of its own."""
    if config.getvalue('dist') != 'loadscope':
        return None
    from xdist.scheduler import LoadScopeScheduling
    ours = os.path.relpath(TESTS, config.rootpath) + '/'

    class OursByFileTheRestByTest(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return super()._split_scope(nodeid) if nodeid.startswith(ours) else nodeid
    return OursByFileTheRestByTest(config, log)


@pytest.fixture(scope='session', autouse=True)
def _cache_of_this_run(tmp_path_factory):
    """What cmtnet keeps between runs (compiled int8 programs, the embedded sets) goes to a folder of the test
    run, not to the user's ~/.cache/cmtnet; commands started by the tests inherit it."""
    patch = pytest.MonkeyPatch()
    patch.setenv('CMTNET_CACHE', str(tmp_path_factory.mktemp('cmtnet-cache')))
    yield
    patch.undo()
