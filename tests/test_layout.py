"""The package's shape: imports run one way with no cycle, modules and functions stay short enough to read whole.

Layers (docs/development.md): errors -> io -> archs -> data/utils/options -> inference/results/training ->
models/api -> entry points. An import
inside a function counts like one at the top: a cycle hidden in a function is still a cycle.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'segsr_basicsr'
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400

#: layer of each module, by the longest matching name prefix; a module may import its own layer or below
LAYERS = {
    'segsr_basicsr.errors': 0,
    'segsr_basicsr.compat': 0,
    'segsr_basicsr.registry': 0,
    'segsr_basicsr.io': 1,
    'segsr_basicsr.archs': 2,
    'segsr_basicsr.data': 3,
    'segsr_basicsr.utils': 3,
    'segsr_basicsr.options': 3,
    'segsr_basicsr.inference': 4,
    'segsr_basicsr.results': 4,
    'segsr_basicsr.training': 4,
    'segsr_basicsr.models': 5,
    'segsr_basicsr.api': 5,
    'segsr_basicsr.metrics': 3,
    'segsr_basicsr.train': 6,
    'segsr_basicsr.test': 6,
    'segsr_basicsr.infer': 6,
    'segsr_basicsr.report': 6,
    'segsr_basicsr.export': 6,
    'segsr_basicsr': 7,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def modules():
    return {module_name(p): p for p in sorted(PACKAGE.rglob('*.py'))}


def imported(path: Path, known) -> set:
    """Package modules that ``path`` imports anywhere in it (top level or inside functions)."""
    me = module_name(path)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                pkg = me.split('.')[:len(me.split('.')) - node.level + (path.name == '__init__.py')]
                base = '.'.join(pkg + ([base] if base else []))
            names = [f'{base}.{a.name}' for a in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition('.')[0]
            if name and name != me:
                found.add(name)
    return found


def graph():
    known = modules()
    return {name: imported(path, known) for name, path in known.items()}


def layer(name: str) -> int:
    best = max((p for p in LAYERS if name == p or name.startswith(p + '.')), key=len)
    return LAYERS[best]


def find_cycle(edges):
    state, stack = {}, []

    def visit(n):
        state[n] = 'open'
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 'open':
                return stack[stack.index(m):] + [m]
            if m not in state:
                cycle = visit(m)
                if cycle:
                    return cycle
        stack.pop()
        state[n] = 'done'
        return None

    for n in sorted(edges):
        if n not in state:
            cycle = visit(n)
            if cycle:
                return cycle
    return None


def test_the_package_imports_have_no_cycle():
    edges = graph()
    edges.pop('segsr_basicsr', None)  # the package root imports its parts to register them; nothing imports it back
    cycle = find_cycle(edges)
    assert cycle is None, ' -> '.join(cycle)


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function():
    """Guard: the walk sees imports inside functions, and the finder reports them."""
    tree = ast.parse('def f():\n    from segsr_basicsr.api import load_model\n')
    names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert names == {'segsr_basicsr.api'}
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']


def test_imports_run_one_way_through_the_layers():
    wrong = [f'{a} (layer {layer(a)}) imports {b} (layer {layer(b)})'
             for a, targets in graph().items() for b in targets
             if a != 'segsr_basicsr' and b != 'segsr_basicsr' and layer(b) > layer(a)]
    assert not wrong, '\n'.join(wrong)


@pytest.mark.parametrize('path', sorted(PACKAGE.rglob('*.py')), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_are_short_and_say_their_job(path):
    text = path.read_text()
    lines = len(text.splitlines())
    assert lines <= MAX_MODULE_LINES, f'{path.name}: {lines} lines (max {MAX_MODULE_LINES})'
    tree = ast.parse(text)
    long = [f'{f.name} ({f.end_lineno - f.lineno + 1} lines)' for f in ast.walk(tree)
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f'{path.name}: {", ".join(long)} over {MAX_FUNCTION_LINES} lines'
    if lines > 10:
        assert ast.get_docstring(tree), f'{path.name}: no module docstring saying its job'
