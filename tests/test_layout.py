"""The package's standing rules: nothing imports upward, no two modules import each other, and every unit
fits in a reader's head.

Layers, lowest first: errors; models; runtime; checkpoints (models from weight files, atomic writes) and
int8_program (the int8 runtime that reads `cmtnet quantize` files); engine; the tasks (classification,
detection, segmentation); analysis, deploy and serve; the command line. A module may import its own layer and
those below it, never one above, and the package never imports from tests/ or benchmarks/. No chain of
imports leads from a module back to itself, not even through imports for type hints. No class is over 250
lines, no function over 100.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'src' / 'cmtnet'
# top-level name under cmtnet -> layer
LAYERS = {
    'errors': 0, 'models': 1, 'runtime': 2, 'checkpoints': 3, 'int8_program': 3, 'engine': 4,
    'classification': 5, 'detection': 5, 'segmentation': 5, 'analysis': 6, 'deploy': 6, 'serve': 6,
    'cli': 7, '__main__': 7, '__init__': 7,
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


def _module_name(path: Path) -> str:
    parts = ['cmtnet', *path.relative_to(PACKAGE).with_suffix('').parts]
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _import_graph() -> dict:
    """{module: the package's modules it imports by name, anywhere in its code}."""
    names = {_module_name(p): p for p in MODULES}
    graph = {}
    for name, path in names.items():
        package = name if path.name == '__init__.py' else name.rpartition('.')[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split('.')[:len(package.split('.')) - node.level + 1] if node.level else []
                module = '.'.join(base + (node.module.split('.') if node.module else []))
                for alias in node.names:  # `from . import trainer` names a module, `from .x import y` a name of x
                    targets.add(f'{module}.{alias.name}' if f'{module}.{alias.name}' in names else module)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[name] = sorted(t for t in targets if t in names and t != name)
    return graph


def test_no_two_modules_import_each_other():
    graph = _import_graph()
    done, path = set(), []

    def visit(module):  # depth first; a module met again on the current path closes a cycle
        if module in path:
            cycle = path[path.index(module):] + [module]
            pytest.fail('import cycle: ' + ' -> '.join(cycle))
        if module in done:
            return
        path.append(module)
        for target in graph[module]:
            visit(target)
        path.pop()
        done.add(module)

    for module in graph:
        visit(module)


@pytest.mark.parametrize('path', MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_units_fit_in_a_readers_head(path):
    for node in ast.walk(ast.parse(path.read_text())):
        lines = getattr(node, 'end_lineno', 0) - getattr(node, 'lineno', 0) + 1
        if isinstance(node, ast.ClassDef):
            assert lines <= MAX_CLASS_LINES, f'{path.name}: class {node.name} has {lines} lines'
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert lines <= MAX_FUNCTION_LINES, f'{path.name}: {node.name} has {lines} lines'
