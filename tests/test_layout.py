"""The package's standing rules: nothing imports upward, and every unit fits in a reader's head.

Layers, lowest first: errors; models; runtime; engine; the tasks (classification, detection); analysis and
export; the command line. A module may import its own layer and those below it, never one above, and the
package never imports from tests/ or benchmarks/. No class is over 250 lines, no function over 100.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'src' / 'cmtnet'
# top-level name under cmtnet -> layer
LAYERS = {
    'errors': 0, 'models': 1, 'runtime': 2, 'engine': 3, 'classification': 4, 'detection': 4,
    'analysis': 5, 'export': 5, 'cli': 6, '__main__': 6, '__init__': 6,
}
MAX_CLASS_LINES, MAX_FUNCTION_LINES = 250, 100
MODULES = sorted(PACKAGE.rglob('*.py'))


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix('.py')


def _imported(path: Path, tree: ast.AST):
    """(top-level cmtnet part, line) of every import of the package's own modules in `tree`."""
    package = ['cmtnet', *path.relative_to(PACKAGE).parts[:-1]]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = base + (node.module.split('.') if node.module else [])
            else:
                target = (node.module or '').split('.')
            if target[0] == 'cmtnet' and len(target) > 1:
                yield target[1], node.lineno
            elif target == ['cmtnet']:  # `from cmtnet import x`: a part, or a name of the package's __init__
                for alias in node.names:
                    yield (alias.name if alias.name in LAYERS else '__init__'), node.lineno
            elif target[0] in ('tests', 'benchmarks', 'released', 'image_folders', 'timing'):
                yield target[0], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split('.')
                if parts[0] == 'cmtnet' and len(parts) > 1:
                    yield parts[1], node.lineno


def test_every_part_of_the_package_has_a_layer():
    assert {_part(p) for p in MODULES} <= set(LAYERS)


@pytest.mark.parametrize('path', MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_nothing_imports_upward(path):
    own = LAYERS[_part(path)]
    tree = ast.parse(path.read_text())
    for part, line in _imported(path, tree):
        assert part in LAYERS, f'{path.name}:{line} imports {part}, which is not part of the package'
        if own < LAYERS['cli']:  # the entry points assemble everything
            assert LAYERS[part] <= own, f'{path.name}:{line} imports {part} (layer {LAYERS[part]}) from layer {own}'


@pytest.mark.parametrize('path', MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_units_fit_in_a_readers_head(path):
    for node in ast.walk(ast.parse(path.read_text())):
        lines = getattr(node, 'end_lineno', 0) - getattr(node, 'lineno', 0) + 1
        if isinstance(node, ast.ClassDef):
            assert lines <= MAX_CLASS_LINES, f'{path.name}: class {node.name} has {lines} lines'
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert lines <= MAX_FUNCTION_LINES, f'{path.name}: {node.name} has {lines} lines'
