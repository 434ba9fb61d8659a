import os
import sys

# tests import their helpers (released.py) by module name
sys.path.insert(0, os.path.dirname(__file__))

# The files whose tests take longest, longest first (`make test` prints the slowest tests). pytest-xdist hands
# the files to its workers in collection order (make test: --dist loadscope --no-loadscope-reorder): these go
# first, so that the workers end together instead of one waiting for a long file that came last. A file left
# out of the list only runs later.
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


def pytest_collection_modifyitems(items):
    rank = {path: i for i, path in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split('::')[0], len(SLOW_FILES)))  # stable: the rest in order
